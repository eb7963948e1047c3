"""Virtual API keys: issue, resolve to a Principal, revoke.

A key reads ``sk-gw-<key_id>-<secret>``. Only ``sha256(secret)`` is stored; the key id finds
the row and the hashes are compared in constant time. Each worker caches resolved keys and
re-reads the cached rows every ``key_refresh_s`` seconds, so a revocation reaches every worker
within that interval without putting SQL on the request path.

SQLAlchemy and the table models are imported by the functions that use them, so importing this
module (``Principal``, for every policy) costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.store.db import ApiKey


def __getattr__(name: str) -> object:
    # ``auth.ApiKey`` (the admin API's response annotations), imported on first use.
    if name == "ApiKey":
        from gateway.store.db import ApiKey

        return ApiKey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger("gateway.auth")
PREFIX = "sk-gw-"
# `admin` manages its own tenant only; `global_admin` manages every tenant and is issued by the CLI only.
SCOPES = frozenset({"chat", "embeddings", "models", "admin", "global_admin"})
_ID_LEN = 12
_NEGATIVE_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    app: str
    models: frozenset[str]
    scopes: frozenset[str]
    subject: str | None = None  # the data subject an OIDC token names (auth.oidc claims.subject)

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(token: str) -> tuple[str, str] | None:
    if not token.startswith(PREFIX) or len(token) < len(PREFIX) + _ID_LEN + 2:
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("-")
    if not sep or len(key_id) != _ID_LEN or not secret:
        return None
    return key_id, secret


def _principal(row: ApiKey) -> Principal:
    return Principal(
        key_id=row.key_id,
        tenant=row.tenant,
        app=row.app,
        models=frozenset(m for m in row.models.split(",") if m),
        scopes=frozenset(s for s in row.scopes.split(",") if s),
    )


def create_key(
    engine: Engine, *, tenant: str, app: str, models: Iterable[str], scopes: Iterable[str], name: str = ""
) -> tuple[str, ApiKey]:
    """Store a new key and return ``(plaintext, row)``; the plaintext is not kept anywhere."""
    scopes = sorted(set(scopes))
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ValueError(
            f"unknown scope(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(SCOPES))}"
        )
    if not tenant or not app:
        raise ValueError("tenant and app must not be empty")
    from sqlmodel import Session

    from gateway.store.db import ApiKey

    key_id, secret = secrets.token_hex(_ID_LEN // 2), secrets.token_urlsafe(32)
    row = ApiKey(
        key_id=key_id,
        secret_hash=_hash(secret),
        tenant=tenant,
        app=app,
        models=",".join(sorted(set(models))),
        scopes=",".join(scopes),
        name=name,
    )
    with Session(engine) as s:
        s.add(row)
        s.commit()
        s.refresh(row)
    return f"{PREFIX}{key_id}-{secret}", row


def list_keys(engine: Engine, tenant: str | None = None) -> list[ApiKey]:
    from sqlmodel import Session, col, select

    from gateway.store.db import ApiKey

    with Session(engine) as s:
        q = select(ApiKey).order_by(col(ApiKey.created_at))
        if tenant:
            q = q.where(ApiKey.tenant == tenant)
        return list(s.exec(q))


def get_key(engine: Engine, key_id: str) -> ApiKey | None:
    from sqlmodel import Session

    from gateway.store.db import ApiKey

    with Session(engine) as s:
        return s.get(ApiKey, key_id)


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Mark a key revoked; return False when no such active key exists."""
    from sqlmodel import Session

    from gateway.store.db import ApiKey, utcnow

    with Session(engine) as s:
        row = s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        s.add(row)
        s.commit()
    return True


class KeyStore:
    """Resolves bearer tokens to Principals with a per-worker cache."""

    def __init__(
        self,
        engine: Engine,
        refresh_s: float = 2.0,
        oidc: Callable[[str], Awaitable[Principal]] | None = None,
    ) -> None:
        self.engine = engine
        self.refresh_s = refresh_s
        self.oidc = oidc  # resolves a JWT access token (gateway.oidc.OidcVerifier.principal)
        self._cache: dict[str, tuple[str, Principal]] = {}
        self._negative: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def authenticate(self, authorization: str | None) -> Principal:
        """Return the Principal for an ``Authorization`` header value; raise 401 otherwise."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise GatewayError(401, "invalid_api_key", "Missing bearer API key in the Authorization header.")
        token = authorization[7:].strip()
        if self.oidc is not None and not token.startswith(PREFIX) and token.count(".") == 2:
            return await self.oidc(token)
        parts = _split(token)
        if parts is None:
            raise GatewayError(401, "invalid_api_key", "Invalid API key.")
        key_id, secret = parts
        entry = self._cache.get(key_id)
        if entry is None:
            entry = await self._load(key_id)
        if entry is None or not hmac.compare_digest(entry[0], _hash(secret)):
            raise GatewayError(401, "invalid_api_key", "Invalid API key.")
        return entry[1]

    async def _load(self, key_id: str) -> tuple[str, Principal] | None:
        # Unknown ids are remembered briefly so a flood of bad keys cannot hammer the database.
        now = time.monotonic()
        if self._negative.get(key_id, 0.0) > now:
            return None
        try:
            row = await asyncio.to_thread(self._fetch, key_id)
        except Exception as exc:  # the database is down: the caller may retry, it is not a gateway bug  # noqa: BLE001
            log.warning("key lookup failed", extra={"exc_type": type(exc).__name__})
            raise GatewayError(
                503,
                "key_store_unavailable",
                "API keys cannot be checked right now; retry shortly.",
                headers={"Retry-After": "5"},
            ) from None
        if row is None or row.revoked_at is not None:
            if len(self._negative) > 10_000:
                self._negative.clear()
            self._negative[key_id] = now + _NEGATIVE_TTL_S
            return None
        entry = (row.secret_hash, _principal(row))
        self._cache[key_id] = entry
        return entry

    def _fetch(self, key_id: str) -> ApiKey | None:
        from sqlmodel import Session

        from gateway.store.db import ApiKey

        with Session(self.engine) as s:
            return s.get(ApiKey, key_id)

    def _refresh_rows(self, key_ids: list[str]) -> dict[str, ApiKey]:
        from sqlmodel import Session, col, select

        from gateway.store.db import ApiKey

        with Session(self.engine) as s:
            rows = s.exec(select(ApiKey).where(col(ApiKey.key_id).in_(key_ids)))
            return {r.key_id: r for r in rows}

    async def refresh(self) -> None:
        """Re-read every cached key once; drop revoked or deleted ones."""
        ids = list(self._cache)
        if not ids:
            return
        rows = await asyncio.to_thread(self._refresh_rows, ids)
        for key_id in ids:
            row = rows.get(key_id)
            if row is None or row.revoked_at is not None:
                self._cache.pop(key_id, None)
            else:
                self._cache[key_id] = (row.secret_hash, _principal(row))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:  # the database may be briefly away; keep the last known state
                log.warning("key refresh failed", exc_info=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None
