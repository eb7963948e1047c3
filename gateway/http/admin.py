"""Admin API (``/admin/...``): needs a key with the ``admin`` scope.

FastAPI serves these routes: they are rare, and typed bodies plus an OpenAPI schema matter
more here than the microseconds they cost.
"""

# No `from __future__ import annotations`: FastAPI resolves the local Annotated aliases at runtime.
import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Protocol

import orjson
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy import Engine
from starlette.exceptions import HTTPException

from gateway import audit, auth
from gateway.audit import Auditor
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.http.admin_models import (
    ConsentGrant,
    ConsentOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    SubjectRequest,
    key_out,
)
from gateway.store import consent
from gateway.store.db import Consent
from gateway.subjects.erase import Stores, erase
from gateway.subjects.export import export


class Host(Protocol):
    """What the admin routes use of the gateway that serves them (``gateway.app.Gateway``)."""

    config: Config
    engine: Engine
    keys: auth.KeyStore
    pseudonym: Callable[[str], str]
    auditor: Auditor

    def subject_stores(self) -> Stores: ...


def _error(exc: GatewayError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)


def admin_app(gw: Host) -> FastAPI:
    # No documentation page (it loads Swagger UI from a CDN); the schema only to admin keys, if enabled.
    app = FastAPI(title="ExecAI Gateway admin API", openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        message = {404: "Unknown admin path.", 405: "Method not allowed."}.get(
            exc.status_code, "Invalid request."
        )
        return _error(GatewayError(exc.status_code, code, message))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error(GatewayError(400, "invalid_request", f"{param or 'body'}: {first['msg']}", param=param))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):  # the database is down: try again, not a bug
            return _error(
                GatewayError(
                    503,
                    "database_unavailable",
                    "The database is unavailable; retry shortly.",
                    headers={"Retry-After": "5"},
                )
            )
        return _error(GatewayError(500, "internal_error", "The admin request failed."))

    async def admin(authorization: Annotated[str | None, Header()] = None) -> auth.Principal:
        principal = await gw.keys.authenticate(authorization)
        if not principal.scopes & {"admin", "global_admin"}:
            raise GatewayError(403, "insufficient_scope", "This endpoint needs a key with the 'admin' scope.")
        return principal

    def tenant_of(principal: auth.Principal, tenant: str | None) -> str | None:
        """The tenant an admin call may act on: any (None = all) for a global admin, else only its own."""
        if "global_admin" in principal.scopes:
            return tenant
        if tenant is not None and tenant != principal.tenant:
            raise GatewayError(403, "admin.tenant_forbidden", "This admin key manages only its own tenant.")
        return principal.tenant

    Admin = Annotated[auth.Principal, Depends(admin)]
    QueryName = Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]

    if gw.config.server.admin_docs:

        @app.get("/admin/openapi.json", include_in_schema=False)
        async def openapi(_: Admin) -> dict[str, object]:
            from fastapi.openapi.utils import get_openapi

            return get_openapi(title=app.title, version="1", routes=app.routes)

    @app.post("/admin/keys", response_model=KeyCreated, status_code=201)
    async def create_key(body: KeyCreate, principal: Admin) -> dict[str, object]:
        tenant_of(principal, body.tenant)
        if "global_admin" in body.scopes:
            raise GatewayError(
                403, "admin.tenant_forbidden", "Global admin keys are issued with the CLI only."
            )
        try:
            key, row = await asyncio.to_thread(
                auth.create_key,
                gw.engine,
                tenant=body.tenant,
                app=body.app,
                models=body.models,
                scopes=body.scopes,
                name=body.name,
            )
        except ValueError as exc:
            raise GatewayError(400, "invalid_request", str(exc)) from None
        return {**key_out(row), "key": key}

    @app.get("/admin/keys", response_model=list[KeyOut])
    async def list_keys(principal: Admin, tenant: QueryName = None) -> list[dict[str, object]]:
        rows = await asyncio.to_thread(auth.list_keys, gw.engine, tenant_of(principal, tenant))
        return [key_out(r) for r in rows]

    @app.delete("/admin/keys/{key_id}", status_code=204)
    async def revoke(key_id: str, principal: Admin) -> Response:
        row = await asyncio.to_thread(auth.get_key, gw.engine, key_id)
        if row is not None:
            tenant_of(principal, row.tenant)
        if row is None or not await asyncio.to_thread(auth.revoke_key, gw.engine, key_id):
            raise GatewayError(404, "key_not_found", "No active key with that id.")
        return Response(status_code=204)

    @app.post("/admin/consents", response_model=ConsentOut, status_code=201)
    async def grant_consent(body: ConsentGrant, principal: Admin) -> Consent:
        tenant_of(principal, body.tenant)
        return await asyncio.to_thread(
            consent.grant,
            gw.engine,
            tenant=body.tenant,
            subject=gw.pseudonym(body.subject_id),
            purpose=body.purpose,
            evidence_ref=body.evidence_ref,
            expires_in=timedelta(days=body.expires_in_days) if body.expires_in_days else None,
        )

    @app.delete("/admin/consents")
    async def withdraw_consent(
        tenant: Annotated[str, Query(max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")],
        subject_id: Annotated[str, Query(max_length=256, pattern=r"^[^\x00]+$")],
        purpose: Annotated[str, Query(max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")],
        principal: Admin,
    ) -> dict[str, int]:
        tenant_of(principal, tenant)
        n = await asyncio.to_thread(
            consent.withdraw, gw.engine, tenant=tenant, subject=gw.pseudonym(subject_id), purpose=purpose
        )
        return {"withdrawn": n}

    @app.get("/admin/consents", response_model=list[ConsentOut])
    async def list_consents(
        principal: Admin,
        tenant: QueryName = None,
        subject_id: Annotated[str | None, Query(max_length=256, pattern=r"^[^\x00]+$")] = None,
    ) -> list[Consent]:
        subject = gw.pseudonym(subject_id) if subject_id else None
        return await asyncio.to_thread(
            consent.list_consents, gw.engine, tenant=tenant_of(principal, tenant), subject=subject
        )

    SubjectId = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00]+$")]

    def subject_tenant(principal: auth.Principal, tenant: str | None) -> str:
        chosen = tenant_of(principal, tenant)
        if chosen is None:
            raise GatewayError(
                400,
                "invalid_request",
                "A global admin key must name the tenant ('tenant').",
                param="tenant",
            )
        return chosen

    not_held = GatewayError(
        404, "subject_not_found", "Nothing is held about this subject in this tenant (never seen, or erased)."
    )

    async def erased(principal: auth.Principal, subject_id: str, tenant: str | None) -> dict[str, object]:
        chosen = subject_tenant(principal, tenant)
        receipt = await erase(
            gw.subject_stores(), tenant=chosen, subject_id=subject_id, actor=(principal.app, principal.key_id)
        )
        if receipt is None:
            raise not_held
        return receipt

    async def exported(principal: auth.Principal, subject_id: str, tenant: str | None) -> Response:
        found = await export(
            gw.subject_stores(), tenant=subject_tenant(principal, tenant), subject_id=subject_id
        )
        if found is None:
            raise not_held
        return Response(orjson.dumps(found, default=str), media_type="application/json")

    # The subject named in the body: the raw id stays out of URLs (and so out of proxies' access logs).
    @app.post("/admin/subjects/erase")
    async def erase_subject_named(request: SubjectRequest, principal: Admin) -> dict[str, object]:
        return await erased(principal, request.subject_id, request.tenant)

    @app.post("/admin/subjects/export")
    async def export_subject_named(request: SubjectRequest, principal: Admin) -> Response:
        return await exported(principal, request.subject_id, request.tenant)

    # The same with the id in the path, kept for existing scripts (docs/compliance.md prefers the body).
    @app.post("/admin/subjects/{subject_id}/erase")
    async def erase_subject(
        subject_id: SubjectId, principal: Admin, tenant: QueryName = None
    ) -> dict[str, object]:
        return await erased(principal, subject_id, tenant)

    @app.get("/admin/subjects/{subject_id}/export")
    async def export_subject(subject_id: SubjectId, principal: Admin, tenant: QueryName = None) -> Response:
        return await exported(principal, subject_id, tenant)

    @app.get("/admin/audit/{request_id}")
    async def audit_record(request_id: str, principal: Admin) -> dict[str, object]:
        row = await asyncio.to_thread(audit.fetch, gw.engine, request_id)
        if row is not None:
            tenant_of(principal, row.tenant)
        if row is None:
            raise GatewayError(404, "audit_record_not_found", "No audit record for that request id (yet).")
        out = row.model_dump()
        out["decisions"] = orjson.loads(row.decisions)
        out["attempts"] = orjson.loads(row.attempts)
        return out

    return app
