"""The writer's write-ahead files and spool replay, in process (gateway/store/writer.py).

tests/test_sigkill.py kills a real ``gateway serve``; these tests make each step of that path
happen on purpose, so a change to one of them fails here: the files a process owns, what a dead
process's files become, the hook that closes its audit chain, rotation, and a replay that meets
torn lines, rejected rows and a database that goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from gateway import metrics
from gateway.store import writer as writer_module
from gateway.store.db import AuditChainMark
from gateway.store.ledger import UsageRecord
from gateway.store.rows import decode, tables
from gateway.store.writer import Writer
from tests.test_regressions import _wait_for
from tests.test_writer import _count, _row


def rows_counted() -> dict[str, float]:
    """The writer's row counter, by outcome."""
    return {
        s.labels["outcome"]: s.value
        for m in metrics.WRITER_ROWS.collect()
        for s in m.samples
        if s.name == "gateway_writer_rows_total"
    }


def counted_since(before: dict[str, float]) -> dict[str, float]:
    now = rows_counted()
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "gateway.writer"]


def wal_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("wal-*.wal"))


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def die(writer: Writer) -> None:
    """What SIGKILL does to a writer's files: the descriptors close, so the locks go; nothing else."""
    for segment in writer._segments:
        os.close(segment.fd)
    writer._segments.clear()
    if writer._task is not None:
        writer._task.cancel()


async def killed_with(engine: Engine, spool: Path, rows: list[UsageRecord]) -> None:
    """A writer that put ``rows`` and was then killed: its write-ahead file is left in ``spool``."""
    dead = Writer(engine, spool, flush_interval_s=60)
    await dead.start()
    for row in rows:
        dead.put(row)
    die(dead)


async def test_a_row_is_in_the_write_ahead_file_as_soon_as_it_is_put(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = Writer(sqlite_engine, spool, flush_interval_s=60)
    await writer.start()
    row = _row()
    writer.put(row)
    [wal] = wal_files(spool)
    assert wal.name.startswith(f"wal-{writer._id}-")
    [item] = lines(wal)
    assert item["table"] == "usage_ledger"
    assert item["row"]["request_id"] == row.request_id
    assert item["row"]["cost_eur"] == "0.0000123456"  # decimals travel as strings, exactly
    assert writer._segments[-1].remaining == 1
    assert writer.pending == 1
    before = rows_counted()
    await writer.stop()
    assert wal_files(spool) == []
    assert _count(sqlite_engine, [row.request_id]) == 1
    assert counted_since(before) == {"written": 1.0}


async def test_put_never_raises_and_a_missing_write_ahead_file_only_costs_the_crash_guarantee(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    writer = Writer(sqlite_engine, spool, flush_interval_s=60)
    await writer.start()
    writer.put(object())  # type: ignore[arg-type]  # not a row: logged, not raised
    assert writer.pending == 0
    assert messages(caplog) == [("ERROR", "writer.put failed")]
    await writer.stop()
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory")
    writer = Writer(sqlite_engine, in_the_way, flush_interval_s=60)
    writer._rotate()
    assert not writer._segments
    assert ("ERROR", f"could not open a write-ahead file in {in_the_way}") in messages(caplog)
    row = _row()
    writer.put(row)  # no write-ahead file: still queued and written
    assert writer.pending == 1
    await writer.flush()
    assert _count(sqlite_engine, [row.request_id]) == 1


async def test_a_dead_processs_write_ahead_file_is_replayed_and_its_chain_closed_at_the_next_start(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    ids = [uuid.uuid4().hex for _ in range(3)]
    await killed_with(sqlite_engine, spool, [_row(i) for i in ids])
    seen: list[list[dict[str, Any]]] = []

    def on_recover(items: list[dict[str, Any]]) -> list[AuditChainMark]:
        seen.append(items)
        return [AuditChainMark(chain_id="dead-chain", kind="recovered", seq=len(items), at=datetime.now(UTC))]

    [wal] = wal_files(spool)
    later = Writer(sqlite_engine, spool, flush_interval_s=0.02)
    later.on_recover = on_recover
    before = rows_counted()
    await later.start()
    await later.stop()
    assert _count(sqlite_engine, ids) == 3
    assert counted_since(before) == {"replayed": 4.0}  # three rows and the recovered mark
    assert ("WARNING", f"recovering {wal.name}, left by a process that did not stop cleanly") in messages(
        caplog
    )
    assert ("WARNING", "replayed 4 spooled rows") in messages(caplog)
    assert [[item["row"]["request_id"] for item in items] for items in seen] == [ids]
    with Session(sqlite_engine) as s:
        mark = s.exec(select(AuditChainMark).where(AuditChainMark.chain_id == "dead-chain")).one()
    assert (mark.kind, mark.seq) == ("recovered", 3)
    assert wal_files(spool) == []
    assert later.spooled_files() == []


async def test_a_write_ahead_file_a_live_process_holds_is_left_alone(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    live = Writer(sqlite_engine, spool, flush_interval_s=60)
    await live.start()
    row = _row()
    live.put(row)
    [wal] = wal_files(spool)
    other = Writer(sqlite_engine, spool, flush_interval_s=60)
    other.on_recover = lambda items: pytest.fail("a live file was recovered")
    await other.start()
    assert wal.exists()
    assert _count(sqlite_engine, [row.request_id]) == 0
    await other.stop()
    assert wal.exists()
    await live.stop()
    assert not wal.exists()
    assert _count(sqlite_engine, [row.request_id]) == 1


async def test_a_torn_last_line_does_not_stop_the_recovery_of_the_rows_before_it(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    ids = [uuid.uuid4().hex for _ in range(2)]
    dead = Writer(sqlite_engine, spool)
    (spool / "wal-dead-1.wal").write_bytes(
        b"".join(dead._line(_row(i)) for i in ids) + b'{"table": "usage_le'
    )
    seen: list[int] = []
    writer = Writer(sqlite_engine, spool)

    def on_recover(items: list[dict[str, Any]]) -> list[AuditChainMark]:
        seen.append(len(items))
        return []

    writer.on_recover = on_recover
    await writer.start()
    await writer.stop()
    assert seen == [2]
    assert _count(sqlite_engine, ids) == 2


async def test_a_file_is_rotated_after_its_time_and_retired_once_its_rows_are_written(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    writer = Writer(sqlite_engine, spool, flush_interval_s=60, batch_size=2)
    spool.mkdir()
    writer._rotate()  # what start() does, without the background task: this test flushes by hand
    writer.put(_row())
    writer.put(_row())
    writer.put(_row())
    [first] = wal_files(spool)
    await writer.flush()  # the file is young: no new one
    assert wal_files(spool) == [first]
    assert writer._segments[-1].remaining == 1
    monkeypatch.setattr(writer_module, "ROTATE_S", 0.0)
    writer.put(_row())
    await writer.flush()  # old enough: rows from now on go to a new file...
    [segment] = writer._segments  # ...and the flush settled the first file's last two rows: it is deleted
    second = segment.path
    assert second != first
    assert wal_files(spool) == [second]
    assert segment.remaining == 0
    writer.put(_row())
    assert len(lines(second)) == 1
    await writer.stop()
    assert wal_files(spool) == []


async def test_a_full_batch_wakes_the_writer_before_its_interval(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=60, batch_size=3)
    await writer.start()
    ids = [uuid.uuid4().hex for _ in range(3)]
    for i in ids[:2]:
        writer.put(_row(i))
    await asyncio.sleep(0.2)
    assert _count(sqlite_engine, ids) == 0  # under a batch: waits for the interval
    writer.put(_row(ids[2]))
    assert await _wait_for(sqlite_engine, ids, 3) == 3
    await writer.stop()


async def test_an_overflow_that_cannot_be_spooled_keeps_the_write_ahead_file(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    writer = Writer(sqlite_engine, spool, flush_interval_s=60, max_queue=1)
    await writer.start()
    writer.put(_row())
    monkeypatch.setattr(writer, "_spool", lambda rows: False)
    lost = _row()
    writer.put(lost)  # over the queue, and the spool fails: only the write-ahead file has it
    assert writer.pending == 1
    assert writer._segments[-1].keep
    monkeypatch.undo()
    await writer.stop()
    # the kept file went to the spool at stop and was replayed from there
    assert writer.spooled_files() == []
    assert _count(sqlite_engine, [lost.request_id]) == 1


async def test_a_failed_write_is_spooled_and_the_file_deleted_once_spooled(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    writer = Writer(sqlite_engine, spool, flush_interval_s=60, retry_s=60)
    await writer.start()
    row = _row()
    writer.put(row)

    def down(rows: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(writer, "_write", down)
    before = rows_counted()
    await writer.flush()
    assert counted_since(before) == {"spooled": 1.0}
    assert messages(caplog) == [
        ("WARNING", f"database write failed (OperationalError); spooling rows to {spool}")
    ]
    assert not writer.healthy
    assert writer._segments[-1].remaining == 0
    assert not writer._segments[-1].keep
    [spooled] = writer.spooled_files()
    assert [item["row"]["request_id"] for item in lines(spooled)] == [row.request_id]
    second = _row()
    writer.put(second)
    await writer.flush()  # within retry_s: straight to the spool, the database is not tried
    assert [item["row"]["request_id"] for item in lines(spooled)] == [row.request_id, second.request_id]
    assert len(messages(caplog)) == 1  # the outage is logged once, not per batch
    monkeypatch.undo()
    before = rows_counted()
    await writer.stop()
    assert _count(sqlite_engine, [row.request_id, second.request_id]) == 2
    assert writer.healthy
    assert counted_since(before) == {"replayed": 2.0}
    assert ("WARNING", "database is back") in messages(caplog)


def test_replay_skips_torn_lines_quarantines_refused_rows_and_keeps_the_rest(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    writer = Writer(sqlite_engine, spool, batch_size=2)
    good = [uuid.uuid4().hex for _ in range(3)]
    refused = _row()
    refused.tenant = None  # type: ignore[assignment]  # NOT NULL: the database refuses this row
    path = spool / "crashed.jsonl"
    path.write_bytes(
        writer._line(_row(good[0]))
        + b"not json\n"
        + b'{"table": "no_such_table", "row": {}}\n'
        + writer._line(refused)
        + writer._line(_row(good[1]))
        + b"\n"
        + writer._line(_row(good[2]))
    )
    before = rows_counted()
    caplog.set_level(logging.INFO, "gateway.writer")
    assert writer.replay() == 6  # lines read, blank lines not counted
    assert counted_since(before) == {"lost": 2.0, "rejected": 1.0, "replayed": 6.0}
    assert messages(caplog) == [
        ("ERROR", "skipping an unreadable spooled row in crashed.jsonl"),
        ("ERROR", "skipping an unreadable spooled row in crashed.jsonl"),
        ("ERROR", "quarantining a usage_ledger row the database refused (IntegrityError)"),
        ("WARNING", "replayed 6 spooled rows"),
    ]
    assert _count(sqlite_engine, good) == 3
    [bad] = spool.glob("rejected-*.bad")
    assert bad.name == "rejected-crashed.jsonl.bad"
    assert [(item["table"], item["row"]["request_id"]) for item in lines(bad)] == [
        ("usage_ledger", refused.request_id)
    ]
    assert writer.spooled_files() == []
    assert not list(spool.glob("*.replaying"))


def test_a_replay_the_database_drops_keeps_the_file_for_later(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    writer = Writer(sqlite_engine, spool, retry_s=30)
    row = _row()
    (spool / "a.jsonl").write_bytes(writer._line(row))

    def unreachable(by_table: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(writer, "_insert", unreachable)
    assert writer.replay() == 0
    [kept] = writer.spooled_files()
    assert kept.name.startswith("recovered-")
    assert not writer.healthy
    monkeypatch.undo()
    assert writer.replay() == 1
    assert writer.healthy
    assert _count(sqlite_engine, [row.request_id]) == 1


def test_spooled_values_come_back_as_their_column_types() -> None:
    table = tables()["usage_ledger"]
    row = decode(
        table,
        {
            "request_id": "r1",
            "at": "2026-11-30T12:00:01.000002",
            "cost_eur": "0.0000123456",
            "fx_rate": 0.92,
            "prompt_tokens": 10,
            "tenant": None,
        },
    )
    assert row["at"] == datetime(2026, 11, 30, 12, 0, 1, 2)
    assert isinstance(row["cost_eur"], Decimal)
    assert row["cost_eur"] == Decimal("0.0000123456")
    assert row["fx_rate"] == Decimal("0.92")
    assert row["prompt_tokens"] == 10
    assert row["tenant"] is None
    assert row["request_id"] == "r1"
    assert set(row) == {c.name for c in table.columns}


def test_every_table_a_spooled_row_may_name_is_known() -> None:
    assert {"usage_ledger", "audit_records", "audit_chain_marks"} <= set(tables())
    assert UsageRecord.__tablename__ == "usage_ledger"


def test_a_column_type_without_a_python_type_falls_back_to_its_implementation() -> None:
    """``python_type`` asks a type decorator's implementation when the type itself cannot say, and
    answers None when neither can (the value is then kept as JSON gave it)."""
    from sqlalchemy.types import DateTime, TypeDecorator, UserDefinedType

    from gateway.store.rows import python_type

    class Opaque(UserDefinedType[Any]):
        cache_ok = True

    class Stamp(TypeDecorator[Any]):
        impl = DateTime
        cache_ok = True

        @property
        def python_type(self) -> type:
            raise NotImplementedError

    assert python_type(Stamp()) is datetime
    assert python_type(Opaque()) is None
