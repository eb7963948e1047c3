"""Retention: each class of data is deleted once it is older than its period (``retention:`` in
config.yaml), by ``gateway retention run`` or on a schedule inside one elected worker.

- ``ledger``: usage ledger rows by ``at``;
- ``audit``: audit records by ``at``, oldest first within each chain. Before a chain's records are
  deleted, a checkpoint is written: the last deleted record's sequence number and hash and the count
  removed, signed under ``server.secret_key``; ``gateway audit verify`` then checks the chain from it;
- ``consent_history``: consents withdrawn or expired longer ago than the period (active ones stay);
- ``rag_chunks``: chunks by ingestion time, in every collection;
- ``spool``: the writer's spooled and quarantined row files (``*.jsonl``, ``*.bad``) by modification
  time; live write-ahead files are never touched.

Deletes go in batches of ``retention.batch_size`` rows by indexed columns, and each count is added
to ``gateway_retention_deleted_total{class}``. ``dry_run`` counts what would go and deletes nothing.
The schedule: every worker wakes every ``retention.interval``; the one that takes the ``job_locks``
lease runs the purge (one mechanism on SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, update
from sqlmodel import col

from gateway import metrics
from gateway.audit import CHECKPOINT, checkpoint_message
from gateway.config import Config
from gateway.identity import signer
from gateway.rag.runtime import open_existing_store
from gateway.store.db import AuditCheckpoint, AuditRecord, Consent, JobLock, utcnow
from gateway.store.ledger import UsageRecord
from gateway.store.rows import insert_ignoring_duplicates

log = logging.getLogger("gateway.retention")
LOCK = "retention"


async def purge(config: Config, engine: Engine, *, dry_run: bool = False) -> dict[str, int]:
    """Delete (or count, with ``dry_run``) what is past its period; returns the count per data class."""
    settings = config.retention
    now = utcnow()
    counts: dict[str, int] = {}
    for name, period in settings.periods().items():
        cutoff = now - period
        if name == "rag_chunks":
            counts[name] = await _rag(config, cutoff, dry_run)
        else:
            job = {"ledger": _ledger, "audit": _audit, "consent_history": _consents, "spool": _spool}[name]
            counts[name] = await asyncio.to_thread(job, config, engine, cutoff, dry_run)
        if not dry_run:
            metrics.RETENTION_DELETED.labels(name).inc(counts[name])
    return counts


def _batches(engine: Engine, key: Any, where: Any, batch: int) -> int:
    """Delete the rows matching ``where`` in batches of ``batch`` primary keys (``key``, a column)."""
    total = 0
    while True:
        with engine.begin() as conn:
            ids = conn.execute(select(key).where(where).limit(batch)).scalars().all()
            if not ids:
                return total
            total += conn.execute(delete(key.table).where(key.in_(ids))).rowcount


def _count(engine: Engine, key: Any, where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count(key)).where(where)).scalar_one())


def _rows(config: Config, engine: Engine, key: Any, where: Any, dry_run: bool) -> int:
    if dry_run:
        return _count(engine, key, where)
    return _batches(engine, key, where, config.retention.batch_size)


def _ledger(config: Config, engine: Engine, cutoff: datetime, dry_run: bool) -> int:
    return _rows(config, engine, col(UsageRecord.request_id), col(UsageRecord.at) < cutoff, dry_run)


def _consents(config: Config, engine: Engine, cutoff: datetime, dry_run: bool) -> int:
    where = or_(col(Consent.withdrawn_at) < cutoff, col(Consent.expires_at) < cutoff)
    return _rows(config, engine, col(Consent.id), where, dry_run)


def _audit(config: Config, engine: Engine, cutoff: datetime, dry_run: bool) -> int:
    """Per chain, the oldest records up to the first one that is still within the period."""
    sign = signer(config.server.secret_key, CHECKPOINT)
    chain_of, seq, at = col(AuditRecord.chain_id), col(AuditRecord.seq), col(AuditRecord.at)
    total = 0
    with engine.connect() as conn:
        chains = conn.execute(select(chain_of).where(at < cutoff).group_by(chain_of)).scalars().all()
    for chain in chains:
        in_chain = chain_of == chain
        with engine.connect() as conn:
            keep_from = conn.execute(select(func.min(seq)).where(in_chain, at >= cutoff)).scalar_one()
            last = select(seq, col(AuditRecord.hash)).where(in_chain)
            if keep_from is not None:
                last = last.where(seq < keep_from)
            row = conn.execute(last.order_by(seq.desc()).limit(1)).first()
            if row is None:
                continue
            n = int(conn.execute(select(func.count(seq)).where(in_chain, seq <= row.seq)).scalar_one())
            before = conn.execute(
                select(func.max(col(AuditCheckpoint.removed))).where(col(AuditCheckpoint.chain_id) == chain)
            ).scalar_one()
        total += n
        if dry_run or n == 0:
            continue
        removed = int(before or 0) + n
        checkpoint = {
            "id": secrets.token_hex(16),
            "chain_id": chain,
            "seq": row.seq,
            "hash": row.hash,
            "removed": removed,
            "at": utcnow(),
            "signature": sign(checkpoint_message(chain, row.seq, row.hash, removed)),
        }
        with engine.begin() as conn:  # the checkpoint first: a purge stopped halfway still verifies
            conn.execute(insert(AuditCheckpoint).values(**checkpoint))
        _batches(
            engine, col(AuditRecord.request_id), in_chain & (seq <= row.seq), config.retention.batch_size
        )
    return total


def _spool(config: Config, engine: Engine, cutoff: datetime, dry_run: bool) -> int:  # noqa: ARG001 (one signature)
    directory = Path(config.storage.spool_dir)
    limit = cutoff.timestamp()
    n = 0
    for pattern in ("*.jsonl", "*.bad"):
        for path in directory.glob(pattern) if directory.is_dir() else ():
            try:
                if path.stat().st_mtime < limit:
                    if not dry_run:
                        os.unlink(path)
                    n += 1
            except OSError:
                continue
    return n


async def _rag(config: Config, cutoff: datetime, dry_run: bool) -> int:
    store = await asyncio.to_thread(open_existing_store, config.rag)
    if store is None:
        return 0
    try:
        return await store.delete_ingested_before(cutoff.timestamp(), dry_run=dry_run)
    finally:
        await store.close()


# --- the schedule --------------------------------------------------------------------------------


def acquire(engine: Engine, holder: str, ttl: timedelta, name: str = LOCK) -> bool:
    """Take (or renew) the lease on ``name`` for ``ttl``; False while another holder's lease runs."""
    now = utcnow()
    with engine.begin() as conn:
        taken = conn.execute(
            update(JobLock)
            .where(
                col(JobLock.name) == name, or_(col(JobLock.expires_at) < now, col(JobLock.holder) == holder)
            )
            .values(holder=holder, expires_at=now + ttl)
        ).rowcount
        if taken:
            return True
        inserted = conn.execute(
            insert_ignoring_duplicates(JobLock.__table__, conn.dialect.name)  # type: ignore[attr-defined]
            .values(name=name, holder=holder, expires_at=now + ttl)
            .returning(col(JobLock.name))  # rowcount is -1 for an insert on psycopg: read what went in
        ).first()
        return inserted is not None


async def schedule(config: Config, engine: Engine, stop: asyncio.Event) -> None:
    """Every ``retention.interval``, run the purge if this worker holds the lease."""
    if not config.retention.periods():
        return
    interval = config.retention.interval
    holder = f"{os.getpid()}-{secrets.token_hex(4)}"
    while not stop.is_set():
        try:
            if await asyncio.to_thread(acquire, engine, holder, interval):
                started = time.monotonic()
                counts = await purge(config, engine)
                log.info("retention purge: %s in %.1f s", counts, time.monotonic() - started)
        except Exception as exc:  # the database may be away: the next round tries again  # noqa: BLE001
            log.warning("retention purge failed (%s)", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval.total_seconds())
