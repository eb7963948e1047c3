"""Audit trail: one hash-chained decision record per request.

Each gateway process keeps its own chain (``chain_id``): record n stores the hash of record
n-1, and its own hash covers every field. ``verify`` recomputes the hashes and checks that
sequence numbers have no gaps, so a modified or deleted record is detected (a chain's newest
records can only be checked against the records written after them).

Records hold identifiers, counts and entity types; never prompt text or PII values. They are
written off the hot path by the batched writer.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.orm import configure_mappers
from sqlmodel import Session, col, select

from gateway.policy import Context
from gateway.store.db import AuditRecord, utcnow

GENESIS = "0" * 64
_HASHED = ("request_id", "chain_id", "seq", "at", "tenant", "app", "key_id", "subject", "model", "endpoint",
           "policy_hash", "decisions", "attempts", "deployment", "jurisdiction", "fallback", "consent_ref",
           "status", "prev_hash")


def _digest(values: dict[str, Any]) -> str:
    fields = {name: values[name] for name in _HASHED}
    at = fields["at"]
    if at.tzinfo is not None:  # Postgres answers in the session's time zone; SQLite naive UTC
        at = at.astimezone(UTC).replace(tzinfo=None)
    fields["at"] = at.isoformat(timespec="microseconds")
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Auditor:
    def __init__(self, writer: Any) -> None:
        configure_mappers()  # rows are built with model_construct, which needs the mapped class ready
        self.writer = writer
        self.chain_id = uuid.uuid4().hex
        self.seq = 0
        self.prev = GENESIS

    def build(self, ctx: Context) -> AuditRecord:
        """Make the next record of this process's chain for a finished request."""
        self.seq += 1
        target = ctx.target
        fields: dict[str, Any] = dict(
            request_id=ctx.request_id, chain_id=self.chain_id, seq=self.seq, at=utcnow(),
            tenant=ctx.principal.tenant, app=ctx.principal.app, key_id=ctx.principal.key_id,
            subject=ctx.subject, model=ctx.model, endpoint=ctx.endpoint, policy_hash=ctx.bundle_hash,
            decisions=orjson.dumps([{"policy": d.policy, "action": d.action, "facts": d.facts}
                                    for d in ctx.decisions], default=str).decode(),
            attempts=orjson.dumps(ctx.attempts).decode(),
            deployment=target.name if target else None,
            jurisdiction=target.jurisdiction if target else None,
            fallback=ctx.fallback_reason,
            consent_ref=ctx.consents.get(target.name) if target else None,
            status=ctx.status, prev_hash=self.prev,
        )
        # model_construct: every field is ours and typed; validation would cost ~40 µs per request.
        row = AuditRecord.model_construct(**fields, hash=_digest(fields))
        self.prev = row.hash
        return row

    def record(self, ctx: Context) -> None:
        self.writer.put(self.build(ctx))


def fetch(engine: Engine, request_id: str) -> AuditRecord | None:
    with Session(engine) as s:
        return s.get(AuditRecord, request_id)


def verify(engine: Engine) -> tuple[int, list[str]]:
    """Check every chain; return (records checked, problems)."""
    problems: list[str] = []
    checked = 0
    with Session(engine) as s:
        rows = s.exec(select(AuditRecord).order_by(col(AuditRecord.chain_id), col(AuditRecord.seq)))
        chain, expected_seq, prev = None, 1, GENESIS
        for row in rows:
            checked += 1
            if row.chain_id != chain:
                chain, expected_seq, prev = row.chain_id, 1, GENESIS
            if row.seq != expected_seq:
                problems.append(f"chain {row.chain_id}: records {expected_seq}..{row.seq - 1} are missing")
            elif row.prev_hash != prev:
                problems.append(f"chain {row.chain_id} seq {row.seq}: link to the previous record is broken")
            if _digest(row.model_dump()) != row.hash:
                problems.append(f"chain {row.chain_id} seq {row.seq} (request {row.request_id}): record was modified")
            expected_seq, prev = row.seq + 1, row.hash
    return checked, problems
