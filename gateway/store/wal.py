"""The writer's files: write-ahead segments (one ``write(2)`` per queued row, each file locked by its
live process) and what a start-up does with the files a killed process or replayer left behind."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlmodel import SQLModel

from gateway.store.rows import loads

log = logging.getLogger("gateway.writer")

SUFFIX = ".jsonl"
WAL_SUFFIX = ".wal"
ROTATE_S = 10.0  # a write-ahead file takes appends this long before the next flush starts another


class Segment:
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
                os.rename(self.path, self.path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{SUFFIX}"))
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)


def recover(
    spool_dir: Path,
    on_recover: Callable[[list[dict[str, Any]]], Sequence[SQLModel]] | None,
    line: Callable[[SQLModel], bytes],
) -> None:
    """Write-ahead files no live process holds (it was killed) go to the spool, to be replayed."""
    for path in spool_dir.glob(f"wal-*{WAL_SUFFIX}"):
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
            recovered = path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{SUFFIX}")
            os.rename(path, recovered)
            log.warning("recovering %s, left by a process that did not stop cleanly", path.name)
            if on_recover is not None:
                with open(recovered, "rb") as f:
                    items = [item for item in map(loads, f.read().splitlines()) if isinstance(item, dict)]
                extra = on_recover(items)
                if extra:
                    with open(recovered, "ab") as f:
                        f.write(b"".join(line(row) for row in extra))
        except OSError:
            log.exception("could not recover %s", path.name)
        finally:
            os.close(fd)


def recover_claimed(spool_dir: Path) -> None:
    """Files claimed by a replayer that died are put back for the next replay."""
    for path in spool_dir.glob("*.replaying"):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live replayer holds the lock
            os.rename(path, path.with_name(f"recovered-{uuid.uuid4().hex[:8]}{SUFFIX}"))
