"""The batched writer: off the hot path, nothing lost, nothing duplicated."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import col

from gateway.store.db import make_engine, upgrade
from gateway.store.ledger import UsageRecord
from gateway.store.writer import Writer
from tests.tcpproxy import TcpProxy


def _row(request_id: str | None = None, cost: str = "0.0000123456") -> UsageRecord:
    return UsageRecord(
        request_id=request_id or uuid.uuid4().hex,
        tenant="acme",
        app="chat",
        key_id="k1",
        model="mistral-7b",
        prompt_tokens=10,
        completion_tokens=5,
        cost_eur=Decimal(cost),
        fx_rate=Decimal("0.92"),
        status=200,
    )


def _count(engine: Engine, ids: list[str]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(UsageRecord).where(col(UsageRecord.request_id).in_(ids))
            ).scalar_one()
        )


@pytest.fixture
def proxied_postgres(postgres_url: str) -> Iterator[tuple[TcpProxy, Engine]]:
    upgrade(postgres_url)
    proxy = TcpProxy("127.0.0.1", 5432).start()
    engine = make_engine(postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
    yield proxy, engine
    engine.dispose()
    proxy.stop()


async def test_rows_put_are_written_in_the_background(sqlite_engine: Engine, tmp_path: Path) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", batch_size=10, flush_interval_s=0.05)
    await writer.start()
    ids = [uuid.uuid4().hex for _ in range(25)]
    for i in ids:
        writer.put(_row(i))
    for _ in range(100):
        if _count(sqlite_engine, ids) == 25:
            break
        await asyncio.sleep(0.02)
    assert _count(sqlite_engine, ids) == 25
    await writer.stop()


async def test_stop_drains_the_queue(sqlite_engine: Engine, tmp_path: Path) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", batch_size=7, flush_interval_s=60)
    await writer.start()
    ids = [uuid.uuid4().hex for _ in range(20)]
    for i in ids:
        writer.put(_row(i))
    await writer.stop()
    assert _count(sqlite_engine, ids) == 20
    assert writer.pending == 0


async def test_decimal_costs_survive_exactly(sqlite_engine: Engine, tmp_path: Path) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool")
    await writer.start()
    writer.put(_row("exact", cost="0.0000000007"))
    await writer.stop()
    with sqlite_engine.connect() as conn:
        cost = conn.execute(
            select(col(UsageRecord.cost_eur)).where(col(UsageRecord.request_id) == "exact")
        ).scalar_one()
    assert cost == Decimal("0.0000000007")


async def test_put_never_raises_and_a_full_queue_spills_to_the_spool(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", max_queue=3, flush_interval_s=60)
    await writer.start()
    ids = [uuid.uuid4().hex for _ in range(10)]
    for i in ids:
        writer.put(_row(i))
    writer.put(object())  # type: ignore[arg-type]  # garbage is logged, not raised
    assert writer.pending == 3
    assert writer.spooled_files()
    await writer.stop()
    assert _count(sqlite_engine, ids) == 10
    assert not writer.spooled_files()


async def test_rows_are_spooled_while_postgres_is_unreachable_and_replayed_when_it_returns(
    proxied_postgres: tuple[TcpProxy, Engine], tmp_path: Path
) -> None:
    proxy, engine = proxied_postgres
    writer = Writer(engine, tmp_path / "spool", batch_size=5, flush_interval_s=0.02, retry_s=0.1)
    await writer.start()
    before = [uuid.uuid4().hex for _ in range(5)]
    for i in before:
        writer.put(_row(i))
    await asyncio.sleep(0.3)
    proxy.cut()
    during = [uuid.uuid4().hex for _ in range(12)]
    for i in during:
        writer.put(_row(i))
    for _ in range(100):
        if not writer.healthy and writer.pending == 0:
            break
        await asyncio.sleep(0.02)
    assert not writer.healthy
    assert writer.spooled_files()
    proxy.restore()
    for _ in range(200):
        if writer.healthy and not writer.spooled_files():
            break
        await asyncio.sleep(0.05)
    await writer.stop()
    assert _count(engine, before + during) == 17


async def test_a_row_replayed_twice_is_stored_once(sqlite_engine: Engine, tmp_path: Path) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool")
    await writer.start()
    row = _row("twice")
    writer.put(row)
    await writer.flush()
    writer._spool([_row("twice"), _row("once")])
    await asyncio.to_thread(writer.replay)
    await writer.stop()
    assert _count(sqlite_engine, ["twice", "once"]) == 2


async def test_spool_left_by_a_crashed_writer_is_replayed_at_start(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    crashed = Writer(sqlite_engine, tmp_path / "spool")
    crashed.spool_dir.mkdir(parents=True)
    crashed._spool([_row("left-behind")])
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=0.02)
    await writer.start()
    for _ in range(100):
        if _count(sqlite_engine, ["left-behind"]):
            break
        await asyncio.sleep(0.02)
    await writer.stop()
    assert _count(sqlite_engine, ["left-behind"]) == 1


def test_rows_of_a_one_column_table_are_inserted_too() -> None:
    from sqlalchemy import Column, MetaData, String, Table, create_engine

    from gateway.store.rows import Insert

    metadata = MetaData()
    table = Table("just_keys", metadata, Column("k", String, primary_key=True))
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    insert = Insert(table, engine.dialect)
    with engine.begin() as conn:
        conn.exec_driver_sql(insert.sql, insert.params([{"k": "a"}, {"k": "b"}, {"k": "a"}]))
        assert sorted(conn.exec_driver_sql("SELECT k FROM just_keys").scalars()) == ["a", "b"]


async def test_stop_lets_a_flush_in_progress_finish_and_deletes_no_write_ahead_file_too_early(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM stop arrived while a batch was in the database thread: it used to cancel the flush and delete
    the write-ahead files holding that batch, so the rows were lost when the process then exited."""
    writer = Writer(sqlite_engine, tmp_path / "spool", batch_size=100, flush_interval_s=0.01)
    real = writer._write
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(rows: Any) -> None:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.5)
        real(rows)

    monkeypatch.setattr(writer, "_write", slow)
    await writer.start()
    ids = [uuid.uuid4().hex for _ in range(30)]
    for i in ids:
        writer.put(_row(i))
    await asyncio.wait_for(started.wait(), 5)
    await writer.stop()
    assert _count(sqlite_engine, ids) == 30
    assert not list((tmp_path / "spool").glob("wal-*"))


async def test_a_cancelled_flush_keeps_its_write_ahead_rows_for_the_next_start(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", batch_size=100, flush_interval_s=60)
    await writer.start()
    ids = [uuid.uuid4().hex for _ in range(5)]
    for i in ids:
        writer.put(_row(i))

    def lost(rows: Any) -> None:
        time.sleep(0.2)  # the thread never commits (the process dies right after)

    monkeypatch.setattr(writer, "_write", lost)
    flush = asyncio.create_task(writer.flush())
    await asyncio.sleep(0.05)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    monkeypatch.undo()
    await writer.stop()  # the files of the cancelled batch become spool files, replayed now
    assert _count(sqlite_engine, ids) == 5
