"""The writer's spool: rows the database could not take, appended to JSON-lines files, and replayed.

Several processes may share one spool directory: a file is claimed by renaming it, and appends check
that the file they locked is still the one at the path.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Table

from gateway import metrics
from gateway.store.rows import UNREACHABLE, decode, encode, tables
from gateway.store.wal import SUFFIX

log = logging.getLogger("gateway.writer")
ByTable = Mapping[Table, list[Mapping[str, Any]]]
Insert_ = Callable[[ByTable], None]


def files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob(f"*{SUFFIX}")) if spool_dir.is_dir() else []


def append(spool_dir: Path, name: str, lines: bytes, n: int) -> bool:
    """Append ``n`` rows' ``lines`` to this process's spool file (``name``), fsynced; False when that failed."""
    path = spool_dir / f"{name}{SUFFIX}"
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
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
        metrics.WRITER_ROWS.labels("spooled").inc(n)
        return True
    except Exception:
        metrics.WRITER_ROWS.labels("lost").inc(n)
        log.exception("could not spool %d rows (their write-ahead file is kept for the next start)", n)
        return False


def replay(
    spool_dir: Path, batch_size: int, insert: Insert_, one_by_one: Callable[[ByTable, str], None]
) -> tuple[int, Exception | None]:
    """Insert every spooled row (synchronous). Returns the rows replayed, and the error that stopped it
    (the database went away: that file is kept, and the rest wait) or None when every file went in."""
    table_of = tables()
    total = 0
    for path in files(spool_dir):
        claimed = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.replaying")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            continue  # another process claimed it
        with open(claimed, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # waits for an append in progress; held while replaying
            lines = [line for line in f.read().splitlines() if line.strip()]
            try:
                for i in range(0, len(lines), batch_size):
                    by_table: dict[Table, list[Mapping[str, Any]]] = {}
                    for line in lines[i : i + batch_size]:
                        try:
                            item = orjson.loads(line)
                            table = table_of[item["table"]]
                            values = decode(table, item["row"])
                        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                            # A torn or foreign line must not block every row after it.
                            log.error("skipping an unreadable spooled row in %s", path.name)
                            metrics.WRITER_ROWS.labels("lost").inc()
                            continue
                        by_table.setdefault(table, []).append(values)
                    try:
                        insert(by_table)
                    except UNREACHABLE:
                        raise
                    except Exception:  # a refused batch is retried row by row  # noqa: BLE001
                        one_by_one(by_table, path.name)
            except Exception as exc:  # the file is kept for the next replay  # noqa: BLE001
                os.rename(claimed, path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{SUFFIX}"))
                return total, exc
            os.unlink(claimed)
        total += len(lines)
        metrics.WRITER_ROWS.labels("replayed").inc(len(lines))
    return total, None


def insert_one_by_one(insert: Insert_, spool_dir: Path, by_table: ByTable, source: str) -> None:
    """The database is up but refused a batch: keep the good rows, quarantine the bad ones."""
    for table, rows in by_table.items():
        for values in rows:
            try:
                insert({table: [values]})
            except UNREACHABLE:
                raise
            except Exception as exc:  # a refused row is quarantined  # noqa: BLE001
                log.error("quarantining a %s row the database refused (%s)", table.name, type(exc).__name__)
                metrics.WRITER_ROWS.labels("rejected").inc()
                line = orjson.dumps({"table": table.name, "row": values}, default=encode) + b"\n"
                with open(spool_dir / f"rejected-{source}.bad", "ab") as f:
                    f.write(line)
