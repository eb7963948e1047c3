"""What the SQL stores and the writer's files hold of one data subject (by pseudonym and links), and
the statements that erase it. Every function is synchronous (run it in a thread) and idempotent."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, delete, func, update
from sqlmodel import Session, col, select

from gateway.store.db import AuditRecord, Consent
from gateway.store.ledger import UsageRecord
from gateway.store.subject_keys import keys_of

Linked = TypeVar("Linked", UsageRecord, AuditRecord)

# The writer's files: write-ahead segments, spooled and recovered rows, quarantined rows.
WRITER_FILES = ("*.wal", "*.jsonl", "*.replaying", "*.bad")


def consents(engine: Engine, tenant: str, pseudonym: str) -> list[Consent]:
    with Session(engine) as s:
        q = select(Consent).where(Consent.tenant == tenant, Consent.subject == pseudonym)
        return list(s.exec(q.order_by(col(Consent.granted_at))))


def delete_consents(engine: Engine, tenant: str, pseudonym: str) -> int:
    with engine.begin() as conn:
        stmt = delete(Consent).where(col(Consent.tenant) == tenant, col(Consent.subject) == pseudonym)
        return int(conn.execute(stmt).rowcount)


def _linked(engine: Engine, model: type[Linked], tenant: str, links: Sequence[str]) -> list[Linked]:
    """The tenant's rows of ``model`` whose subject is one of ``links``, oldest first."""
    with Session(engine) as s:
        q = select(model).where(col(model.tenant) == tenant, col(model.subject).in_(links))
        return list(s.exec(q.order_by(col(model.at))))


def ledger(engine: Engine, tenant: str, links: Sequence[str]) -> list[UsageRecord]:
    return _linked(engine, UsageRecord, tenant, links)


def unlink_ledger(engine: Engine, tenant: str, links: Sequence[str]) -> int:
    """The rows stay (cost and usage aggregates are kept); only their subject link is removed."""
    with engine.begin() as conn:
        stmt = (
            update(UsageRecord)
            .where(col(UsageRecord.tenant) == tenant, col(UsageRecord.subject).in_(links))
            .values(subject=None)
        )
        return int(conn.execute(stmt).rowcount)


def audit(engine: Engine, tenant: str, links: Sequence[str]) -> list[AuditRecord]:
    return _linked(engine, AuditRecord, tenant, links)


def count_audit(engine: Engine, tenant: str, links: Sequence[str]) -> int:
    with Session(engine) as s:
        q = select(func.count()).where(col(AuditRecord.tenant) == tenant, col(AuditRecord.subject).in_(links))
        return int(s.exec(q).one())


def count_keys(engine: Engine, tenant: str, pseudonym: str) -> int:
    return len(keys_of(engine, tenant, pseudonym))


def writer_rows(spool_dir: Path, tenant: str, links: Sequence[str]) -> int:
    """Rows in the writer's files (not yet in SQL) whose subject is one of ``links``: once the keys are
    deleted, these can no longer be tied to the subject either, wherever they end up."""
    wanted = set(links)
    n = 0
    for pattern in WRITER_FILES:
        for path in spool_dir.glob(pattern) if spool_dir.is_dir() else ():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for line in data.splitlines():
                if not any(link.encode() in line for link in wanted):
                    continue
                row = _row(line)
                if row.get("tenant") == tenant and row.get("subject") in wanted:
                    n += 1
    return n


def _row(line: bytes) -> dict[str, Any]:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    row = item.get("row") if isinstance(item, dict) else None
    return row if isinstance(row, dict) else {}


def checkpoint(engine: Engine) -> None:
    """SQLite: fold the write-ahead log into the file and truncate it, so no old page image keeps an
    erased row (``secure_delete`` zeroed it in the file itself). Nothing to do on PostgreSQL, whose dead
    row versions are out of every query's reach and reclaimed by VACUUM."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
