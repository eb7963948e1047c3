"""The gateway's ASGI application.

The OpenAI routes (``/v1/...``) are plain ASGI handlers: FastAPI's routing and dependency
layer cost about 30% of throughput on this path (docs/benchmarks.md). Admin routes, which are
rare and benefit from typed bodies and an OpenAPI schema, live in a FastAPI sub-app.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import text

from gateway import metrics
from gateway.accounting import usage
from gateway.audit import Auditor
from gateway.auth import KeyStore, Principal
from gateway.bundle import Bundle, BundleHolder, watch
from gateway.config import Config
from gateway.errors import GatewayError, PolicyDenied, UpstreamError, bad_request
from gateway.identity import pseudonymiser
from gateway.openai_schema import PSEUDONYMISED
from gateway.policy import Context, Target
from gateway.router import Committed, Router, embed_via
from gateway.services import Services
from gateway.sse import Event, parse
from gateway.store.consent import ConsentRegistry
from gateway.store.db import make_engine
from gateway.store.writer import Writer
from gateway.upstreams import build
from gateway.upstreams.base import Upstream
from gateway.validation import validator

log = logging.getLogger("gateway")
access = logging.getLogger("gateway.access")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]"
_DATA_CLASS = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class _Disconnected(Exception):
    """The client went away; the request's work was cancelled."""


class Gateway:
    def __init__(self, config: Config, *, bundle: BundleHolder | None = None) -> None:
        self.config = config
        self.engine = make_engine(config.storage.database_url)
        self.keys = KeyStore(self.engine, config.server.key_refresh_s)
        self.upstreams: dict[str, Upstream] = {n: build(n, d) for n, d in config.deployments.items()}
        self.router = Router(self.upstreams)
        self.bundle = bundle or BundleHolder(Bundle.empty())
        self.pseudonym = pseudonymiser(config.server.secret_key)
        self.max_body = config.server.max_body_bytes
        extensions = {f for d in config.deployments.values() for f in d.extra_fields}
        self.validate_chat, self.validate_embeddings = (
            validator(endpoint, unknown_fields=config.server.unknown_fields, max_n=config.server.max_n,
                      extensions=extensions) for endpoint in ("chat", "embeddings"))
        storage = config.storage
        self.writer = Writer(self.engine, storage.spool_dir, batch_size=storage.writer_batch_size,
                             flush_interval_s=storage.writer_flush_interval_s, wal_fsync=storage.wal_fsync)
        self.services = Services(config=config, engine=self.engine, pseudonym=self.pseudonym, embed=self.embed,
                                 writer=self.writer, consents=ConsentRegistry(self.engine))
        self.auditor = Auditor(self.writer)
        self.writer.on_recover = self.auditor.recovered_marks
        metrics.configure_labels(config.accounting.metric_tenant_label, config.accounting.metric_app_label)
        self.bundle.bind(self.services)
        from gateway.admin import admin_app

        self.admin = admin_app(self)
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.models,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics,
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
        await self.writer.start()
        self.auditor.start()
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
        for upstream in self.upstreams.values():
            await upstream.close()
        await self.services.aclose()  # e.g. leases given back and settlements sent, before Redis closes
        if self.services.redis is not None:
            await self.services.redis.aclose()
        self.auditor.close()
        await self.writer.stop()  # after the upstreams: in-flight requests have queued their rows
        self.engine.dispose()

    # --- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            handler = self._routes.get((scope["method"], path))
            if handler is not None:
                await self._run(handler, scope, receive, send)
            elif path.startswith("/admin/"):
                await self._admin(scope, receive, send)
            elif path.startswith("/v1/models/") and scope["method"] == "GET":
                await self._run(self.model, scope, receive, send)
            elif path in self._paths or path.startswith("/v1/models/"):
                await _send_error(send, GatewayError(405, "method_not_allowed", "Method not allowed."))
            else:
                await _send_error(send, GatewayError(404, "not_found", f"Unknown path {path[:100]!r}."))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin app, with its body read here first and bounded, before anything authenticates."""
        limit = self.config.server.max_admin_body_bytes
        too_large = GatewayError(413, "request_too_large", f"Request body exceeds {limit} bytes.",
                                 headers={"Connection": "close"})  # the rest of the body is not read
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send, too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

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

    async def _run(self, handler: Callable[..., Awaitable[None]], scope: Scope, receive: Receive, send: Send) -> None:
        """Run a handler, answer GatewayErrors in OpenAI format, and never let one escape."""
        sent = [False]

        async def tracking_send(message: Message) -> None:
            sent[0] = True
            await send(message)

        try:
            await handler(scope, receive, tracking_send)
        except _Disconnected:
            pass
        except GatewayError as exc:
            if not sent[0]:
                await _send_error(send, exc)
        except Exception:
            log.exception("unhandled error", extra={"path": scope["path"]})
            if not sent[0]:
                await _send_error(send, GatewayError(500, "internal_error", "Internal gateway error."))

    # --- helpers ---------------------------------------------------------------------------

    async def _authenticate(self, scope: Scope, needed: str) -> Principal:
        principal = await self.keys.authenticate(_header(scope, b"authorization"))
        if needed not in principal.scopes:
            raise GatewayError(403, "insufficient_scope", f"This API key lacks the '{needed}' scope.")
        return principal

    async def _body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise GatewayError(413, "request_too_large", f"Request body exceeds {self.max_body} bytes.")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise GatewayError(413, "request_too_large", f"Request body exceeds {self.max_body} bytes.")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", code="invalid_json")
        return body

    async def embed(self, model: str, texts: list[str], allowed: frozenset[str] | None) -> list[list[float]]:
        """Embed texts through the gateway's own routing (for RAG); only ``allowed`` jurisdictions."""
        return await embed_via(self.config, self.router, model, texts, allowed)

    def _context(self, scope: Scope, principal: Principal, endpoint: Any, body: dict[str, Any]) -> Context:
        model = body["model"]
        alias = self.config.models.get(model)
        if alias is None:
            raise GatewayError(404, "model_not_found", "The model does not exist.", param="model")
        if not principal.may_use(model):
            raise GatewayError(403, "model_not_allowed", f"This API key may not use the model '{model}'.",
                               param="model")
        if alias.type != endpoint:
            fit = [m for m, a in self.config.models.items() if a.type == endpoint and principal.may_use(m)]
            raise GatewayError(400, "model_wrong_endpoint", f"{model} is a {alias.type} model; {endpoint} models: "
                               f"{', '.join(fit) or 'none this key may use'}.", param="model")
        subject = _header(scope, b"x-subject-id") or body.get("user")
        if subject is not None and len(subject) > 256:
            raise bad_request("X-Subject-Id may be at most 256 characters.", code="invalid_request.subject_id")
        data_class = _header(scope, b"x-data-class")
        if data_class is not None and not _DATA_CLASS.fullmatch(data_class):
            raise bad_request("X-Data-Class must be a data class name: 1-64 letters, digits, '_', '-' or '.'.",
                              code="invalid_request.data_class")
        self.bundle.current.check_header("x-data-class", data_class)
        return Context(
            principal=principal,
            endpoint=endpoint,
            model=model,
            candidates=[Target(n, self.config.deployments[n]) for n in alias.deployments],
            stream=bool(body.get("stream")),
            subject=self.pseudonym(subject) if isinstance(subject, str) and subject else None,
            data_class=data_class,
            bundle_hash=self.bundle.current.hash,
        )

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
        self, scope: Scope, receive: Receive, send: Send, endpoint: Any, validate: Callable[[dict[str, Any]], None]
    ) -> None:
        principal = await self._authenticate(scope, endpoint)
        body = await self._body(scope, receive)
        validate(body)
        ctx = self._context(scope, principal, endpoint, body)
        # Our own request extension never reaches an upstream, whether or not a policy reads it.
        ctx.rag_hints = body.pop("gateway_rag", None)
        self._pseudonymise_ids(body, PSEUDONYMISED[endpoint])
        # Requests in flight keep the bundle they started with, even across a hot reload.
        chain = self.bundle.current.chain_for(principal.tenant, principal.app)
        watcher = _DisconnectWatcher(receive)
        recorded = False

        async def record() -> None:
            """Ledger row and audit record, queued (and in the write-ahead file) before the response's last byte."""
            nonlocal recorded
            if not recorded:
                recorded = True
                # Completion hooks (accounting settle) run first so the audit record holds their decisions.
                await chain.complete(ctx)
                self._finish(ctx)

        try:
            request = await chain.request(ctx, body)
            committed = await self.router.send(ctx, chain, endpoint, request)
            if ctx.stream:
                await self._relay_stream(ctx, chain, committed, send, watcher, record, _abort_of(scope))
            else:
                await self._relay_json(ctx, chain, committed, send, record)
        except GatewayError as exc:
            if ctx.status:  # the response has started; nothing more can be said
                raise
            ctx.status = exc.status
            await record()
            await _send_error(send, exc, self._headers(ctx))
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
            await _send_error(send, GatewayError(500, "internal_error", "The gateway failed to handle the request."),
                              self._headers(ctx))
        finally:
            watcher.stop()
            await record()

    async def _relay_json(
        self, ctx: Context, chain: Any, committed: Committed, send: Send, record: Callable[[], Awaitable[None]]
    ) -> None:
        raw = await committed.response.read()
        ctx.usage = usage.from_body(raw)  # finds the usage object without decoding the body
        if chain.reads_response(ctx):
            try:
                response = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise UpstreamError(502, "upstream_invalid_response", "The upstream returned invalid JSON.") from None
            raw = orjson.dumps(await chain.response(ctx, response))
        ctx.status = 200
        await record()
        await _send_body(send, 200, raw, self._headers(ctx))

    async def _relay_stream(
        self, ctx: Context, chain: Any, committed: Committed, send: Send, watcher: _DisconnectWatcher,
        record: Callable[[], Awaitable[None]], abort: Callable[[], None] | None,
    ) -> None:
        """Relay the upstream's events; bounded by the deployment's total_s and by a write timeout per send.

        A client that stops reading makes ``send`` wait (uvicorn's flow control); after
        ``stream_write_timeout_s`` the client is disconnected (499), and the upstream connection and
        the key's concurrency slot are released. Past total_s the client gets an error event (504).
        """
        assert committed.chunks is not None
        assert ctx.target is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.target.deployment.timeouts.total_s - (time.perf_counter() - committed.began)
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
                await send({"type": "http.response.start", "status": 200,
                            "headers": [*_SSE_HEADERS, *self._headers(ctx)]})
                writing = False
                try:
                    # Once the client has the terminating [DONE], the answer is delivered: a hang-up after it is not
                    # an abort (the status stays 200), so the watcher stops before the upstream's own end is awaited.
                    # The records are queued just before [DONE] goes out.
                    if chain.reads_response(ctx):
                        async for event in chain.stream(ctx, parse(committed.chunks)):
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
                    await out(_error_event(exc))
                except TimeoutError:
                    raise  # ours (total_s, write timeout) or the upstream's read timeout: handled below
                except Exception as exc:  # any upstream failure is the client's 502  # noqa: BLE001
                    ctx.status = 502
                    log.warning("upstream stream failed",
                                extra={"request_id": ctx.request_id, "exc_type": type(exc).__name__})
                    await record()
                    await out(_error_event(UpstreamError(502, "upstream_stream_error",
                                                         "The upstream stream ended with an error.")))
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
                        await send({"type": "http.response.body", "body": _error_event(err), "more_body": False})
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

    def _finish(self, ctx: Context) -> None:
        elapsed = time.perf_counter() - ctx.started
        target = ctx.target
        deployment, jurisdiction = (target.name, target.jurisdiction) if target else ("none", "none")
        p = ctx.principal
        metrics.REQUESTS.labels(metrics.tenant_label(p.tenant), metrics.app_label(p.app), ctx.model, deployment,
                                jurisdiction, str(ctx.status)).inc()
        if target is not None:
            metrics.UPSTREAM_LATENCY.labels(deployment).observe(ctx.upstream_s)
        metrics.OVERHEAD.observe(max(elapsed - ctx.upstream_s, 0.0))
        self.auditor.record(ctx)
        if ctx.fallback_reason:
            consented = target is not None and target.name in ctx.consents
            metrics.FALLBACKS.labels(ctx.fallback_reason, "true" if consented else "false").inc()
        for d in ctx.decisions:
            metrics.DECISIONS.labels(d.policy, d.action).inc()
        if access.isEnabledFor(logging.INFO):
            access.info(
                "request",
                extra={
                    "request_id": ctx.request_id, "tenant": p.tenant, "app": p.app, "key_id": p.key_id,
                    "model": ctx.model, "deployment": deployment, "status": ctx.status,
                    "attempts": len(ctx.attempts), "fallback": ctx.fallback_reason,
                    "latency_ms": round(elapsed * 1000, 2), "upstream_ms": round(ctx.upstream_s * 1000, 2),
                },
            )

    async def models(self, scope: Scope, _receive: Receive, send: Send) -> None:
        principal = await self.keys.authenticate(_header(scope, b"authorization"))
        data = [_model_card(m) for m in self.config.models if principal.may_use(m)]
        await _send_json(send, 200, {"object": "list", "data": data})

    async def model(self, scope: Scope, _receive: Receive, send: Send) -> None:
        principal = await self.keys.authenticate(_header(scope, b"authorization"))
        name = scope["path"][len("/v1/models/"):]
        if name not in self.config.models or not principal.may_use(name):
            raise GatewayError(404, "model_not_found", f"The model '{name[:100]}' does not exist.", param="model")
        await _send_json(send, 200, _model_card(name))

    # --- operations ------------------------------------------------------------------------

    async def healthz(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"status": "ok"})

    async def readyz(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        checks: dict[str, str] = {}

        def db_ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(asyncio.to_thread(db_ping), 2)
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports a failure, it does not raise  # noqa: BLE001
            checks["database"] = f"error: {type(exc).__name__}"
        if self.services.redis is not None:
            try:
                await asyncio.wait_for(self.services.redis.ping(), 2)
                checks["redis"] = "ok"
            except Exception as exc:  # readiness reports a failure, it does not raise  # noqa: BLE001
                checks["redis"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        body = {
            "status": "ready" if ok else "not_ready",
            "checks": checks,
            "policy_bundle": self.bundle.current.hash,
            "dev_secret": not self.config.server.secret_key,
        }
        await _send_json(send, 200 if ok else 503, body)

    async def metrics(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        body = metrics.render()
        headers = [(b"content-type", metrics.CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _DisconnectWatcher:
    """Cancels the request's task when the client disconnects, which aborts the upstream call."""

    def __init__(self, receive: Receive) -> None:
        self.fired = False
        self._owner = asyncio.current_task()
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._task is not None and self._owner is not None:
            self.fired = True
            self._owner.cancel()

    def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()


def _abort_of(scope: Scope) -> Callable[[], None] | None:
    """The server's way to drop the connection at once (gateway/httpserver.py puts it in the scope)."""
    extensions = scope.get("extensions")
    return extensions.get("gateway.abort") if extensions else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return cast(bytes, value).decode("latin-1")
    return None


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "execai-gateway"}


def _error_event(exc: GatewayError) -> bytes:
    return Event(exc.body()).encode()


async def _send_json(send: Send, status: int, obj: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await _send_body(send, status, orjson.dumps(obj), extra)


async def _send_error(send: Send, exc: GatewayError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await _send_body(send, exc.status, exc.body(), [*headers, *(extra or [])])


async def _send_body(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(config_path: str | None = None) -> Gateway:
    """uvicorn factory: ``uvicorn --factory gateway.app:create_app``."""
    from gateway.bundle import load_holder
    from gateway.config import load_config

    config = load_config(config_path)
    return Gateway(config, bundle=load_holder(config))
