"""Per-subject keys: what the ledger and the audit trail store instead of a subject's pseudonym.

A request that names a data subject is recorded with ``link(key, pseudonym)``, an HMAC under a
random key kept for that (tenant, subject) in ``subject_keys``. Erasure deletes the keys: the
ledger rows and the hash-chained audit records keep their links, but nothing can tie them to the
subject any more (crypto-shredding), and the audit chain still verifies.

Each worker makes a key the first time it sees a subject and saves it in the background, so the
request path never waits on SQL; a subject seen by several workers (or across restarts) has several
keys, and export and erasure use them all. A key that could not be saved before its process died
leaves rows nobody can link: the failure errs on the side of the subject.

``watch`` also polls the erasure log once a second; when an erasure starts, the worker empties its
key cache and every other cache registered with ``gateway.forgetting``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway import forgetting

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.store.db import SubjectKey

log = logging.getLogger("gateway.subjects")

POLL_S = 1.0  # how often a worker looks for new erasures (the promise is 2 s)
SAVE_S = 0.5  # how often new keys are saved


def link(key: bytes, pseudonym: str) -> str:
    """What the ledger and the audit trail store for a subject under one of its keys."""
    return hmac.new(key, pseudonym.encode(), hashlib.sha256).hexdigest()[:32]


def links(engine: Engine, tenant: str, pseudonym: str) -> list[str]:
    """Every link the subject's saved keys give, plus the pseudonym itself (rows written before the
    keys existed held it)."""
    return [link(bytes.fromhex(k.key), pseudonym) for k in keys_of(engine, tenant, pseudonym)] + [pseudonym]


def keys_of(engine: Engine, tenant: str, pseudonym: str) -> list[SubjectKey]:
    from sqlmodel import Session, select

    from gateway.store.db import SubjectKey

    with Session(engine) as s:
        return list(
            s.exec(select(SubjectKey).where(SubjectKey.tenant == tenant, SubjectKey.subject == pseudonym))
        )


def delete_keys(engine: Engine, tenant: str, pseudonym: str) -> int:
    from sqlalchemy import delete
    from sqlmodel import col

    from gateway.store.db import SubjectKey

    with engine.begin() as conn:
        stmt = delete(SubjectKey).where(
            col(SubjectKey.tenant) == tenant, col(SubjectKey.subject) == pseudonym
        )
        return int(conn.execute(stmt).rowcount)


def erasures_started(engine: Engine) -> int:
    from sqlalchemy import func
    from sqlmodel import Session, select

    from gateway.store.db import SubjectErasure

    with Session(engine) as s:
        return int(s.exec(select(func.count()).select_from(SubjectErasure)).one())


class SubjectKeys:
    """One worker's keys (``link``), saved in the background; emptied when a subject is erased."""

    def __init__(self, engine: Engine, max_keys: int = 100_000) -> None:
        self.engine = engine
        self.max_keys = max_keys
        self._keys: dict[tuple[str, str], bytes] = {}
        self._unsaved: list[SubjectKey] = []
        self._erasures: int | None = None
        forgetting.register(self)

    def link(self, tenant: str, pseudonym: str) -> str:
        """The subject's link in this worker (a new key the first time it sees the subject)."""
        key = self._keys.get((tenant, pseudonym))
        if key is None:
            if len(self._keys) >= self.max_keys:
                self._keys.clear()  # saved keys stay valid; the next requests make new ones
            key = self._keys[(tenant, pseudonym)] = secrets.token_bytes(32)
            from gateway.store.db import SubjectKey, utcnow

            self._unsaved.append(
                SubjectKey(
                    id=secrets.token_hex(16),
                    tenant=tenant,
                    subject=pseudonym,
                    key=key.hex(),
                    created_at=utcnow(),
                )
            )
        return link(key, pseudonym)

    def forget(self) -> None:
        self._keys.clear()

    def save(self) -> int:
        """Save the keys made since the last call (synchronous); on failure they are kept for the next."""
        rows, self._unsaved = self._unsaved, []
        if not rows:
            return 0
        try:
            _insert(self.engine, rows)
        except Exception:
            self._unsaved = rows + self._unsaved
            raise
        return len(rows)

    def erasure_seen(self, started: int) -> bool:
        """Note how many erasures have started; True when one started since the last call (then forget
        everything: call it on the event loop's thread, where the caches are used)."""
        seen, self._erasures = self._erasures, started
        if seen is not None and started != seen:
            forgetting.forget_all()
            return True
        return False

    async def watch(self, stop: asyncio.Event) -> None:
        """Save new keys every ``SAVE_S`` and look for erasures every ``POLL_S`` until ``stop`` is set."""
        ticks = 0
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.save)
                if ticks % round(POLL_S / SAVE_S) == 0:
                    self.erasure_seen(await asyncio.to_thread(erasures_started, self.engine))
            except Exception as exc:  # the database may be briefly away: try again  # noqa: BLE001
                log.warning("subject keys: %s; retrying", type(exc).__name__)
            ticks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAVE_S)
        await asyncio.to_thread(self._save_quietly)

    def _save_quietly(self) -> None:
        try:
            self.save()
        except Exception as exc:  # noqa: BLE001
            log.warning("subject keys could not be saved at stop (%s)", type(exc).__name__)


def _insert(engine: Engine, rows: Iterable[SubjectKey]) -> None:
    from sqlalchemy import insert

    from gateway.store.db import SubjectKey

    values = [r.model_dump() for r in rows]
    with engine.begin() as conn:
        conn.execute(insert(SubjectKey), values)
