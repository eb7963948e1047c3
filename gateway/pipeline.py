"""The request lifecycle, written once: context, policy chain, routing, the answer, the record.

Used by the HTTP app (``gateway.app``), by dry runs (``policy explain`` and ``policy test``,
``gateway.policytest``) and, for its embeddings path, by RAG ingestion (``gateway.rag.cli``).
What is HTTP's alone (headers, streaming to a socket, disconnects) stays in the app; what is a
dry run's alone (simulated upstreams and consents) stays in policytest.

    ctx = pipeline.context(principal, endpoint, body, subject=..., data_class=...)
    chain = pipeline.start(ctx)
    committed = await pipeline.send(ctx, chain, body)      # chain.request, then the router
    raw = await pipeline.answer(ctx, chain, committed)     # non-streamed: usage, chain.response
    await pipeline.finish(ctx, chain)                      # chain.complete, then the record
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol

import orjson

from gateway.accounting import usage
from gateway.auth import Principal
from gateway.bundle import Bundle
from gateway.chain import Pass
from gateway.config import Config
from gateway.errors import GatewayError, UpstreamError, bad_request
from gateway.policy import Context, Target
from gateway.router import Committed, Router, embed_via
from gateway.services import Embed

Endpoint = Literal["chat", "embeddings"]
_DATA_CLASS = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class Bundles(Protocol):
    """Where the current bundle is read (a ``BundleHolder``: hot reloads swap it)."""

    @property
    def current(self) -> Bundle: ...


class Pipeline:
    """One gateway's request lifecycle over its config, bundle and router.

    ``pseudonym`` keys subject ids and ``link`` gives what the records store for one (per-subject keys,
    ``gateway.store.subject_keys``); ``record`` (the app's telemetry: metrics, audit, access log) runs
    once per request after the chain's completion hooks, and is None for dry runs.
    """

    def __init__(
        self,
        config: Config,
        bundles: Bundles,
        router: Router,
        pseudonym: Callable[[str], str],
        record: Callable[[Context], None] | None = None,
        link: Callable[[str, str], str] | None = None,
    ) -> None:
        self.config = config
        self.bundles = bundles
        self.router = router
        self.pseudonym = pseudonym
        self.record = record
        self.link = link

    def context(
        self,
        principal: Principal,
        endpoint: Endpoint,
        body: dict[str, Any],
        *,
        subject: str | None = None,
        data_class: str | None = None,
        route: str = "",
    ) -> Context:
        """The request's context: the model's deployments as candidates, the subject pseudonymised.

        Raises the client's error for an unknown, forbidden or wrong-endpoint model and for a subject id
        or data class that could not be recorded as sent. ``route`` is the API called when it is not
        ``endpoint`` (the Responses API, bridged to chat); the context defaults it to ``endpoint``."""
        model = body["model"]
        alias = self.config.models.get(model)
        if alias is None:
            raise GatewayError(404, "model_not_found", "The model does not exist.", param="model")
        if not principal.may_use(model):
            raise GatewayError(
                403, "model_not_allowed", f"This API key may not use the model '{model}'.", param="model"
            )
        if alias.type != endpoint:
            fit = [m for m, a in self.config.models.items() if a.type == endpoint and principal.may_use(m)]
            raise GatewayError(
                400,
                "model_wrong_endpoint",
                f"{model} is a {alias.type} model; {endpoint} models: "
                f"{', '.join(fit) or 'none this key may use'}.",
                param="model",
            )
        if subject is not None and len(subject) > 256:
            raise bad_request(
                "X-Subject-Id may be at most 256 characters.", code="invalid_request.subject_id"
            )
        if data_class is not None and not _DATA_CLASS.fullmatch(data_class):
            raise bad_request(
                "X-Data-Class must be a data class name: 1-64 letters, digits, '_', '-' or '.'.",
                code="invalid_request.data_class",
            )
        bundle = self.bundles.current
        bundle.check_header("x-data-class", data_class)
        pseudonym = self.pseudonym(subject) if isinstance(subject, str) and subject else None
        return Context(
            principal=principal,
            endpoint=endpoint,
            model=model,
            candidates=[Target(n, self.config.deployments[n]) for n in alias.deployments],
            stream=bool(body.get("stream")),
            subject=pseudonym,
            subject_link=(
                self.link(principal.tenant, pseudonym)
                if pseudonym is not None and self.link is not None
                else None
            ),
            data_class=data_class,
            bundle_hash=bundle.hash,
            route=route,
        )

    def start(self, ctx: Context) -> Pass:
        """The chain of the bundle current now; the request keeps it even across a hot reload."""
        return self.bundles.current.chain_for(ctx.principal.tenant, ctx.principal.app).start(ctx)

    async def send(self, ctx: Context, chain: Pass, body: dict[str, Any]) -> Committed:
        """The request hooks, then the first deployment that answers (per-hop hooks run for each one tried)."""
        request = await chain.request(body)
        return await self.router.send(ctx, chain, ctx.endpoint, request)

    async def answer(self, ctx: Context, chain: Pass, committed: Committed) -> bytes:
        """A non-streamed answer's bytes: its usage noted, and the response hooks run only when one reads it."""
        raw = await committed.response.read()
        ctx.usage = usage.from_body(raw)  # finds the usage object without decoding the body
        if chain.reads_response():
            try:
                response = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise UpstreamError(
                    502, "upstream_invalid_response", "The upstream returned invalid JSON."
                ) from None
            raw = orjson.dumps(await chain.response(response))
        ctx.status = 200
        return raw

    async def finish(self, ctx: Context, chain: Pass) -> None:
        """Completion hooks first (accounting settles), so that the record holds their decisions."""
        await chain.complete()
        if self.record is not None:
            self.record(ctx)

    async def embed(self, model: str, texts: list[str], allowed: frozenset[str] | None) -> list[list[float]]:
        """Embed texts through this gateway's routing (for RAG); only ``allowed`` jurisdictions."""
        return await embed_via(self.config, self.router, model, texts, allowed)


@asynccontextmanager
async def embeddings_path(config: Config) -> AsyncIterator[Embed]:
    """The gateway's own embeddings path for a command that is not the server (RAG ingestion, dry runs):
    the embeddings deployments' upstreams, started for the block and closed after it."""
    from gateway.upstreams import build

    names = {d for alias in config.models.values() if alias.type == "embeddings" for d in alias.deployments}
    router = Router({n: build(n, config.deployments[n]) for n in names})
    for upstream in router.upstreams.values():
        await upstream.start()
    try:
        yield lambda model, texts, allowed: embed_via(config, router, model, texts, allowed)
    finally:
        for upstream in router.upstreams.values():
            await upstream.close()
