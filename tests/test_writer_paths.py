"""The writer's less travelled paths, each made to happen on purpose (gateway/store/writer.py).

What each test guards: the file modes and directories it creates, its defaults, an outage's retry
window and recovery, rows that span write-ahead files, a spool file claimed while an append waits,
a dead process's files that cannot be opened, locked or renamed, and rows the ORM has expired.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import stat
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from gateway.config import Storage
from gateway.store import rows, wal
from gateway.store import spool as spool_module
from gateway.store import writer as writer_module
from gateway.store.db import AuditChainMark, make_engine, upgrade
from gateway.store.ledger import UsageRecord
from gateway.store.rows import Insert
from gateway.store.wal import Segment
from gateway.store.writer import Writer
from tests.test_regressions import _wait_for
from tests.test_writer import _count, _row
from tests.test_writer_wal import counted_since, killed_with, lines, messages, rows_counted, wal_files


class OsWith:
    """The os module as the writer sees it, with some functions replaced."""

    def __init__(self, **replaced: Any) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def down(rows: Any) -> None:
    raise OperationalError("INSERT", {}, Exception("connection refused"))


async def test_files_and_directories_are_made_as_needed_and_readable_by_their_owner_only(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "a" / "b" / "spool"
    writer = Writer(sqlite_engine, spool, flush_interval_s=60)
    await writer.start()
    assert writer._task is not None
    assert writer._task.get_name() == "gateway-writer"
    [wal] = wal_files(spool)
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    await writer.stop()
    later = tmp_path / "c" / "d" / "spool"
    assert Writer(sqlite_engine, later)._spool([_row()])  # the spool makes its directory too
    assert len(Writer(sqlite_engine, later).spooled_files()) == 1


def test_the_writers_defaults_are_the_documented_storage_defaults(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    writer, storage = Writer(sqlite_engine, tmp_path), Storage()
    assert (writer.batch_size, writer.flush_interval_s, writer.wal_fsync) == (
        storage.writer_batch_size,
        storage.writer_flush_interval_s,
        storage.wal_fsync,
    )
    assert (writer.max_queue, writer.retry_s, writer.stop_timeout_s) == (
        100_000,
        1.0,
        30.0,
    )  # as docs/reliability.md says


async def test_wal_fsync_syncs_the_write_ahead_file_at_each_put_and_only_then(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        os.fsync(fd)

    monkeypatch.setattr(writer_module, "os", OsWith(fsync=counting_fsync))
    for fsync, expected in ((True, 2), (False, 0)):
        writer = Writer(sqlite_engine, tmp_path / str(fsync), flush_interval_s=60, wal_fsync=fsync)
        await writer.start()
        synced.clear()
        rows = [_row(), _row()]
        for row in rows:
            writer.put(row)
        assert synced == [writer._segments[-1].fd] * expected
        assert writer.pending == 2
        await writer.stop()
        assert _count(sqlite_engine, [r.request_id for r in rows]) == 2


async def test_put_before_start_queues_quietly_and_a_dead_file_is_recovered_without_a_hook(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    left = _row()
    await killed_with(sqlite_engine, spool, [left])
    writer = Writer(sqlite_engine, spool, batch_size=1)
    early = _row()
    writer.put(early)  # a full batch, but there is no loop to wake yet
    assert writer.pending == 1
    await writer.start()  # on_recover is not set: the dead file is replayed all the same
    await writer.stop()
    assert _count(sqlite_engine, [left.request_id, early.request_id]) == 2
    assert not [m for m in messages(caplog) if m[0] == "ERROR"]


async def test_stop_ends_the_loop_without_cancelling_it_and_can_be_called_twice(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=60)
    writer.stop_timeout_s = 5
    await writer.start()
    task = writer._task
    assert task is not None
    row = _row()
    writer.put(row)
    await writer.stop()  # wakes the loop, which sees it is stopping and returns
    assert task.done()
    assert not task.cancelled()
    assert writer._task is None
    await writer.stop()
    assert _count(sqlite_engine, [row.request_id]) == 1


async def test_a_loop_that_does_not_stop_in_time_is_cancelled_and_its_rows_kept_for_the_next_start(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    writer = Writer(sqlite_engine, spool, flush_interval_s=0.01)
    writer.stop_timeout_s = 0.2
    started = threading.Event()

    def never_commits(rows: Any) -> None:
        started.set()
        time.sleep(1)  # longer than stop_timeout_s; the process would be killed before the commit
        raise RuntimeError("never committed")

    monkeypatch.setattr(writer, "_write", never_commits)
    await writer.start()
    task = writer._task
    assert task is not None
    row = _row()
    writer.put(row)
    assert await asyncio.to_thread(started.wait, 5)
    await writer.stop()  # cancels the loop; the cancelled batch's write-ahead file is kept and replayed
    assert task.cancelled()
    assert _count(sqlite_engine, [row.request_id]) == 1


async def test_an_outage_waits_its_retry_time_and_the_first_good_flush_replays_the_spool(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=60, retry_s=60)
    await writer.start()
    tried: list[int] = []

    def counted_down(rows: Any) -> None:
        tried.append(len(list(rows)))
        down(rows)

    monkeypatch.setattr(writer, "_write", counted_down)
    first, second = _row(), _row()
    writer.put(first)
    await writer.flush()
    writer.put(second)
    await writer.flush()
    assert tried == [1]
    assert not writer.healthy
    assert writer._next_retry > time.monotonic() + 50
    monkeypatch.undo()
    writer._next_retry = 0.0  # retry_s has passed
    third = _row()
    writer.put(third)
    await writer.flush()
    assert writer.healthy is True
    assert writer.spooled_files() == []  # the first good flush replayed what the outage spooled
    assert _count(sqlite_engine, [r.request_id for r in (first, second, third)]) == 3
    await writer.stop()


async def test_the_loop_replays_the_spool_once_the_database_is_back_without_new_rows(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=0.02, retry_s=0.05)
    await writer.start()
    monkeypatch.setattr(writer, "_write", down)
    row = _row()
    writer.put(row)
    for _ in range(100):
        if writer.spooled_files():
            break
        await asyncio.sleep(0.01)
    monkeypatch.undo()
    assert await _wait_for(sqlite_engine, [row.request_id], 1) == 1
    assert writer.healthy
    await writer.stop()


async def test_stop_gives_the_database_one_more_try_before_spooling_what_is_left(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", retry_s=60)  # no loop: stop() drains the queue itself
    monkeypatch.setattr(writer, "_write", down)
    writer.put(_row())
    await writer.flush()
    assert not writer.healthy
    assert writer._next_retry > time.monotonic() + 50
    monkeypatch.undo()
    written: list[int] = []
    real = writer._write

    def write(rows: Any) -> None:
        written.append(len(rows))
        real(rows)

    monkeypatch.setattr(writer, "_write", write)
    row = _row()
    writer.put(row)
    await writer.stop()
    assert written == [1]
    assert writer.healthy
    assert _count(sqlite_engine, [row.request_id]) == 1


async def test_the_loop_logs_an_unexpected_error_and_goes_on(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=0.01)
    real = writer.flush
    calls = 0

    async def fails_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        await real()

    monkeypatch.setattr(writer, "flush", fails_once)
    await writer.start()
    row = _row()
    writer.put(row)
    assert await _wait_for(sqlite_engine, [row.request_id], 1) == 1
    assert ("ERROR", "writer loop error") in messages(caplog)
    await writer.stop()


async def test_an_overflow_that_is_spooled_does_not_keep_its_write_ahead_file(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=60, max_queue=1)
    await writer.start()
    writer.put(_row())
    over = _row()
    writer.put(over)
    assert writer.pending == 1
    assert len(writer.spooled_files()) == 1
    assert not writer._segments[-1].keep
    await writer.stop()
    assert _count(sqlite_engine, [over.request_id]) == 1
    assert not list((tmp_path / "spool").glob("recovered-*"))


def test_a_spool_that_cannot_be_written_counts_the_rows_lost_and_says_so(
    sqlite_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    writer = Writer(sqlite_engine, not_a_dir)
    before = rows_counted()
    assert writer._spool([_row(), _row()]) is False
    assert counted_since(before) == {"lost": 2.0}
    assert messages(caplog) == [
        ("ERROR", "could not spool 2 rows (their write-ahead file is kept for the next start)")
    ]


def test_an_append_that_waited_while_a_replayer_claimed_the_file_goes_to_a_new_file(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = Writer(sqlite_engine, spool)
    first, late = _row(), _row()
    assert writer._spool([first])
    [path] = writer.spooled_files()
    claimed = path.with_name(path.name + ".claimed")
    with ThreadPoolExecutor(1) as pool:
        with open(path, "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # a replayer holds the file...
            appending = pool.submit(writer._spool, [late])
            time.sleep(0.1)
            assert not appending.done()  # the append waits for the lock
            os.rename(path, claimed)  # ...claims it, and releases the lock
        assert appending.result(5) is True
    assert [item["row"]["request_id"] for item in lines(claimed)] == [first.request_id]
    assert [item["row"]["request_id"] for item in lines(path)] == [late.request_id]


def test_a_batch_that_spans_write_ahead_files_settles_each_of_them(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    writer = Writer(sqlite_engine, spool)
    writer._rotate()
    for _ in range(3):
        writer.put(_row())
    writer._rotate()
    for _ in range(3):
        writer.put(_row())
    old, new = writer._segments
    writer._settled(4, True)
    assert list(writer._segments) == [new]
    assert new.remaining == 2
    assert not old.path.exists()
    writer._settled(1, False)  # one row lost: its file must be replayed at the next start
    assert new.remaining == 1
    assert new.keep
    writer._settled(1, True)
    assert new.remaining == 0
    assert new.keep


def test_retiring_a_file_that_is_already_gone_is_not_an_error(tmp_path: Path) -> None:
    for keep in (False, True):
        segment = Segment(tmp_path / f"wal-x-{keep}.wal")
        os.unlink(segment.path)
        segment.keep = keep
        segment.retire()
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(segment.fd)  # closed all the same
    assert list(tmp_path.iterdir()) == []


async def test_recovery_goes_past_a_file_it_cannot_open_or_lock_and_logs_one_it_cannot_rename(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    ids = [uuid.uuid4().hex for _ in range(3)]
    maker = Writer(sqlite_engine, spool)
    for n, i in enumerate(ids):
        (spool / f"wal-dead-{n}.wal").write_bytes(maker._line(_row(i)))
    seen: list[str] = []
    held: list[int] = []

    def open_(path: Any, flags: int, *args: Any) -> int:
        name = Path(path).name
        if name.startswith("wal-") and name not in seen:
            seen.append(name)
            if len(seen) == 1:
                raise PermissionError(13, "Permission denied", str(path))
            if len(seen) == 2:  # another live process holds the second one
                fd = os.open(path, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held.append(fd)
        return os.open(path, flags, *args)

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name == seen[-1] and len(seen) == 3:
            raise OSError(30, "Read-only file system")
        os.rename(src, dst)

    monkeypatch.setattr(wal, "os", OsWith(open=open_, rename=rename))  # where recovery runs
    writer = Writer(sqlite_engine, spool)
    wal.recover(writer.spool_dir, writer.on_recover, writer._line)
    assert len(seen) == 3  # every file was tried
    assert ("ERROR", f"could not recover {seen[2]}") in messages(caplog)
    monkeypatch.undo()
    for fd in held:
        os.close(fd)
    wal.recover(writer.spool_dir, writer.on_recover, writer._line)
    assert writer.replay() == 3
    assert _count(sqlite_engine, ids) == 3


async def test_every_row_the_recovery_hook_adds_lands(sqlite_engine: Engine, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    await killed_with(sqlite_engine, spool, [_row()])
    chains = [f"chain-{uuid.uuid4().hex}" for _ in range(3)]
    writer = Writer(sqlite_engine, spool)
    writer.on_recover = lambda items: [
        AuditChainMark(chain_id=c, kind="recovered", seq=1, at=datetime.now(UTC)) for c in chains
    ]
    await writer.start()
    await writer.stop()
    with Session(sqlite_engine) as s:
        found = s.exec(select(AuditChainMark.chain_id).where(AuditChainMark.chain_id.in_(chains))).all()  # type: ignore[attr-defined]
    assert sorted(found) == sorted(chains)


def test_replay_sums_every_file_goes_past_one_claimed_elsewhere_and_inserts_batches_whole(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    writer = Writer(sqlite_engine, spool)
    ids = [uuid.uuid4().hex for _ in range(5)]
    (spool / "a.jsonl").write_bytes(b"".join(writer._line(_row(i)) for i in ids[:2]))
    (spool / "b.jsonl").write_bytes(b"".join(writer._line(_row(i)) for i in ids[2:4]))
    (spool / "c.jsonl").write_bytes(writer._line(_row(ids[4])))
    monkeypatch.setattr(
        writer, "_insert_one_by_one", lambda *a: pytest.fail("a good batch went in row by row")
    )
    claimed_elsewhere: list[str] = []

    def rename(src: Any, dst: Any) -> None:
        if not claimed_elsewhere and str(dst).endswith(".replaying"):
            claimed_elsewhere.append(Path(src).name)
            raise FileNotFoundError(2, "No such file or directory")  # another process renamed it first
        os.rename(src, dst)

    monkeypatch.setattr(spool_module, "os", OsWith(rename=rename))  # where replay claims files
    assert claimed_elsewhere == []
    assert writer.replay() == 3
    assert claimed_elsewhere == ["a.jsonl"]
    monkeypatch.setattr(spool_module, "os", os)
    assert writer.replay() == 2
    assert _count(sqlite_engine, ids) == 5


def test_a_replay_the_database_drops_says_why(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    writer = Writer(sqlite_engine, spool)
    (spool / "a.jsonl").write_bytes(writer._line(_row()))
    monkeypatch.setattr(writer, "_insert", lambda by_table: down(by_table))
    assert writer.replay() == 0
    assert messages(caplog) == [
        ("WARNING", f"database write failed (OperationalError); spooling rows to {spool}")
    ]


async def test_a_row_the_orm_has_expired_is_written_whole(sqlite_engine: Engine, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(url)
    other = make_engine(url)
    row = _row()
    expected = {c.name: getattr(row, c.name) for c in UsageRecord.__table__.columns}  # type: ignore[attr-defined]
    writer = Writer(other, tmp_path / "spool")
    with Session(sqlite_engine) as session:
        session.add(row)
        session.commit()  # expires the instance: its __dict__ no longer holds the columns
        assert "tenant" not in row.__dict__
        line = writer._line(row)
        writer._write([row])
    assert orjson.loads(line)["row"]["tenant"] == "acme"
    with Session(other) as session:
        stored = session.exec(select(UsageRecord).where(UsageRecord.request_id == row.request_id)).one()
    assert {k: getattr(stored, k) for k in expected if k != "at"} == {
        k: v for k, v in expected.items() if k != "at"
    }
    other.dispose()


@pytest.mark.parametrize("columns", [1, 2, 3])
def test_an_insert_takes_its_values_in_column_order_on_both_databases(
    columns: int, postgres_url: str, tmp_path: Path
) -> None:
    from sqlalchemy import Column, MetaData, String, Table, text

    name = f"cols_{uuid.uuid4().hex[:8]}"
    metadata = MetaData()
    table = Table(
        name,
        metadata,
        Column("c0", String, primary_key=True),
        *(Column(f"c{i}", String) for i in range(1, columns)),
    )
    rows: list[Mapping[str, Any]] = [
        {f"c{i}": f"{key}{i}" for i in range(columns)} for key in ("a", "b", "a")
    ]
    for url in (f"sqlite:///{tmp_path / 'x.db'}", postgres_url):
        engine = make_engine(url)
        metadata.create_all(engine)
        try:
            insert = Insert(table, engine.dialect)
            with engine.begin() as conn:
                conn.exec_driver_sql(insert.sql, insert.params(rows))
                stored = [tuple(r) for r in conn.execute(text(f"SELECT * FROM {name} ORDER BY c0"))]
            assert stored == [tuple(f"{key}{i}" for i in range(columns)) for key in ("a", "b")]
        finally:
            metadata.drop_all(engine)
            engine.dispose()


def test_only_sqlite_and_postgres_are_accepted() -> None:
    from pydantic import ValidationError

    assert Storage(database_url="postgresql+psycopg://u@db/gw").database_url.startswith("postgresql")
    for url, why in (("mysql+pymysql://u@db/gw", "not 'mysql'"), ("not a url", "not a database URL")):
        with pytest.raises(ValidationError, match=why):
            Storage(database_url=url)
    with pytest.raises(ValueError, match="unsupported database dialect 'mysql'"):
        rows.insert_ignoring_duplicates(UsageRecord.__table__, "mysql")  # type: ignore[attr-defined]


async def test_rows_a_full_queue_spilled_are_written_once_the_queue_has_drained(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=0.02, max_queue=1)
    await writer.start()
    await asyncio.sleep(0.05)  # the loop is past its start-up replay
    queued, spilled = _row(), _row()
    writer.put(queued)
    writer.put(spilled)  # over the queue: to the spool, while the database is up
    assert len(writer.spooled_files()) == 1
    await _wait_for(sqlite_engine, [queued.request_id, spilled.request_id], 2)
    assert (_count(sqlite_engine, [queued.request_id]), _count(sqlite_engine, [spilled.request_id])) == (
        1,
        1,
    )  # before stop()
    assert writer.spooled_files() == []
    assert writer.healthy
    await writer.stop()


async def test_a_line_torn_inside_a_multibyte_character_costs_only_that_line(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    writer = Writer(sqlite_engine, spool)
    ids = [uuid.uuid4().hex for _ in range(2)]
    torn = _row()
    torn.app = "café-" * 5
    cut = writer._line(torn)
    cut = cut[: cut.index("é".encode()) + 1]  # the first byte of the two that encode é
    good = b"".join(writer._line(_row(i)) for i in ids)
    (spool / "wal-dead-1.wal").write_bytes(good[: len(good) // 2 + 1].rpartition(b"\n")[0] + b"\n" + cut)
    (spool / "spooled.jsonl").write_bytes(good.partition(b"\n")[2] + cut)
    seen: list[int] = []

    def on_recover(items: list[dict[str, Any]]) -> list[AuditChainMark]:
        seen.append(len(items))
        return []

    writer.on_recover = on_recover
    await writer.start()
    await writer.stop()
    assert seen == [1]
    assert _count(sqlite_engine, ids) == 2
    assert writer.spooled_files() == []


async def test_a_healthy_writer_replays_only_when_a_full_queue_spilled(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replay claims spool files by renaming them under a lock, and processes share the spool
    # directory: a healthy writer with nothing spilled must not do it at every interval.
    writer = Writer(sqlite_engine, tmp_path / "spool", flush_interval_s=0.01, max_queue=1)
    replays = 0
    real = writer.replay

    def counted() -> int:
        nonlocal replays
        replays += 1
        return real()

    monkeypatch.setattr(writer, "replay", counted)
    await writer.start()
    writer.put(_row())
    await asyncio.sleep(0.2)  # about twenty intervals
    assert replays == 0
    writer.put(_row())
    writer.put(_row())  # over the queue: spilled
    await asyncio.sleep(0.2)
    assert replays == 1
    assert writer.spooled_files() == []
    monkeypatch.undo()
    await writer.stop()


def test_a_refused_database_url_is_not_echoed_with_its_password(tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.yamlsrc import ConfigError

    path = tmp_path / "config.yaml"
    path.write_text(
        "deployments: {}\nmodels: {}\nstorage:\n  database_url: mysql://gw:hunter2@db.internal/gw\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems == [
        f"{path}:4: storage.database_url: the gateway stores its data in SQLite or PostgreSQL, not 'mysql'"
    ]
    path.write_text("deployments: {}\nmodels: {}\nstorage:\n  database_url: gw:hunter2@db.internal\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "hunter2" not in str(refused.value)
