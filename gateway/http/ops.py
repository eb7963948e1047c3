"""Operations routes: liveness, readiness (database, Redis, the policy bundle in force) and metrics."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from gateway import metrics
from gateway.config import Config
from gateway.http.asgi import Receive, Scope, Send, send_json
from gateway.services import Services

if TYPE_CHECKING:
    from gateway.pipeline import Bundles


class OpsRoutes:
    """``GET /healthz``, ``GET /readyz``, ``GET /metrics``."""

    def __init__(self, config: Config, engine: Engine, services: Services, bundles: Bundles) -> None:
        self.config = config
        self.engine = engine
        self.services = services
        self.bundle = bundles

    async def healthz(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"status": "ok"})

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
        await send_json(send, 200 if ok else 503, body)

    async def metrics(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        body = metrics.render()
        headers = [
            (b"content-type", metrics.CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
