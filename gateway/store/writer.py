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
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, Table
from sqlmodel import SQLModel

from gateway import metrics
from gateway.store import spool
from gateway.store.rows import Insert, encode
from gateway.store.wal import ROTATE_S, WAL_SUFFIX, Segment, recover, recover_claimed

log = logging.getLogger("gateway.writer")


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
        self._statements: dict[tuple[str, str], Insert] = {}
        self._column_names: dict[Table, frozenset[str]] = {}
        self._segments: deque[Segment] = deque()  # oldest first; the last one takes appends
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
        recover_claimed(self.spool_dir)
        recover(self.spool_dir, self.on_recover, self._line)
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
        return spool.files(self.spool_dir)

    async def flush(self) -> None:
        """Write one batch now; on failure spool it."""
        batch = [self._rows.popleft() for _ in range(min(self.batch_size, len(self._rows)))]
        if not batch:
            return
        current = self._segments[-1] if self._segments else None
        if current is not None and current.remaining and time.monotonic() - current.opened >= ROTATE_S:
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
            orjson.dumps({"table": table.name, "row": {n: values[n] for n in names}}, default=encode) + b"\n"
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
            self._segments.append(Segment(self.spool_dir / f"wal-{self._id}-{self._wal_seq}{WAL_SUFFIX}"))
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

    def _insert(self, by_table: spool.ByTable) -> None:
        with self.engine.begin() as conn:
            for table, values in by_table.items():
                key = (table.name, conn.dialect.name)
                statement = self._statements.get(key)
                if statement is None:
                    statement = self._statements[key] = Insert(table, conn.dialect)
                conn.exec_driver_sql(statement.sql, statement.params(values))

    # --- spool -----------------------------------------------------------------------------

    def _spool(self, rows: list[SQLModel]) -> bool:
        return spool.append(self.spool_dir, self._id, b"".join(self._line(r) for r in rows), len(rows))

    def replay(self) -> int:
        """Insert every spooled row (synchronous; call in a thread). Returns rows replayed."""
        total, error = spool.replay(self.spool_dir, self.batch_size, self._insert, self._insert_one_by_one)
        if error is not None:
            self._failed(error)
        elif not self.healthy:
            self.healthy = True  # every spooled row went in: the database is back
            log.warning("database is back")
        if total:
            log.warning("replayed %d spooled rows", total)
        return total

    def _insert_one_by_one(self, by_table: spool.ByTable, source: str) -> None:
        """The database is up but refused a batch: keep the good rows, quarantine the bad ones."""
        spool.insert_one_by_one(self._insert, self.spool_dir, by_table, source)
