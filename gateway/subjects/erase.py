"""Erasure of one data subject of one tenant from every store (GDPR Art. 17), with a signed receipt.

    receipt = await erase(stores, tenant="acme", subject_id="alice@example.com", actor=("cli", "-"))

The layers, in order (each step is idempotent; the counts so far are kept in ``subject_erasures``,
so a job that was interrupted is resumed by running it again):

1. the job row is written first: every worker polls for it and empties its caches within 2 s
   (``gateway.forgetting``: PII results, prompt token counts, consent answers, subject keys);
2. consent rows: deleted;
3. usage ledger: the subject link removed from each row, the row (cost, tokens) kept;
4. audit trail: records are hash-chained, so they stay; their subject link is made under the
   subject's keys, and step 5 deletes the keys (crypto-shredding) - the chain still verifies;
   rows still in the writer's write-ahead and spool files are counted, and shredded the same way;
5. subject keys: deleted;
6. RAG chunks tagged with the subject: deleted from the embedded index or Weaviate;
7. after ``settle_s`` (workers have forgotten the subject, and saved any key a request made in the
   meantime) steps 2, 3 and 5 run again, and SQLite's write-ahead log is checkpointed;
8. the job's own audit record, then the receipt (counts per layer, times, the policy bundle's hash),
   signed with a key derived from ``server.secret_key``.

A subject of whom nothing is held (never seen, or already erased) is not an erasure: ``erase``
returns None and writes nothing.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlmodel import Session, select

from gateway.audit import Auditor
from gateway.config import Config
from gateway.identity import pseudonymiser, signer
from gateway.rag.base import VectorStore
from gateway.rag.runtime import open_existing_store
from gateway.store.db import SubjectErasure, utcnow
from gateway.store.subject_keys import delete_keys, links
from gateway.subjects import held
from gateway.subjects.receipt import KIND, sign

LAYERS = (
    "consents",
    "ledger_rows_unlinked",
    "audit_records_unlinked",
    "writer_file_rows_unlinked",
    "subject_keys_deleted",
    "rag_chunks",
)


@dataclass
class Stores:
    """Where one gateway configuration can hold a subject's data."""

    config: Config
    engine: Engine
    auditor: Auditor  # the job's own record goes into this chain
    bundle_hash: str
    # Run first, in a thread: e.g. the serving process saves the subject keys it made.
    before: Callable[[], Any] | None = None
    settle_s: float = 2.5  # > the workers' 1 s poll + their 0.5 s key saves

    def rag(self) -> VectorStore | None:
        return open_existing_store(self.config.rag)


def target(secret_key: str, tenant: str, pseudonym: str) -> str:
    """The job's handle for resuming (cleared when it finishes)."""
    return signer(secret_key, b"execai erasure job v1")(f"{tenant}\0{pseudonym}".encode())


async def erase(
    stores: Stores, *, tenant: str, subject_id: str, actor: tuple[str, str]
) -> dict[str, Any] | None:
    """Erase the subject; return the signed receipt, or None when nothing is held of it."""
    secret = stores.config.server.secret_key
    pseudonym = pseudonymiser(secret)(subject_id)
    engine = stores.engine
    if stores.before is not None:
        await asyncio.to_thread(stores.before)
    mark = target(secret, tenant, pseudonym)
    job = await asyncio.to_thread(_unfinished, engine, mark)
    rag = stores.rag()
    try:
        if job is None:
            if not await _holds(stores, rag, tenant, pseudonym):
                return None
            job = SubjectErasure(id=secrets.token_hex(16), tenant=tenant, target=mark, counts="{}")
            await asyncio.to_thread(_save, engine, job)  # workers start forgetting now
        counts: dict[str, int] = {name: 0 for name in LAYERS} | orjson.loads(job.counts)

        async def step(name: str, fn: Callable[..., int], *args: Any, measured: bool = False) -> None:
            n = await asyncio.to_thread(fn, *args)
            # A count of what is done adds up across resumed runs; a count of what is found (rows that
            # stay, now unlinked) is the largest seen: a resumed run finds none once the keys are gone.
            counts[name] = max(counts[name], n) if measured else counts[name] + n
            job.counts = orjson.dumps(counts).decode()
            await asyncio.to_thread(_save, engine, job)

        async def sweep() -> list[str]:
            await step("consents", held.delete_consents, engine, tenant, pseudonym)
            found = await asyncio.to_thread(links, engine, tenant, pseudonym)
            await step("ledger_rows_unlinked", held.unlink_ledger, engine, tenant, found)
            return found

        found = await sweep()
        await step("audit_records_unlinked", held.count_audit, engine, tenant, found, measured=True)
        spool = Path(stores.config.storage.spool_dir)
        await step("writer_file_rows_unlinked", held.writer_rows, spool, tenant, found, measured=True)
        await step("subject_keys_deleted", delete_keys, engine, tenant, pseudonym)
        if rag is not None:
            counts["rag_chunks"] += await rag.delete_by_subject(tenant, pseudonym)
            job.counts = orjson.dumps(counts).decode()
            await asyncio.to_thread(_save, engine, job)
        await asyncio.sleep(stores.settle_s)
        await sweep()
        await step("subject_keys_deleted", delete_keys, engine, tenant, pseudonym)
        await asyncio.to_thread(held.checkpoint, engine)
    finally:
        if rag is not None:
            await rag.close()
    finished = utcnow()
    app, key_id = actor
    stores.auditor.event(
        request_id=job.id,
        tenant=tenant,
        app=app,
        key_id=key_id,
        kind="erasure",
        facts=counts,
        bundle_hash=stores.bundle_hash,
    )
    receipt = sign(
        {
            "kind": KIND,
            "job_id": job.id,
            "tenant": tenant,
            "started_at": _iso(job.started_at),
            "finished_at": _iso(finished),
            "bundle_hash": stores.bundle_hash,
            "layers": counts,
            "caches": "every worker emptied its caches when the job started (polled every 1 s)",
        },
        secret,
    )
    job.finished_at, job.receipt, job.target = finished, orjson.dumps(receipt).decode(), None
    await asyncio.to_thread(_save, engine, job)
    return receipt


async def _holds(stores: Stores, rag: VectorStore | None, tenant: str, pseudonym: str) -> bool:
    engine = stores.engine

    def sql() -> bool:
        found = links(engine, tenant, pseudonym)
        return bool(
            held.consents(engine, tenant, pseudonym)
            or len(found) > 1  # keys exist
            or held.ledger(engine, tenant, found)
            or held.count_audit(engine, tenant, found)
        )

    if await asyncio.to_thread(sql):
        return True
    return rag is not None and bool(await rag.subject_sources(tenant, pseudonym))


def _unfinished(engine: Engine, mark: str) -> SubjectErasure | None:
    with Session(engine) as s:
        return s.exec(select(SubjectErasure).where(SubjectErasure.target == mark)).first()


def _save(engine: Engine, job: SubjectErasure) -> None:
    with Session(engine, expire_on_commit=False) as s:
        s.merge(job)
        s.commit()


def _iso(at: Any) -> str:
    return str(at.isoformat(timespec="seconds"))
