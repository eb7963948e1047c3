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
import hmac
import uuid
from datetime import UTC
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.orm import configure_mappers
from sqlmodel import Session, col, select

from gateway.identity import signer
from gateway.policy import Context
from gateway.store.db import AuditChainMark, AuditCheckpoint, AuditRecord, utcnow

GENESIS = "0" * 64
_HASHED = (
    "request_id",
    "chain_id",
    "seq",
    "at",
    "tenant",
    "app",
    "key_id",
    "subject",
    "model",
    "endpoint",
    "policy_hash",
    "decisions",
    "attempts",
    "deployment",
    "jurisdiction",
    "fallback",
    "consent_ref",
    "status",
    "prev_hash",
)


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
            request_id=ctx.request_id,
            chain_id=self.chain_id,
            seq=self.seq,
            at=utcnow(),
            tenant=ctx.principal.tenant,
            app=ctx.principal.app,
            key_id=ctx.principal.key_id,
            subject=ctx.subject_link,
            model=ctx.model,
            endpoint=ctx.route,
            policy_hash=ctx.bundle_hash,
            decisions=orjson.dumps(
                [{"policy": d.policy, "action": d.action, "facts": d.facts} for d in ctx.decisions],
                default=str,
            ).decode(),
            attempts=orjson.dumps(ctx.attempts).decode(),
            deployment=target.name if target else None,
            jurisdiction=target.jurisdiction if target else None,
            fallback=ctx.fallback_reason,
            consent_ref=ctx.consents.get(target.name) if target else None,
            status=ctx.status,
            prev_hash=self.prev,
        )
        return self._chained(fields)

    def _chained(self, fields: dict[str, Any]) -> AuditRecord:
        # model_construct: every field is ours and typed; validation would cost ~40 µs per request.
        row = AuditRecord.model_construct(**fields, hash=_digest(fields))
        self.prev = row.hash
        return row

    def event(
        self,
        *,
        request_id: str,
        tenant: str,
        app: str,
        key_id: str,
        kind: str,
        facts: dict[str, Any],
        bundle_hash: str,
    ) -> AuditRecord:
        """Record an operation that is not a proxied request (``kind``, e.g. ``erasure``) in this chain."""
        self.seq += 1
        row = self._chained(
            dict(
                request_id=request_id,
                chain_id=self.chain_id,
                seq=self.seq,
                at=utcnow(),
                tenant=tenant,
                app=app,
                key_id=key_id,
                subject=None,
                model="-",
                endpoint=kind,
                policy_hash=bundle_hash,
                decisions=orjson.dumps(
                    [{"policy": kind, "action": "done", "facts": facts}], default=str
                ).decode(),
                attempts="[]",
                deployment=None,
                jurisdiction=None,
                fallback=None,
                consent_ref=None,
                status=200,
                prev_hash=self.prev,
            )
        )
        self.writer.put(row)
        return row

    def record(self, ctx: Context) -> None:
        self.writer.put(self.build(ctx))

    def start(self) -> None:
        """Mark where this process's chain begins (verify then knows the chain exists even if empty)."""
        self.writer.put(AuditChainMark(chain_id=self.chain_id, kind="start", seq=0, at=utcnow()))

    def close(self) -> None:
        """Mark the chain's last record at a clean stop: verify reports any record up to it that is missing."""
        self.writer.put(AuditChainMark(chain_id=self.chain_id, kind="end", seq=self.seq, at=utcnow()))

    @staticmethod
    def recovered_marks(items: list[dict[str, Any]]) -> list[AuditChainMark]:
        """End marks for the chains of a killed process, from the write-ahead file it left: the newest
        record of each chain in that file is the last one the process made."""
        last: dict[str, int] = {}
        for item in items:
            row = item.get("row")
            if item.get("table") == AuditRecord.__tablename__ and isinstance(row, dict):
                chain, seq = row.get("chain_id"), row.get("seq")
                if isinstance(chain, str) and isinstance(seq, int) and seq > last.get(chain, 0):
                    last[chain] = seq
        return [AuditChainMark(chain_id=c, kind="recovered", seq=n, at=utcnow()) for c, n in last.items()]


def fetch(engine: Engine, request_id: str) -> AuditRecord | None:
    with Session(engine) as s:
        return s.get(AuditRecord, request_id)


CHECKPOINT = b"execai audit checkpoint v1"


def checkpoint_message(chain_id: str, seq: int, hash_: str, removed: int) -> bytes:
    return f"{chain_id}\0{seq}\0{hash_}\0{removed}".encode()


def _starts(s: Session, secret_key: str | None, problems: list[str]) -> dict[str, tuple[int, str]]:
    """Per chain, where retention left it: (last deleted seq, its hash), from the newest checkpoint whose
    signature holds. A checkpoint with a wrong signature is a problem, and is not used."""
    sign = signer(secret_key, CHECKPOINT) if secret_key is not None else None
    starts: dict[str, tuple[int, str]] = {}
    for cp in s.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.seq))):
        if sign is not None and not hmac.compare_digest(
            sign(checkpoint_message(cp.chain_id, cp.seq, cp.hash, cp.removed)), cp.signature
        ):
            problems.append(f"chain {cp.chain_id}: the checkpoint at seq {cp.seq} was modified")
            continue
        starts[cp.chain_id] = (cp.seq, cp.hash)
    return starts


def verify(engine: Engine, secret_key: str | None = None) -> tuple[int, list[str]]:
    """Check every chain; return (records checked, problems).

    Within a chain, sequence numbers must run 1, 2, 3... with no gap, each record must link to the
    previous one and hash to its stored hash. A chain whose process stopped cleanly (an ``end``
    mark) or whose write-ahead file was recovered after a kill (``recovered``) must also reach
    the marked sequence number: a lost tail is then reported too. A chain whose oldest records
    retention deleted starts after its checkpoint (seq and hash of the last deleted record), whose
    signature is checked under ``secret_key`` when it is given (``gateway audit verify`` gives it).
    """
    problems: list[str] = []
    checked = 0
    with Session(engine) as s:
        starts = _starts(s, secret_key, problems)
        marks: dict[str, int] = {}
        for mark in s.exec(select(AuditChainMark).where(col(AuditChainMark.kind) != "start")):
            marks[mark.chain_id] = max(marks.get(mark.chain_id, 0), mark.seq)
        rows = s.exec(select(AuditRecord).order_by(col(AuditRecord.chain_id), col(AuditRecord.seq)))
        chain: str | None = None
        expected_seq, prev = 1, GENESIS
        seen: set[str] = set()

        def tail(chain: str, last: int) -> None:
            end = marks.get(chain, 0)
            if end > last:
                problems.append(f"chain {chain}: records {last + 1}..{end} are missing (end of chain)")

        for row in rows:
            if row.seq <= starts.get(row.chain_id, (0, ""))[0]:
                continue  # before the checkpoint: a purge that was interrupted; the next one deletes it
            checked += 1
            if row.chain_id != chain:
                if chain is not None:
                    tail(chain, expected_seq - 1)
                start, prev = starts.get(row.chain_id, (0, GENESIS))
                chain, expected_seq = row.chain_id, start + 1
                seen.add(chain)
            if row.seq != expected_seq:
                problems.append(f"chain {row.chain_id}: records {expected_seq}..{row.seq - 1} are missing")
            elif row.prev_hash != prev:
                problems.append(f"chain {row.chain_id} seq {row.seq}: link to the previous record is broken")
            if _digest(row.model_dump()) != row.hash:
                problems.append(
                    f"chain {row.chain_id} seq {row.seq} (request {row.request_id}): record was modified"
                )
            expected_seq, prev = row.seq + 1, row.hash
        if chain is not None:
            tail(chain, expected_seq - 1)
        for lost in sorted(set(marks) - seen):
            tail(lost, starts.get(lost, (0, ""))[0])
    return checked, problems


def open_chains(engine: Engine) -> list[tuple[str, int]]:
    """Chains with a start mark and no end: their process is running, or was killed and its write-ahead
    file not yet recovered. Their newest records cannot be checked yet. Returns (chain, last stored seq)."""
    with Session(engine) as s:
        kinds: dict[str, set[str]] = {}
        for mark in s.exec(select(AuditChainMark)):
            kinds.setdefault(mark.chain_id, set()).add(mark.kind)
        started = sorted(c for c, k in kinds.items() if k == {"start"})
        out = []
        for c in started:
            last = s.exec(
                select(AuditRecord.seq)
                .where(AuditRecord.chain_id == c)
                .order_by(col(AuditRecord.seq).desc())
                .limit(1)
            ).first()
            out.append((c, last or 0))
    return out
