"""The OpenAI routes (``/v1``): thin adapters over the pipeline.

Plain ASGI handlers: FastAPI's routing and dependency layer cost about 30% of throughput on this
path (docs/benchmarks.md). A request is authenticated, its body read (bounded) and validated,
and then the pipeline (``gateway.pipeline``) decides; this module relays the answer, as bytes or
as a stream with its own time limits, and turns refusals into OpenAI's error format.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.auth import KeyStore, Principal
from gateway.chain import Pass
from gateway.config import Config
from gateway.errors import GatewayError, bad_request
from gateway.http.asgi import (
    DisconnectWatcher,
    Receive,
    Scope,
    Send,
    abort_of,
    header,
    read_body,
    send_body,
    send_error,
    send_json,
)
from gateway.http.stream import relay_stream
from gateway.openai_plan import PSEUDONYMISED
from gateway.pipeline import Pipeline
from gateway.policy import Context
from gateway.responses import Events, Shape, refuse, to_chat
from gateway.router import Committed
from gateway.tokenids import decode_token_input
from gateway.validation import validator

log = logging.getLogger("gateway")


class OpenAIRoutes:
    """``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``POST /v1/responses`` (through the chat
    pipeline), ``GET /v1/models[/{id}]``."""

    def __init__(
        self, config: Config, keys: KeyStore, pipeline: Pipeline, pseudonym: Callable[[str], str]
    ) -> None:
        self.config = config
        self.keys = keys
        self.pipeline = pipeline
        self.pseudonym = pseudonym
        self.max_body = config.server.max_body_bytes
        extensions = {f for d in config.deployments.values() for f in d.extra_fields}
        self.validate_chat, self.validate_embeddings = (
            validator(
                endpoint,
                unknown_fields=config.server.unknown_fields,
                max_n=config.server.max_n,
                extensions=extensions,
            )
            for endpoint in ("chat", "embeddings")
        )
        # Fields the bridge does not translate never leave: unknown ones are refused, or dropped under `drop`.
        self.validate_responses = validator(
            "responses", unknown_fields="drop" if config.server.unknown_fields == "drop" else "reject"
        )

    async def _authenticate(self, scope: Scope, needed: str) -> Principal:
        principal = await self.keys.authenticate(header(scope, b"authorization"))
        if needed not in principal.scopes:
            raise GatewayError(403, "insufficient_scope", f"This API key lacks the '{needed}' scope.")
        return principal

    async def _body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        too_large = GatewayError(413, "request_too_large", f"Request body exceeds {self.max_body} bytes.")
        raw = await read_body(scope, receive, self.max_body, too_large)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", code="invalid_json")
        return body

    def _pseudonymise_ids(self, body: dict[str, Any], fields: tuple[str, ...]) -> None:
        """End-user ids (validated strings) never leave raw: upstreams get a keyed pseudonym, distinct from
        the one the gateway stores (so an upstream's logs cannot be joined with the audit trail either)."""
        for name in fields:
            value = body.get(name)
            if isinstance(value, str):
                body[name] = self.pseudonym(f"upstream:{value}")

    def _headers(self, ctx: Context) -> list[tuple[bytes, bytes]]:
        h = [(b"x-gateway-request-id", ctx.request_id.encode())]
        if ctx.target is not None:
            h.append((b"x-gateway-deployment", ctx.target.name.encode()))
            h.append((b"x-gateway-jurisdiction", ctx.target.jurisdiction.encode()))
        if ctx.fallback_reason:
            h.append((b"x-gateway-fallback", ctx.fallback_reason.encode()))
        h.extend((k.encode(), v.encode()) for k, v in ctx.response_headers.items())
        return h

    # --- OpenAI routes ---------------------------------------------------------------------

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._proxy(scope, receive, send, "chat", self._chat_body)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._proxy(scope, receive, send, "embeddings", self._embeddings_body)

    async def responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Responses API: the chat completion it translates to runs the chat pipeline (a hop whose
        deployment serves /responses gets it back as a Responses request, ``gateway.upstreams.native``), and the
        answer (or stream) is translated back (``gateway.responses``). Needs the 'chat' scope."""
        await self._proxy(scope, receive, send, "chat", self._responses_body, Shape)

    async def stored_response(self, scope: Scope, _receive: Receive, _send: Send) -> None:
        """``/v1/responses/{id}[/...]``: nothing is stored, so nothing can be retrieved, cancelled or deleted."""
        await self.keys.authenticate(header(scope, b"authorization"))
        raise GatewayError(
            404,
            "responses.stateless",
            "This gateway stores no responses (store is treated as false); there is nothing to retrieve.",
        )

    def _chat_body(self, body: dict[str, Any]) -> dict[str, Any]:
        self.validate_chat(body)
        return body

    def _embeddings_body(self, body: dict[str, Any]) -> dict[str, Any]:
        self.validate_embeddings(body)
        decode_token_input(body, self.config.embeddings)  # token ids become text before any policy
        return body

    def _responses_body(self, body: dict[str, Any]) -> dict[str, Any]:
        refuse(body)
        self.validate_responses(body)
        return to_chat(body)

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Any,
        prepare: Callable[[dict[str, Any]], dict[str, Any]],
        bridge: Callable[[dict[str, Any], str], Shape] | None = None,
    ) -> None:
        """One proxied request. ``prepare`` validates the client's body and gives the body the pipeline runs;
        ``bridge`` (the Responses API) shapes the answer from the client's body and the request id."""
        principal = await self._authenticate(scope, endpoint)
        original = await self._body(scope, receive)
        body = prepare(original)
        ctx = self.pipeline.context(
            principal,
            endpoint,
            body,
            # A subject the sign-in token names (auth.oidc claims.subject) is authenticated: it wins.
            subject=principal.subject or header(scope, b"x-subject-id") or body.get("user"),
            data_class=header(scope, b"x-data-class"),
            route="responses" if bridge is not None else "",
        )
        shape = bridge(original, ctx.request_id) if bridge is not None else None
        # Our own request extension never reaches an upstream, whether or not a policy reads it.
        ctx.rag_hints = body.pop("gateway_rag", None)
        self._pseudonymise_ids(body, PSEUDONYMISED[endpoint])
        chain = self.pipeline.start(ctx)
        watcher = DisconnectWatcher(receive)
        recorded = False

        async def record() -> None:
            """Ledger row and audit record, queued (and in the write-ahead file) before the response's last byte."""
            nonlocal recorded
            if not recorded:
                recorded = True
                await self.pipeline.finish(ctx, chain)

        try:
            committed = await self.pipeline.send(ctx, chain, body)
            if ctx.stream:
                events = Events(shape) if shape is not None else None
                await relay_stream(
                    ctx,
                    chain,
                    committed,
                    send,
                    watcher,
                    record,
                    abort_of(scope),
                    self._headers(ctx),
                    self.config.server.stream_write_timeout_s,
                    events,
                )
            else:
                await self._relay_json(ctx, chain, committed, send, record, shape)
        except GatewayError as exc:
            if ctx.status:  # the response has started; nothing more can be said
                raise
            ctx.status = exc.status
            await record()
            await send_error(send, exc, self._headers(ctx))
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            ctx.status = 499
        except Exception as exc:
            # A bug, not the client's fault: recorded as 500 (never status 0), answered in OpenAI's format.
            log.error("request failed", extra={"request_id": ctx.request_id, "exc_type": type(exc).__name__})
            if ctx.status:
                raise
            ctx.status = 500
            await record()
            await send_error(
                send,
                GatewayError(500, "internal_error", "The gateway failed to handle the request."),
                self._headers(ctx),
            )
        finally:
            watcher.stop()
            await record()

    async def _relay_json(
        self,
        ctx: Context,
        chain: Pass,
        committed: Committed,
        send: Send,
        record: Callable[[], Awaitable[None]],
        shape: Shape | None,
    ) -> None:
        raw = await self.pipeline.answer(ctx, chain, committed)
        if shape is not None:
            raw = shape.answer(raw)
        await record()
        await send_body(send, 200, raw, self._headers(ctx))

    async def models(self, scope: Scope, _receive: Receive, send: Send) -> None:
        principal = await self.keys.authenticate(header(scope, b"authorization"))
        data = [_model_card(m) for m in self.config.models if principal.may_use(m)]
        await send_json(send, 200, {"object": "list", "data": data})

    async def model(self, scope: Scope, _receive: Receive, send: Send) -> None:
        principal = await self.keys.authenticate(header(scope, b"authorization"))
        name = scope["path"][len("/v1/models/") :]
        if name not in self.config.models or not principal.may_use(name):
            raise GatewayError(
                404, "model_not_found", f"The model '{name[:100]}' does not exist.", param="model"
            )
        await send_json(send, 200, _model_card(name))


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "execai-gateway"}
