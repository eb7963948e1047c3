"""Batched, off-the-hot-path writes of SQL rows (usage ledger, audit records, ...).

    writer = Writer(engine, spool_dir="./spool")
    await writer.start()
    writer.put(UsageRecord(...))   # never blocks, never raises
    await writer.stop()            # drains the queue

A background task flushes queued rows in batches, one transaction per batch, running the
synchronous SQL in a thread. Every table written here must have a primary key: inserts skip
rows whose key exists, so a row written twice (a replay after a half-failed flush) is stored
once.

Every row is also appended to a write-ahead file (``wal-*.wal``) when it is queued, with one
``write(2)``, before the request's response ends: a process killed by SIGKILL or the OOM killer
loses no row, because the next start-up replays the files no live process holds (each process
keeps an exclusive ``flock`` on its open files). A flush starts a new file when the current
one is 10 s old, and a file is deleted once every row in it is in SQL or the spool.
``wal_fsync`` adds an fsync per append, for machine crashes too.

When the database fails, the batch is appended to a spool file (JSON lines, one row each,
with its table name) and the writer keeps trying; once a flush succeeds, spooled rows are
replayed. A full queue also spills to the spool file instead of dropping rows; those rows
are replayed once the queue has drained. Several processes may share one spool directory: a
file is claimed by renaming it, and appends check that the file they locked is still the one
at the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import operator
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Dialect, Engine, Table
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlmodel import SQLModel

from gateway import metrics

log = logging.getLogger("gateway.writer")

_SUFFIX = ".jsonl"
_WAL = ".wal"
_ROTATE_S = 10.0  # a write-ahead file takes appends this long before the next flush starts another


class _Segment:
    """One write-ahead file: rows appended in queue order, ``remaining`` not yet in SQL or the spool."""

    __slots__ = ("fd", "keep", "opened", "path", "remaining")

    def __init__(self, path: Path) -> None:
        self.path = path
        # Locked before it appears under its name: another process's start-up must never take a live file.
        making = path.with_suffix(".new")
        self.fd = os.open(making, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # "a live process owns this file"; released when the process dies
        os.rename(making, path)
        self.remaining = 0
        self.opened = time.monotonic()
        self.keep = False  # some of its rows could not be written or spooled: replay it at the next start

    def retire(self) -> None:
        if self.keep:
            with contextlib.suppress(OSError):
                os.rename(self.path, self.path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{_SUFFIX}"))
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)


class Writer:
    stop_timeout_s = 30.0  # how long stop() lets a flush in progress finish

    def __init__(
        self,
        engine: Engine,
        spool_dir: str | os.PathLike[str],
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        max_queue: int = 100_000,
        retry_s: float = 1.0,
        wal_fsync: bool = False,
    ) -> None:
        self.engine = engine
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self.retry_s = retry_s
        self.wal_fsync = wal_fsync
        self.healthy = True
        self._id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._rows: deque[SQLModel] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_retry = 0.0
        self._statements: dict[tuple[str, str], _Insert] = {}
        self._column_names: dict[Table, frozenset[str]] = {}
        self._segments: deque[_Segment] = deque()  # oldest first; the last one takes appends
        # Given the rows ({"table", "row"}) of a killed process's write-ahead file, rows to add to them
        # (the auditor marks where that process's audit chain ended).
        self.on_recover: Callable[[list[dict[str, Any]]], Sequence[SQLModel]] | None = None
        self._wal_seq = 0
        self._stopping = False
        self._spilled = False  # a full queue sent rows to the spool while the database was up

    # --- public API ------------------------------------------------------------------------

    def put(self, row: SQLModel) -> None:
        """Queue a row for writing, after appending it to the write-ahead file. Never blocks the caller
        for more than that append and never raises."""
        try:
            segment = self._segments[-1] if self._segments else None
            if segment is not None:
                os.write(segment.fd, self._line(row))
                if self.wal_fsync:
                    os.fsync(segment.fd)
            if len(self._rows) >= self.max_queue:
                if self._spool([row]):
                    self._spilled = True  # replayed once the queue has drained
                elif segment is not None:
                    segment.keep = True
                return
            if segment is not None:
                segment.remaining += 1
            self._rows.append(row)
            if self._wake is not None and len(self._rows) >= self.batch_size:
                self._wake.set()
        except Exception:  # the request path must not fail because bookkeeping did
            log.exception("writer.put failed")

    async def start(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._recover_claimed()
        self._recover_wal()
        self._rotate()
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="gateway-writer")

    async def stop(self) -> None:
        """Stop the background task and write (or spool) everything still queued.

        A flush in progress is allowed to finish (its batch is in a worker thread's transaction);
        only a loop that does not stop within ``stop_timeout_s`` is cancelled, and then its write-ahead
        files are kept for the next start to replay."""
        if self._task is not None:
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        self._next_retry = 0.0  # one more try at the database before spooling what is left
        while self._rows:
            await self.flush()
        while self._segments:
            segment = self._segments.popleft()
            segment.keep = segment.keep or segment.remaining > 0  # rows not known to be in SQL or the spool
            segment.retire()
        if self.spooled_files():
            await asyncio.to_thread(self.replay)  # what cannot be replayed now waits for the next start

    @property
    def pending(self) -> int:
        return len(self._rows)

    def spooled_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob(f"*{_SUFFIX}")) if self.spool_dir.is_dir() else []

    async def flush(self) -> None:
        """Write one batch now; on failure spool it."""
        batch = [self._rows.popleft() for _ in range(min(self.batch_size, len(self._rows)))]
        if not batch:
            return
        current = self._segments[-1] if self._segments else None
        if current is not None and current.remaining and time.monotonic() - current.opened >= _ROTATE_S:
            # Rows queued from now on go to a new file, so this one can be deleted once its rows are written.
            # Not at every flush: creating and deleting files costs the kernel's journal more than appends.
            self._rotate()
        if not self.healthy and time.monotonic() < self._next_retry:
            self._settled(len(batch), self._spool(batch))
            return
        try:
            await asyncio.to_thread(self._write, batch)
        except asyncio.CancelledError:
            self._settled(len(batch), False)  # the thread may or may not commit: keep the files to replay
            raise
        except Exception as exc:  # any write failure spools the batch  # noqa: BLE001
            self._failed(exc)
            self._settled(len(batch), self._spool(batch))
            return
        self._settled(len(batch), True)
        metrics.WRITER_ROWS.labels("written").inc(len(batch))
        if not self.healthy:
            await asyncio.to_thread(self.replay)  # healthy again once the spool is empty

    # --- write-ahead file ------------------------------------------------------------------

    def _line(self, row: SQLModel) -> bytes:
        table, names, values = self._values(row)
        return (
            orjson.dumps({"table": table.name, "row": {n: values[n] for n in names}}, default=_encode) + b"\n"
        )

    def _values(self, row: SQLModel) -> tuple[Table, frozenset[str], Mapping[str, Any]]:
        """The row's table, its column names, and a mapping that holds (at least) every column's value."""
        table = row.__table__  # type: ignore[attr-defined]
        names = self._column_names.get(table)
        if names is None:
            names = self._column_names[table] = frozenset(c.name for c in table.columns)
        # model_construct fills every field, so the instance dict holds every column; going
        # through the ORM attributes costs 5x. A row the ORM has expired or deferred has gaps.
        d = row.__dict__
        return table, names, (d if d.keys() >= names else {n: getattr(row, n) for n in names})

    def _rotate(self) -> None:
        try:
            self._wal_seq += 1
            self._segments.append(_Segment(self.spool_dir / f"wal-{self._id}-{self._wal_seq}{_WAL}"))
        except OSError:
            log.exception("could not open a write-ahead file in %s", self.spool_dir)

    def _settled(self, n: int, ok: bool) -> None:
        """The oldest ``n`` queued rows are in SQL or the spool (``ok``), or were lost: in that case their
        write-ahead files are kept for the next start-up to replay."""
        for segment in self._segments:
            if n <= 0:
                break
            take = min(n, segment.remaining)
            segment.remaining -= take
            n -= take
            segment.keep = segment.keep or (take > 0 and not ok)
        while len(self._segments) > 1 and self._segments[0].remaining == 0:
            self._segments.popleft().retire()

    def _recover_wal(self) -> None:
        """Write-ahead files no live process holds (it was killed) go to the spool, to be replayed."""
        for path in self.spool_dir.glob(f"wal-*{_WAL}"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # held by a live process
            try:
                recovered = path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{_SUFFIX}")
                os.rename(path, recovered)
                log.warning("recovering %s, left by a process that did not stop cleanly", path.name)
                if self.on_recover is not None:
                    with open(recovered, "rb") as f:
                        items = [
                            item for item in map(_loads, f.read().splitlines()) if isinstance(item, dict)
                        ]
                    extra = self.on_recover(items)
                    if extra:
                        with open(recovered, "ab") as f:
                            f.write(b"".join(self._line(row) for row in extra))
            except OSError:
                log.exception("could not recover %s", path.name)
            finally:
                os.close(fd)

    # --- background loop -------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        if self.spooled_files():
            await asyncio.to_thread(self.replay)
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            try:
                while self._rows:
                    await self.flush()
                if (self._spilled and self.healthy) or (
                    not self.healthy and time.monotonic() >= self._next_retry
                ):
                    self._spilled = False
                    await asyncio.to_thread(self.replay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("writer loop error")

    def _failed(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("database write failed (%s); spooling rows to %s", type(exc).__name__, self.spool_dir)
        self.healthy = False
        self._next_retry = time.monotonic() + self.retry_s

    # --- SQL -------------------------------------------------------------------------------

    def _write(self, rows: Iterable[SQLModel]) -> None:
        by_table: dict[Table, list[Mapping[str, Any]]] = {}
        for row in rows:
            table, _, values = self._values(row)
            by_table.setdefault(table, []).append(values)
        self._insert(by_table)

    def _insert(self, by_table: Mapping[Table, list[Mapping[str, Any]]]) -> None:
        with self.engine.begin() as conn:
            for table, values in by_table.items():
                key = (table.name, conn.dialect.name)
                statement = self._statements.get(key)
                if statement is None:
                    statement = self._statements[key] = _Insert(table, conn.dialect)
                conn.exec_driver_sql(statement.sql, statement.params(values))

    # --- spool -----------------------------------------------------------------------------

    def _spool(self, rows: list[SQLModel]) -> bool:
        lines = b"".join(self._line(r) for r in rows)
        path = self.spool_dir / f"{self._id}{_SUFFIX}"
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            while True:
                with open(path, "ab") as f:
                    fcntl.flock(f, fcntl.LOCK_EX)
                    # A replayer may have claimed (renamed) the file while we waited for the lock.
                    try:
                        same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:
                        continue
                    f.write(lines)
                    f.flush()
                    os.fsync(f.fileno())
                    break
            metrics.WRITER_ROWS.labels("spooled").inc(len(rows))
            return True
        except Exception:
            metrics.WRITER_ROWS.labels("lost").inc(len(rows))
            log.exception(
                "could not spool %d rows (their write-ahead file is kept for the next start)", len(rows)
            )
            return False

    def _recover_claimed(self) -> None:
        """Files claimed by a replayer that died are put back for the next replay."""
        for path in self.spool_dir.glob("*.replaying"):
            with contextlib.suppress(OSError), open(path, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live replayer holds the lock
                os.rename(path, path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{_SUFFIX}"))

    def replay(self) -> int:
        """Insert every spooled row (synchronous; call in a thread). Returns rows replayed."""
        tables = _tables()
        total = 0
        for path in self.spooled_files():
            claimed = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.replaying")
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another process claimed it
            with open(claimed, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # waits for an append in progress; held while replaying
                lines = [line for line in f.read().splitlines() if line.strip()]
                try:
                    for i in range(0, len(lines), self.batch_size):
                        by_table: dict[Table, list[Mapping[str, Any]]] = {}
                        for line in lines[i : i + self.batch_size]:
                            try:
                                item = orjson.loads(line)
                                table = tables[item["table"]]
                                values = _decode(table, item["row"])
                            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                                # A torn or foreign line must not block every row after it.
                                log.error("skipping an unreadable spooled row in %s", path.name)
                                metrics.WRITER_ROWS.labels("lost").inc()
                                continue
                            by_table.setdefault(table, []).append(values)
                        try:
                            self._insert(by_table)
                        except _UNREACHABLE:
                            raise
                        except Exception:  # a refused batch is retried row by row  # noqa: BLE001
                            self._insert_one_by_one(by_table, path.name)
                except Exception as exc:  # the file is kept for the next replay  # noqa: BLE001
                    os.rename(claimed, path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{_SUFFIX}"))
                    self._failed(exc)
                    break
                os.unlink(claimed)
            total += len(lines)
            metrics.WRITER_ROWS.labels("replayed").inc(len(lines))
        else:
            if not self.healthy:
                self.healthy = True  # every spooled row went in: the database is back
                log.warning("database is back")
        if total:
            log.warning("replayed %d spooled rows", total)
        return total

    def _insert_one_by_one(self, by_table: Mapping[Table, list[Mapping[str, Any]]], source: str) -> None:
        """The database is up but refused a batch: keep the good rows, quarantine the bad ones."""
        for table, rows in by_table.items():
            for values in rows:
                try:
                    self._insert({table: [values]})
                except _UNREACHABLE:
                    raise
                except Exception as exc:  # a refused row is quarantined  # noqa: BLE001
                    log.error(
                        "quarantining a %s row the database refused (%s)", table.name, type(exc).__name__
                    )
                    metrics.WRITER_ROWS.labels("rejected").inc()
                    line = orjson.dumps({"table": table.name, "row": values}, default=_encode) + b"\n"
                    with open(self.spool_dir / f"rejected-{source}.bad", "ab") as f:
                        f.write(line)


_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError)


class _Insert:
    """One table's INSERT compiled once, with the column types' own bind processors.

    The writer thread shares the GIL with the event loop; ``Connection.execute`` spends ~10 µs
    of Python per row building and processing parameters, which the loop then waits for. This
    hands the driver ready parameters instead, converted by the same processors.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        compiled = _insert_ignoring_duplicates(table, dialect.name).compile(
            dialect=dialect, column_keys=[c.key for c in table.columns]
        )
        self.sql = compiled.string
        self.positional = dialect.positional
        self.names = list(compiled.positiontup or ()) if self.positional else [c.key for c in table.columns]
        get = operator.itemgetter(*self.names)
        # itemgetter of one name returns the value, of several a tuple: always make it a tuple.
        self._get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            get if len(self.names) > 1 else lambda d: (get(d),)
        )
        processors = [table.columns[n].type.dialect_impl(dialect).bind_processor(dialect) for n in self.names]
        self._process = [(i, p) for i, p in enumerate(processors) if p is not None]

    def params(self, rows: list[Mapping[str, Any]]) -> list[tuple[Any, ...]] | list[dict[str, Any]]:
        out = []
        for d in rows:
            values = self._get(d)
            if self._process:
                processed = list(values)
                for i, process in self._process:
                    processed[i] = process(processed[i])
                values = tuple(processed)
            out.append(values)
        if self.positional:
            return out
        return [dict(zip(self.names, values, strict=True)) for values in out]


def _insert_ignoring_duplicates(table: Table, dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    # config.Storage refuses other databases: replays need "skip duplicates", and only these two are tested.
    raise ValueError(f"unsupported database dialect {dialect!r}")


def _tables() -> dict[str, Table]:
    """Every table a spooled or write-ahead row may name, whether or not this process has written one yet
    (a process replaying a killed one's rows may not have imported the ledger's model)."""
    import gateway.store.db
    import gateway.store.ledger  # noqa: F401

    return {t.name: t for t in SQLModel.metadata.sorted_tables}


def _loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a torn last line


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _decode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """JSON values back to the column's Python type (datetimes and decimals travel as strings; no table has a
    date column)."""
    out: dict[str, Any] = {}
    for column in table.columns:
        value = row.get(column.name)
        if value is not None:
            kind = _python_type(column.type)
            if kind is datetime and isinstance(value, str):
                value = datetime.fromisoformat(value)
            elif kind is Decimal and not isinstance(value, Decimal):
                value = Decimal(str(value))
        out[column.name] = value
    return out


def _python_type(sql_type: Any) -> Any:
    # A TypeDecorator (sqlmodel's UTCDateTime) may report ``object``; its impl knows better.
    for t in (sql_type, getattr(sql_type, "impl_instance", None)):
        try:
            kind = t.python_type if t is not None else None
        except NotImplementedError:
            kind = None
        if kind not in (None, object):
            return kind
    return None
