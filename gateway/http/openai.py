"""The OpenAI routes (``/v1``): thin adapters over the pipeline.

Plain ASGI handlers: FastAPI's routing and dependency layer cost about 30% of throughput on this
path (docs/benchmarks.md). A request is authenticated, its body read (bounded) and validated,
and then the pipeline (``gateway.pipeline``) decides; this module relays the answer, as bytes or
as a stream with its own time limits, and turns refusals into OpenAI's error format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway import metrics
from gateway.auth import KeyStore, Principal
from gateway.chain import Pass
from gateway.config import Config
from gateway.errors import GatewayError, PolicyDenied, UpstreamError, bad_request
from gateway.http.asgi import (
    DisconnectWatcher,
    Receive,
    Scope,
    Send,
    abort_of,
    error_event,
    header,
    read_body,
    send_body,
    send_error,
    send_json,
)
from gateway.openai_schema import PSEUDONYMISED
from gateway.pipeline import Pipeline
from gateway.policy import Context
from gateway.router import Committed
from gateway.sse import parse
from gateway.validation import validator

log = logging.getLogger("gateway")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]"


class OpenAIRoutes:
    """``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models[/{id}]``."""

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
        await self._proxy(scope, receive, send, "chat", self.validate_chat)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._proxy(scope, receive, send, "embeddings", self.validate_embeddings)

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Any,
        validate: Callable[[dict[str, Any]], None],
    ) -> None:
        principal = await self._authenticate(scope, endpoint)
        body = await self._body(scope, receive)
        validate(body)
        ctx = self.pipeline.context(
            principal,
            endpoint,
            body,
            subject=header(scope, b"x-subject-id") or body.get("user"),
            data_class=header(scope, b"x-data-class"),
        )
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
                await self._relay_stream(ctx, chain, committed, send, watcher, record, abort_of(scope))
            else:
                await self._relay_json(ctx, chain, committed, send, record)
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
    ) -> None:
        raw = await self.pipeline.answer(ctx, chain, committed)
        await record()
        await send_body(send, 200, raw, self._headers(ctx))

    async def _relay_stream(
        self,
        ctx: Context,
        chain: Pass,
        committed: Committed,
        send: Send,
        watcher: DisconnectWatcher,
        record: Callable[[], Awaitable[None]],
        abort: Callable[[], None] | None,
    ) -> None:
        """Relay the upstream's events; bounded by the deployment's total_s and by a write timeout per send.

        A client that stops reading makes ``send`` wait (uvicorn's flow control); after
        ``stream_write_timeout_s`` the client is disconnected (499), and the upstream connection and
        the key's concurrency slot are released. Past total_s the client gets an error event (504).
        """
        assert committed.chunks is not None
        assert ctx.target is not None
        loop = asyncio.get_running_loop()
        deadline = (
            loop.time() + ctx.target.deployment.timeouts.total_s - (time.perf_counter() - committed.began)
        )
        write_timeout = self.config.server.stream_write_timeout_s
        finished = writing = False
        try:
            async with asyncio.timeout_at(deadline) as limit:

                async def out(data: bytes, more: bool = True) -> None:
                    nonlocal writing
                    writing = True
                    limit.reschedule(min(deadline, loop.time() + write_timeout))
                    await send({"type": "http.response.body", "body": data, "more_body": more})
                    limit.reschedule(deadline)
                    writing = False

                ctx.status = 200
                writing = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [*_SSE_HEADERS, *self._headers(ctx)],
                    }
                )
                writing = False
                try:
                    # Once the client has the terminating [DONE], the answer is delivered: a hang-up after it is not
                    # an abort (the status stays 200), so the watcher stops before the upstream's own end is awaited.
                    # The records are queued just before [DONE] goes out.
                    if chain.reads_response():
                        async for event in chain.stream(parse(committed.chunks)):
                            if event.is_done:
                                await record()
                            self._first_byte(ctx)
                            await out(event.encode())
                            if event.is_done:
                                watcher.stop()
                    else:
                        async for chunk in committed.chunks:
                            done = _DONE in chunk
                            if done:
                                await record()
                            self._first_byte(ctx)
                            await out(chunk)
                            if done:
                                watcher.stop()
                    finished = True
                except PolicyDenied as exc:
                    ctx.status = exc.status
                    await record()
                    await out(error_event(exc))
                except TimeoutError:
                    raise  # ours (total_s, write timeout) or the upstream's read timeout: handled below
                except Exception as exc:  # any upstream failure is the client's 502  # noqa: BLE001
                    ctx.status = 502
                    log.warning(
                        "upstream stream failed",
                        extra={"request_id": ctx.request_id, "exc_type": type(exc).__name__},
                    )
                    await record()
                    await out(
                        error_event(
                            UpstreamError(
                                502, "upstream_stream_error", "The upstream stream ended with an error."
                            )
                        )
                    )
                watcher.stop()
                await record()
                await out(b"", more=False)
        except TimeoutError:
            if writing:
                # The client stopped reading: nothing more can reach it. Cut it off.
                log.warning("client stopped reading a stream", extra={"request_id": ctx.request_id})
                ctx.status = 499
                if abort is not None:
                    abort()
                    await asyncio.sleep(0)  # the server sees the connection lost before this request returns
            else:
                # The upstream ran past total_s (or its reads stalled): tell the client, then end the stream.
                ctx.status = 504
                log.warning("upstream stream exceeded total_s", extra={"request_id": ctx.request_id})
                await record()
                err = UpstreamError(504, "upstream_timeout", "The upstream model timed out.")
                try:
                    async with asyncio.timeout(write_timeout):
                        await send(
                            {"type": "http.response.body", "body": error_event(err), "more_body": False}
                        )
                except TimeoutError:
                    if abort is not None:
                        abort()
        finally:
            watcher.stop()
            if finished:
                await committed.response.release()
            else:
                committed.response.close()

    def _first_byte(self, ctx: Context) -> None:
        if ctx.first_byte_at is None:
            ctx.first_byte_at = time.perf_counter()
            metrics.TTFT.labels(ctx.model).observe(ctx.first_byte_at - ctx.started)

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
