"""Admin API (``/admin/...``): needs a key with the ``admin`` scope.

FastAPI serves these routes: they are rare, and typed bodies plus an OpenAPI schema matter
more here than the microseconds they cost.
"""

# No `from __future__ import annotations`: FastAPI resolves the local Annotated aliases at runtime.
import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway import auth
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.app import Gateway


class KeyCreate(BaseModel):
    tenant: str = Field(..., min_length=1, max_length=128)
    app: str = Field(..., min_length=1, max_length=128)
    models: list[str] = Field(default_factory=list, description="Public model names; ['*'] for all.")
    scopes: list[str] = Field(default_factory=lambda: ["chat", "embeddings"])
    name: str = ""


class KeyOut(BaseModel):
    key_id: str
    tenant: str
    app: str
    models: list[str]
    scopes: list[str]
    name: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(..., description="The API key. It is shown once and not stored.")


def _out(row: auth.ApiKey) -> dict[str, object]:
    return {
        "key_id": row.key_id, "tenant": row.tenant, "app": row.app,
        "models": [m for m in row.models.split(",") if m], "scopes": [s for s in row.scopes.split(",") if s],
        "name": row.name, "created_at": row.created_at, "revoked_at": row.revoked_at,
    }


def _error(exc: GatewayError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)


def admin_app(gw: "Gateway") -> FastAPI:
    app = FastAPI(title="ExecAI Gateway admin API", openapi_url="/admin/openapi.json", docs_url="/admin/docs")

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error(GatewayError(400, "invalid_request", f"{param or 'body'}: {first['msg']}", param=param))

    async def admin(authorization: Annotated[str | None, Header()] = None) -> auth.Principal:
        principal = await gw.keys.authenticate(authorization)
        if "admin" not in principal.scopes:
            raise GatewayError(403, "insufficient_scope", "This endpoint needs a key with the 'admin' scope.")
        return principal

    Admin = Annotated[auth.Principal, Depends(admin)]

    @app.post("/admin/keys", response_model=KeyCreated, status_code=201)
    async def create_key(body: KeyCreate, _: Admin) -> dict[str, object]:
        try:
            key, row = await asyncio.to_thread(
                auth.create_key, gw.engine, tenant=body.tenant, app=body.app, models=body.models,
                scopes=body.scopes, name=body.name,
            )
        except ValueError as exc:
            raise GatewayError(400, "invalid_request", str(exc)) from None
        return {**_out(row), "key": key}

    @app.get("/admin/keys", response_model=list[KeyOut])
    async def list_keys(_: Admin, tenant: str | None = None) -> list[dict[str, object]]:
        rows = await asyncio.to_thread(auth.list_keys, gw.engine, tenant)
        return [_out(r) for r in rows]

    @app.delete("/admin/keys/{key_id}", status_code=204)
    async def revoke(key_id: str, _: Admin) -> Response:
        if not await asyncio.to_thread(auth.revoke_key, gw.engine, key_id):
            raise GatewayError(404, "key_not_found", "No active key with that id.")
        return Response(status_code=204)

    return app
