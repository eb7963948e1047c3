"""``audit.verify`` reports every kind of tampering, on SQLite and on PostgreSQL.

A chain of four records (with its start and end marks) is written the way the gateway writes
it (``Auditor`` rows through the batched writer's insert), then changed in SQL: every hashed
field of a record one at a time, the stored hash, ``prev_hash`` (with and without a recomputed
record hash, as a forger who knows the unkeyed hash function would do), the first, a middle and
the last record deleted, and two records' sequence numbers swapped. Each must be reported.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, update
from sqlmodel import Session, col, select

from gateway import audit
from gateway.auth import Principal
from gateway.config import Deployment
from gateway.policy import Context, Target
from gateway.store.db import AuditChainMark, AuditRecord, make_engine, upgrade
from gateway.store.writer import Writer

RECORDS = 4
US = Target(
    "us-gpt4",
    Deployment(
        kind="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        model="gpt-4o",
        jurisdiction="US",
        region="us-east",
    ),
)
# A changed value for every hashed field, valid for its column; "chain_id" and "request_id" get fresh ids.
TAMPERED: dict[str, Any] = {
    "tenant": "evil",
    "app": "other",
    "key_id": "k" * 32,
    "subject": "someone-else",
    "model": "gpt-4o",
    "endpoint": "embeddings",
    "policy_hash": "0" * 16,
    "decisions": "[]",
    "attempts": '[["eu-primary", "ok"]]',
    "deployment": "eu-primary",
    "jurisdiction": "EU",
    "fallback": None,
    "consent_ref": None,
    "status": 403,
    "prev_hash": "f" * 64,
}


# Every column but the hash itself must be covered by it; taken from the table, not from audit._HASHED,
# so a field dropped from the hash (or a column added without it) fails here.
FIELDS = tuple(c.name for c in AuditRecord.__table__.columns if c.name != "hash")  # type: ignore[attr-defined]


def test_the_hash_covers_every_column() -> None:
    assert set(audit._HASHED) == set(FIELDS) == {*TAMPERED, "request_id", "chain_id", "seq", "at"}


class _Sink:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def put(self, row: Any) -> None:
        self.rows.append(row)


@pytest.fixture
def chain(engine: Engine, tmp_path: Path) -> str:
    """A closed chain of RECORDS records, every field set, written through the writer's insert path."""
    sink = _Sink()
    auditor = audit.Auditor(writer=sink)
    auditor.start()
    for i in range(RECORDS):
        ctx = Context(
            principal=Principal("k1", "acme", "chat", frozenset(), frozenset()),
            endpoint="chat",
            model="mistral-7b",
            candidates=[US],
            subject=f"subject-{i}",
        )
        ctx.bundle_hash = "a" * 16
        ctx.record("residency", "allow", allowed=["EU"])
        ctx.record("consent_fallback", "fallback", target="us-gpt4")
        ctx.record("pii_redaction", "floor_redact", entities={"EMAIL_ADDRESS": 1})
        ctx.attempts = [("eu-primary", "503"), ("us-gpt4", "ok")]
        ctx.target, ctx.fallback_reason, ctx.consents = US, "upstream_5xx", {"us-gpt4": f"consent-{i}"}
        ctx.status = 200
        auditor.record(ctx)
    auditor.close()
    Writer(engine, tmp_path / "spool")._write(sink.rows)
    assert problems(engine, auditor.chain_id) == []
    return auditor.chain_id


def problems(engine: Engine, *chains: str) -> list[str]:
    """What verify reports about these chains (a shared database may hold other tests' chains)."""
    _, found = audit.verify(engine)
    return [p for p in found if any(c in p for c in chains)]


def record(engine: Engine, chain: str, seq: int) -> AuditRecord:
    with Session(engine) as s:
        row = s.exec(select(AuditRecord).where(AuditRecord.chain_id == chain, AuditRecord.seq == seq)).one()
        s.expunge(row)
        return row


def change(engine: Engine, chain: str, at: int, values: dict[str, Any], rehash: bool = False) -> None:
    """Change the stored record ``at`` that seq; with ``rehash`` also store the hash of its new content."""
    if rehash:
        values = {**values, "hash": audit._digest({**record(engine, chain, at).model_dump(), **values})}
    with engine.begin() as conn:
        conn.execute(
            update(AuditRecord)
            .where(col(AuditRecord.chain_id) == chain, col(AuditRecord.seq) == at)
            .values(**values)
        )


def tampered(engine: Engine, chain: str, seq: int, name: str) -> dict[str, Any]:
    if name in ("request_id", "chain_id"):
        return {name: uuid.uuid4().hex}
    if name == "seq":
        return {"seq": seq + 10}
    if name == "at":
        return {"at": record(engine, chain, seq).at + timedelta(seconds=1)}
    return {name: TAMPERED[name]}


@pytest.mark.parametrize("seq", [2, RECORDS], ids=["middle", "last"])
@pytest.mark.parametrize("name", FIELDS)
def test_a_change_to_any_hashed_field_is_reported(engine: Engine, chain: str, name: str, seq: int) -> None:
    values = tampered(engine, chain, seq, name)
    change(engine, chain, seq, values)
    assert problems(engine, chain, str(values.get("chain_id", chain))), f"{name} changed unnoticed"


def test_a_changed_stored_hash_is_reported(engine: Engine, chain: str) -> None:
    change(engine, chain, RECORDS, {"hash": "e" * 64})
    assert any("was modified" in p for p in problems(engine, chain))


@pytest.mark.parametrize("seq", [1, 2, 3])
def test_a_rewritten_prev_hash_is_reported(engine: Engine, chain: str, seq: int) -> None:
    change(engine, chain, seq, {"prev_hash": "f" * 64})
    assert any(f"seq {seq}" in p for p in problems(engine, chain))


@pytest.mark.parametrize("seq", [1, 2, 3])
def test_a_rewritten_prev_hash_with_a_recomputed_hash_breaks_the_link(
    engine: Engine, chain: str, seq: int
) -> None:
    # The record is self-consistent again: only the link from it to the record before catches it.
    change(engine, chain, seq, {"prev_hash": record(engine, chain, seq).hash[::-1]}, rehash=True)
    assert any(f"seq {seq}: link to the previous record is broken" in p for p in problems(engine, chain))


@pytest.mark.parametrize("name", ["decisions", "status", "consent_ref", "jurisdiction"])
def test_a_forged_record_with_a_recomputed_hash_breaks_the_next_records_link(
    engine: Engine, chain: str, name: str
) -> None:
    change(engine, chain, 2, tampered(engine, chain, 2, name), rehash=True)
    assert any("seq 3: link to the previous record is broken" in p for p in problems(engine, chain))


@pytest.mark.parametrize("seq", [1, 2, RECORDS], ids=["first", "middle", "last"])
def test_a_deleted_record_is_reported(engine: Engine, chain: str, seq: int) -> None:
    with engine.begin() as conn:
        conn.execute(delete(AuditRecord).where(AuditRecord.chain_id == chain, AuditRecord.seq == seq))  # type: ignore[arg-type]
    found = problems(engine, chain)
    expected = f"records {seq}..{seq} are missing" + (" (end of chain)" if seq == RECORDS else "")
    assert any(expected in p for p in found), found


def test_a_deleted_tail_of_several_records_is_reported(engine: Engine, chain: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(AuditRecord).where(AuditRecord.chain_id == chain, AuditRecord.seq >= 3))  # type: ignore[arg-type]
    assert any(f"records 3..{RECORDS} are missing (end of chain)" in p for p in problems(engine, chain))


def test_every_record_deleted_is_reported(engine: Engine, chain: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(AuditRecord).where(AuditRecord.chain_id == chain))  # type: ignore[arg-type]
    assert any(f"records 1..{RECORDS} are missing (end of chain)" in p for p in problems(engine, chain))


@pytest.mark.parametrize("pair", [(1, 2), (2, 3), (3, RECORDS), (1, RECORDS)])
def test_swapped_records_are_reported(engine: Engine, chain: str, pair: tuple[int, int]) -> None:
    a, b = pair
    change(engine, chain, a, {"seq": -1})
    change(engine, chain, b, {"seq": a})
    change(engine, chain, -1, {"seq": b})
    found = problems(engine, chain)
    assert any(f"seq {a}" in p for p in found), found
    assert any(f"seq {b}" in p for p in found), found


@pytest.mark.parametrize("pair", [(1, 2), (2, 3), (3, RECORDS)])
def test_swapped_records_with_recomputed_hashes_are_reported(
    engine: Engine, chain: str, pair: tuple[int, int]
) -> None:
    # Each moved record re-hashed with its new seq: its content is consistent, its link is not.
    a, b = pair
    change(engine, chain, a, {"seq": -1})
    change(engine, chain, b, {"seq": a}, rehash=True)
    change(engine, chain, -1, {"seq": b}, rehash=True)
    assert any("link to the previous record is broken" in p for p in problems(engine, chain))


# --- what a record holds, and the marks around a chain ------------------------------------------


def finished_request(target: Target | None, status: int = 200) -> Context:
    ctx = Context(
        principal=Principal("k9", "acme", "chat", frozenset(), frozenset()),
        endpoint="chat",
        model="mistral-7b",
        candidates=[US],
        subject="pseudo-1",
        subject_link="link-1",
    )
    ctx.bundle_hash = "b" * 16
    ctx.record("residency", "deny", allowed=["EU"])
    ctx.record("token_accounting", "charge", cost_eur=Decimal("0.0012"))  # not JSON by itself: kept as text
    ctx.attempts = [("us-gpt4", "ok")]
    ctx.target, ctx.consents, ctx.status = target, {"us-gpt4": "consent-7", "other": "consent-8"}, status
    return ctx


def test_records_chain_in_order_and_hold_the_request_not_its_text() -> None:
    sink = _Sink()
    auditor = audit.Auditor(writer=sink)
    auditor.record(finished_request(US))
    auditor.record(finished_request(None, status=403))
    first, second = sink.rows
    assert (first.chain_id, first.seq, first.prev_hash) == (auditor.chain_id, 1, audit.GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert auditor.prev == second.hash
    assert auditor.seq == 2
    assert first.hash == audit._digest(first.model_dump())
    assert second.hash == audit._digest(second.model_dump())
    assert (first.tenant, first.app, first.key_id, first.subject, first.model, first.endpoint) == (
        "acme",
        "chat",
        "k9",
        "link-1",  # the link under the subject's key, never the pseudonym
        "mistral-7b",
        "chat",
    )
    assert (first.policy_hash, first.status) == ("b" * 16, 200)
    assert first.decisions == (
        '[{"policy":"residency","action":"deny","facts":{"allowed":["EU"]}},'
        '{"policy":"token_accounting","action":"charge","facts":{"cost_eur":"0.0012"}}]'
    )
    assert first.attempts == '[["us-gpt4","ok"]]'
    assert (first.deployment, first.jurisdiction, first.consent_ref) == ("us-gpt4", "US", "consent-7")
    assert (second.deployment, second.jurisdiction, second.consent_ref, second.status) == (
        None,
        None,
        None,
        403,
    )
    assert len({first.request_id, second.request_id}) == 2


def test_a_new_auditor_starts_a_new_chain_with_start_and_end_marks() -> None:
    sink = _Sink()
    one, two = audit.Auditor(writer=sink), audit.Auditor(writer=sink)
    assert one.chain_id != two.chain_id
    assert len(one.chain_id) == 32
    one.start()
    one.record(finished_request(US))
    one.close()
    start, _, end = sink.rows
    assert (start.chain_id, start.kind, start.seq) == (one.chain_id, "start", 0)
    assert (end.chain_id, end.kind, end.seq) == (one.chain_id, "end", 1)


def test_recovered_marks_end_each_chain_at_its_newest_record_in_the_write_ahead_file() -> None:
    table = AuditRecord.__tablename__
    items: list[dict[str, Any]] = [
        {"table": table, "row": {"chain_id": "a", "seq": 3}},
        {"table": table, "row": {"chain_id": "a", "seq": 5}},
        {"table": table, "row": {"chain_id": "a", "seq": 4}},
        {"table": table, "row": {"chain_id": "b", "seq": 1}},
        {"table": "usage_ledger", "row": {"chain_id": "c", "seq": 9}},  # not an audit record
        {"table": table, "row": {"chain_id": "d", "seq": "7"}},  # malformed: ignored
        {"table": table, "row": {"chain_id": 5, "seq": 7}},
        {"table": table, "row": {"chain_id": "e", "seq": 0}},  # no record made
        {"table": table, "row": ["e", 2]},
        {"row": {"chain_id": "f", "seq": 2}},
    ]
    before = datetime.now(UTC)
    marks = audit.Auditor.recovered_marks(items)
    assert sorted((m.chain_id, m.kind, m.seq) for m in marks) == [
        ("a", "recovered", 5),
        ("b", "recovered", 1),
    ]
    assert all(before <= m.at <= datetime.now(UTC) for m in marks)
    assert audit.Auditor.recovered_marks([]) == []


def test_verify_counts_the_records_it_checked_and_open_chains_lists_unclosed_ones(
    engine: Engine, tmp_path: Path
) -> None:
    sink = _Sink()
    running, idle, done = audit.Auditor(writer=sink), audit.Auditor(writer=sink), audit.Auditor(writer=sink)
    for auditor in (running, idle, done):
        auditor.start()
    for _ in range(3):
        running.record(finished_request(US))
    done.record(finished_request(US))
    done.close()
    before, _ = audit.verify(engine)
    Writer(engine, tmp_path / "spool")._write(sink.rows)
    checked, _ = audit.verify(engine)
    assert checked == before + 4
    if engine.dialect.name == "sqlite":  # a database of its own: the count is exact
        assert (before, checked) == (0, 4)
    assert problems(engine, running.chain_id, idle.chain_id, done.chain_id) == []
    opened = dict(audit.open_chains(engine))
    assert opened[running.chain_id] == 3
    assert opened[idle.chain_id] == 0
    assert done.chain_id not in opened
    assert audit.fetch(engine, sink.rows[3].request_id) is not None
    assert audit.fetch(engine, "nope") is None


def test_the_record_hash_is_the_documented_function_of_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written by an earlier release must still verify: the hash input may not change, whatever
    the process's local time zone."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    fields: dict[str, Any] = dict.fromkeys(audit._HASHED)
    fields.update(
        request_id="r1",
        chain_id="c" * 32,
        seq=7,
        at=datetime(2026, 11, 30, 12, 0, 1, 2, tzinfo=UTC),
        tenant="acme",
        app="chat",
        key_id="k1",
        subject="pseudo",
        model="mistral-7b",
        endpoint="chat",
        policy_hash="a" * 16,
        decisions="[]",
        attempts="[]",
        deployment="eu-1",
        jurisdiction="EU",
        status=200,
        prev_hash=audit.GENESIS,
    )
    golden = "c81d191dde2fce9d900c819ee8213ef814921a91fc62da0b548fb4e0ce2846ca"
    assert audit._digest(fields) == golden
    assert (
        audit._digest({**fields, "at": datetime(2026, 11, 30, 12, 0, 1, 2)}) == golden
    )  # naive UTC: the same
    berlin = datetime(2026, 11, 30, 13, 0, 1, 2, tzinfo=timezone(timedelta(hours=1)))
    assert audit._digest({**fields, "at": berlin}) == golden
    monkeypatch.undo()
    time.tzset()


def test_chains_verify_whatever_time_zone_the_database_session_and_the_process_use(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade(postgres_url)
    writer_engine = make_engine(postgres_url)
    sink = _Sink()
    auditor = audit.Auditor(writer=sink)
    auditor.start()
    auditor.record(finished_request(US))
    auditor.close()
    Writer(writer_engine, tmp_path / "spool")._write(sink.rows)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    berlin = create_engine(postgres_url, connect_args={"options": "-c timezone=Europe/Berlin"})
    try:
        assert problems(berlin, auditor.chain_id) == []
    finally:
        berlin.dispose()
        writer_engine.dispose()
        monkeypatch.undo()
        time.tzset()


def test_the_newest_end_mark_counts_and_an_empty_closed_chain_is_whole(
    engine: Engine, tmp_path: Path
) -> None:
    sink = _Sink()
    auditor, empty = audit.Auditor(writer=sink), audit.Auditor(writer=sink)
    auditor.start()
    for _ in range(3):
        auditor.record(finished_request(US))
    empty.start()
    empty.close()  # stopped cleanly without a request: an end mark at 0
    now = datetime.now(UTC)
    sink.rows.append(AuditChainMark(chain_id=auditor.chain_id, kind="recovered", seq=5, at=now))
    sink.rows.append(AuditChainMark(chain_id=auditor.chain_id, kind="end", seq=3, at=now))
    Writer(engine, tmp_path / "spool")._write(sink.rows)
    assert problems(engine, auditor.chain_id) == [
        f"chain {auditor.chain_id}: records 4..5 are missing (end of chain)"
    ]
    assert problems(engine, empty.chain_id) == []


def test_an_operation_is_recorded_in_the_chain_after_the_requests(engine: Engine) -> None:
    """``Auditor.event`` (an erasure's own record): the next link of the chain, every field as given,
    no subject, and the chain still verifies."""
    from gateway.store.rows import DirectWriter

    auditor = audit.Auditor(DirectWriter(engine))
    auditor.start()
    auditor.record(finished_request(US))
    before = datetime.now(UTC)
    row = auditor.event(
        request_id="job-1",
        tenant="acme",
        app="cli",
        key_id="-",
        kind="erasure",
        facts={
            "consents": 1,
            "rag_chunks": 2,
            "cost_eur": Decimal("0.5"),
        },  # not JSON by itself: kept as text
        bundle_hash="b" * 16,
    )
    auditor.close()
    assert (row.chain_id, row.seq, auditor.seq, auditor.prev) == (auditor.chain_id, 2, 2, row.hash)
    assert (row.tenant, row.app, row.key_id, row.endpoint, row.policy_hash) == (
        "acme",
        "cli",
        "-",
        "erasure",
        "b" * 16,
    )
    assert (row.subject, row.model, row.status, row.attempts, row.deployment) == (None, "-", 200, "[]", None)
    assert (row.jurisdiction, row.fallback, row.consent_ref) == (None, None, None)
    assert json.loads(row.decisions) == [
        {"policy": "erasure", "action": "done", "facts": {"consents": 1, "rag_chunks": 2, "cost_eur": "0.5"}}
    ]
    assert row.at >= before
    assert row.hash == audit._digest(row.model_dump())
    stored = audit.fetch(engine, "job-1")
    assert stored is not None
    assert stored.prev_hash == _hash_of(engine, auditor.chain_id, 1)  # linked to the request's record
    checked, problems = audit.verify(engine)
    assert [p for p in problems if auditor.chain_id in p] == []
    assert checked >= 2


def _hash_of(engine: Engine, chain: str, seq: int) -> str:
    from sqlalchemy import text

    with engine.connect() as conn:
        return str(
            conn.execute(
                text("SELECT hash FROM audit_records WHERE chain_id = :c AND seq = :s"),
                {"c": chain, "s": seq},
            ).scalar_one()
        )
