"""The gateway's ASGI application: wiring, lifecycle and dispatch by path.

The routes are thin adapters in ``gateway.http`` over the request lifecycle in
``gateway.pipeline``; admin routes, which are rare and benefit from typed bodies and an OpenAPI
schema, live in a FastAPI sub-app (``gateway.http.admin``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import logs, metrics, retention, tokenids
from gateway.audit import Auditor
from gateway.auth import KeyStore
from gateway.bundle import Bundle, BundleHolder, watch
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.http import asgi
from gateway.http.asgi import Receive, Scope, Send, send_error
from gateway.http.openai import OpenAIRoutes
from gateway.http.ops import OpsRoutes
from gateway.identity import pseudonymiser
from gateway.pipeline import Pipeline
from gateway.policy import Context
from gateway.router import Router
from gateway.services import Services
from gateway.store.consent import ConsentRegistry
from gateway.store.db import make_engine
from gateway.store.subject_keys import SubjectKeys
from gateway.store.writer import Writer
from gateway.subjects.erase import Stores
from gateway.upstreams import build
from gateway.upstreams.base import Upstream

if TYPE_CHECKING:
    from gateway.oidc import OidcVerifier

log = logging.getLogger("gateway")
access = logging.getLogger("gateway.access")


class Gateway:
    def __init__(self, config: Config, *, bundle: BundleHolder | None = None) -> None:
        self.config = config
        self.engine = make_engine(config.storage.database_url)
        self.oidc: OidcVerifier | None = None
        if config.auth.oidc:  # PyJWT and the JWKS client are imported only when an issuer is configured
            from gateway.oidc import OidcVerifier

            self.oidc = OidcVerifier(config.auth.oidc)
        self.keys = KeyStore(
            self.engine, config.server.key_refresh_s, self.oidc.principal if self.oidc is not None else None
        )
        self.upstreams: dict[str, Upstream] = {n: build(n, d) for n, d in config.deployments.items()}
        self.router = Router(self.upstreams)
        self.bundle = bundle or BundleHolder(Bundle.empty())
        self.pseudonym = pseudonymiser(config.server.secret_key)
        storage = config.storage
        self.writer = Writer(
            self.engine,
            storage.spool_dir,
            batch_size=storage.writer_batch_size,
            flush_interval_s=storage.writer_flush_interval_s,
            wal_fsync=storage.wal_fsync,
        )
        self.subjects = SubjectKeys(self.engine)
        self.pipeline = Pipeline(
            config, self.bundle, self.router, self.pseudonym, record=self._finish, link=self.subjects.link
        )
        self.embed = self.pipeline.embed
        self.services = Services(
            config=config,
            engine=self.engine,
            pseudonym=self.pseudonym,
            embed=self.embed,
            writer=self.writer,
            consents=ConsentRegistry(self.engine),
        )
        self.auditor = Auditor(self.writer)
        self.writer.on_recover = self.auditor.recovered_marks
        metrics.configure_labels(config.accounting.metric_tenant_label, config.accounting.metric_app_label)
        self.bundle.bind(self.services)
        from gateway.http.admin import admin_app

        self.admin = admin_app(self)
        self.openai = OpenAIRoutes(config, self.keys, self.pipeline, self.pseudonym)
        ops = OpsRoutes(config, self.engine, self.services, self.bundle)
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self.openai.chat,
            ("POST", "/v1/embeddings"): self.openai.embeddings,
            ("POST", "/v1/responses"): self.openai.responses,
            ("GET", "/v1/models"): self.openai.models,
            ("GET", "/healthz"): ops.healthz,
            ("GET", "/readyz"): ops.readyz,
            ("GET", "/metrics"): ops.metrics,
        }
        self._paths = {path for _, path in self._routes}

    # --- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.start()
        self.keys.start()
        policies = Path(self.config.server.policies_dir)
        self._stop_watch = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        if policies.is_dir():  # noqa: ASYNC240 (once, at start-up)
            self._watch = asyncio.create_task(watch(self.bundle, policies, self._stop_watch))
        if any(alias.type == "embeddings" for alias in self.config.models.values()):
            await asyncio.to_thread(tokenids.warm, self.config.embeddings)
        await self.writer.start()
        self.auditor.start()
        self._subjects = asyncio.create_task(self.subjects.watch(self._stop_watch))
        self._retention = asyncio.create_task(retention.schedule(self.config, self.engine, self._stop_watch))
        # Library modules (spaCy, weaviate, numpy) can leave ~200 MB of long-lived objects; moving
        # them out of the collector's view keeps full collections from pausing requests for ~50 ms.
        gc.collect()
        gc.freeze()
        if self.config.storage.redis_url:
            import redis.asyncio as aioredis

            self.services.redis = aioredis.from_url(self.config.storage.redis_url, socket_timeout=2)

    async def shutdown(self) -> None:
        await self.keys.stop()
        self._stop_watch.set()
        if self._watch is not None:
            self._watch.cancel()
        await self._subjects  # saves the keys made since its last round
        self._retention.cancel()
        for upstream in self.upstreams.values():
            await upstream.close()
        await self.services.aclose()  # e.g. leases given back and settlements sent, before Redis closes
        if self.services.redis is not None:
            await self.services.redis.aclose()
        self.auditor.close()
        await self.writer.stop()  # after the upstreams: in-flight requests have queued their rows
        self.engine.dispose()

    def subject_stores(self) -> Stores:
        """Where this gateway holds data subjects' data, for erasure and export (``/admin/subjects``)."""
        return Stores(
            self.config, self.engine, self.auditor, self.bundle.current.hash, before=self.subjects.save
        )

    # --- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            handler = self._routes.get((scope["method"], path))
            if handler is not None:
                await asgi.run(handler, scope, receive, send)
            elif path.startswith("/admin/"):
                await self._admin(scope, receive, send)
            elif path.startswith("/v1/models/") and scope["method"] == "GET":
                await asgi.run(self.openai.model, scope, receive, send)
            elif path.startswith("/v1/responses/"):
                await asgi.run(self.openai.stored_response, scope, receive, send)
            elif path in self._paths or path.startswith("/v1/models/"):
                await send_error(send, GatewayError(405, "method_not_allowed", "Method not allowed."))
            else:
                await send_error(send, GatewayError(404, "not_found", f"Unknown path {path[:100]!r}."))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin app, with its body read here first and bounded, before anything authenticates."""
        limit = self.config.server.max_admin_body_bytes
        too_large = GatewayError(
            413, "request_too_large", f"Request body exceeds {limit} bytes.", headers={"Connection": "close"}
        )  # the rest of the body is not read
        try:
            body = await asgi.read_body(scope, receive, limit, too_large)
        except asgi.Disconnected:
            return
        except GatewayError as exc:
            await send_error(send, exc)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.admin(scope, replay, send)  # type: ignore[arg-type]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- the record ----------------------------------------------------------------------

    def _finish(self, ctx: Context) -> None:
        elapsed = time.perf_counter() - ctx.started
        target = ctx.target
        deployment, jurisdiction = (target.name, target.jurisdiction) if target else ("none", "none")
        p = ctx.principal
        metrics.REQUESTS.labels(
            metrics.tenant_label(p.tenant),
            metrics.app_label(p.app),
            ctx.model,
            deployment,
            jurisdiction,
            str(ctx.status),
            ctx.route,
        ).inc()
        if target is not None:
            metrics.UPSTREAM_LATENCY.labels(deployment).observe(ctx.upstream_s)
        metrics.OVERHEAD.observe(max(elapsed - ctx.upstream_s, 0.0))
        self.auditor.record(ctx)
        if ctx.fallback_reason:
            consented = target is not None and target.name in ctx.consents
            metrics.FALLBACKS.labels(ctx.fallback_reason, "true" if consented else "false").inc()
        for d in ctx.decisions:
            metrics.DECISIONS.labels(d.policy, d.action).inc()
            # A decision counting entity types (pii_redaction's) feeds gateway_pii_entities_total, shadow ones too.
            entities = d.facts.get("entities")
            if isinstance(entities, dict):
                for entity, n in entities.items():
                    metrics.PII_ENTITIES.labels(entity, d.action).inc(n)
        if access.isEnabledFor(logging.INFO):
            access.info(
                "request",
                extra={
                    "request_id": ctx.request_id,
                    "tenant": p.tenant,
                    "app": p.app,
                    "key_id": p.key_id,
                    "model": ctx.model,
                    "deployment": deployment,
                    "status": ctx.status,
                    "attempts": len(ctx.attempts),
                    "fallback": ctx.fallback_reason,
                    "latency_ms": round(elapsed * 1000, 2),
                    "upstream_ms": round(ctx.upstream_s * 1000, 2),
                },
            )


def create_app(config_path: str | None = None) -> Gateway:
    """uvicorn factory: ``uvicorn --factory gateway.app:create_app``.

    With ``server.workers`` > 1, uvicorn spawns each worker as a new process, which does not inherit the
    logging that ``gateway serve`` set up: a worker whose root logger has no handler sets it up here, so
    its access log and warnings are written too (one JSON line each, on stderr)."""
    from gateway.bundle import load_holder
    from gateway.config import load_config

    if not logging.getLogger().handlers:
        logs.setup(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))

    config = load_config(config_path)
    return Gateway(config, bundle=load_holder(config))
