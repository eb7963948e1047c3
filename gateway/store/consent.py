"""Consent registry: explicit, purpose-bound consents of data subjects, by pseudonym.

Writes (grant, withdraw) go straight to SQL; the request path asks ``ConsentRegistry.active``,
which caches each answer for ``ttl_s`` seconds (default 2), so a withdrawal stops new DPA
fallbacks in every worker within that time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gateway import forgetting

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.store.db import Consent

# SQLModel and the table models are imported where they are used: ``ConsentRef`` is needed by
# `gateway policy test`, which never opens a database.


def __getattr__(name: str) -> object:
    # ``consent.Consent`` (the admin API's response annotations), imported on first use.
    if name == "Consent":
        from gateway.store.db import Consent

        return Consent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class ConsentRef:
    id: str
    purpose: str
    expires_at: datetime | None


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written as UTC.
    from gateway.store.db import utcnow

    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=utcnow().tzinfo)
    return value


def grant(
    engine: Engine,
    *,
    tenant: str,
    subject: str,
    purpose: str,
    evidence_ref: str = "",
    expires_in: timedelta | None = None,
) -> Consent:
    """Record a consent; ``subject`` is already a pseudonym."""
    from sqlmodel import Session

    from gateway.store.db import Consent, utcnow

    row = Consent(
        id=secrets.token_hex(8),
        tenant=tenant,
        subject=subject,
        purpose=purpose,
        evidence_ref=evidence_ref,
        expires_at=(utcnow() + expires_in) if expires_in else None,
    )
    with Session(engine) as s:
        s.add(row)
        s.commit()
        s.refresh(row)
    return row


def withdraw(engine: Engine, *, tenant: str, subject: str, purpose: str) -> int:
    """Withdraw every active consent of the subject for the purpose; return how many."""
    from sqlmodel import Session, col, select

    from gateway.store.db import Consent, utcnow

    now = utcnow()
    with Session(engine) as s:
        rows = list(
            s.exec(
                select(Consent).where(
                    Consent.tenant == tenant,
                    Consent.subject == subject,
                    Consent.purpose == purpose,
                    col(Consent.withdrawn_at).is_(None),
                )
            )
        )
        for row in rows:
            row.withdrawn_at = now
            s.add(row)
        s.commit()
    return len(rows)


def list_consents(engine: Engine, *, tenant: str | None = None, subject: str | None = None) -> list[Consent]:
    from sqlmodel import Session, col, select

    from gateway.store.db import Consent

    with Session(engine) as s:
        q = select(Consent).order_by(col(Consent.granted_at))
        if tenant:
            q = q.where(Consent.tenant == tenant)
        if subject:
            q = q.where(Consent.subject == subject)
        return list(s.exec(q))


def find_active(engine: Engine, tenant: str, subject: str, purpose: str) -> ConsentRef | None:
    from sqlmodel import Session, col, select

    from gateway.store.db import Consent, utcnow

    now = utcnow()
    with Session(engine) as s:
        for row in s.exec(
            select(Consent).where(
                Consent.tenant == tenant,
                Consent.subject == subject,
                Consent.purpose == purpose,
                col(Consent.withdrawn_at).is_(None),
            )
        ):
            expires = _aware(row.expires_at)
            if expires is None or expires > now:
                return ConsentRef(row.id, row.purpose, expires)
    return None


class ConsentRegistry:
    """Cached read side of the registry, used on the request path."""

    def __init__(self, engine: Engine, ttl_s: float = 2.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str, str], tuple[float, ConsentRef | None]] = {}
        forgetting.register(self)

    def forget(self) -> None:
        """Drop every cached answer (keyed by subject pseudonyms): a subject was erased."""
        self._cache.clear()

    async def active(self, tenant: str, subject: str, purpose: str) -> ConsentRef | None:
        """The subject's active consent for ``purpose``, or None. Raises if SQL is unreachable."""
        key = (tenant, subject, purpose)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            ref = hit[1]
        else:
            ref = await asyncio.to_thread(find_active, self.engine, tenant, subject, purpose)
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[key] = (now + self.ttl_s, ref)
        from gateway.store.db import utcnow

        if ref is not None and ref.expires_at is not None and ref.expires_at <= utcnow():
            return None
        return ref
