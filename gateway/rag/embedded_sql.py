"""The embedded index's file: its schema, how it is opened, and the plain queries on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    collection TEXT NOT NULL, id TEXT NOT NULL, tenant TEXT NOT NULL, source TEXT NOT NULL,
    text TEXT NOT NULL, content_hash TEXT NOT NULL, subject TEXT, ingested_at REAL NOT NULL,
    metadata BLOB, vector BLOB NOT NULL, PRIMARY KEY (collection, id));
CREATE INDEX IF NOT EXISTS chunks_source ON chunks (collection, tenant, source);
CREATE INDEX IF NOT EXISTS chunks_subject ON chunks (subject) WHERE subject IS NOT NULL;
"""


def connect(path: Path) -> sqlite3.Connection:
    """The index file, made if missing. ``secure_delete``: a deleted chunk (an erased subject's) is
    overwritten in the file, not left in a free page."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;" + _SCHEMA)
    return db


def count(db: sqlite3.Connection, collection: str, tenant: str) -> int:
    row = db.execute("SELECT COUNT(*) FROM chunks WHERE collection = ? AND tenant = ?", (collection, tenant))
    return int(row.fetchone()[0])


def count_where(db: sqlite3.Connection, where: str, args: tuple[object, ...]) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM chunks WHERE {where}", args).fetchone()[0])


def existing_ids(db: sqlite3.Connection, collection: str, tenant: str, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        part = list(ids[i : i + 500])
        found.update(
            r[0]
            for r in db.execute(
                f"SELECT id FROM chunks WHERE collection = ? AND +tenant = ? AND id IN ({','.join('?' * len(part))})",
                (collection, tenant, *part),
            )
        )
    return found


def subject_sources(db: sqlite3.Connection, tenant: str, subject: str) -> list[tuple[str, str, int]]:
    rows = db.execute(
        "SELECT collection, source, COUNT(*) FROM chunks WHERE tenant = ? AND subject = ? "
        "GROUP BY collection, source ORDER BY collection, source",
        (tenant, subject),
    ).fetchall()
    return [(c, s, int(n)) for c, s, n in rows]
