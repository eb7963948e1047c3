"""SQL storage: tables (sqlmodel), the engine, and schema migrations (alembic).

SQLite is the embedded default and PostgreSQL the production choice; the same models and
migrations serve both. The request path never waits on SQL: reads are cached by their owners
and writes go through the batched writer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlmodel import Field, SQLModel, create_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    key_id: str = Field(primary_key=True, max_length=32)
    secret_hash: str = Field(max_length=64)
    tenant: str = Field(index=True, max_length=128)
    app: str = Field(max_length=128)
    models: str = Field(default="", description="comma-separated public model names; '*' for all")
    scopes: str = Field(default="", description="comma-separated scopes")
    name: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None)


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so several workers can share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # An erased row's bytes are overwritten, not left in free pages.
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _alembic(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` with alembic. Processes that start together take
    turns: PostgreSQL through an advisory lock (migrations/env.py), a SQLite file through a lock file
    next to it."""
    import contextlib
    import fcntl

    from alembic import command

    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") and ":memory:" not in url else None
    with contextlib.ExitStack() as stack:
        if path:
            lock = stack.enter_context(open(f"{path}.migrate-lock", "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        command.upgrade(_alembic(url), revision)


def schema_is_current(url: str) -> bool:
    """Whether the database at ``url`` is at the newest migration (False when it cannot be reached)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return bool(MigrationContext.configure(conn).get_current_revision() == head)
    except Exception:  # not reachable yet  # noqa: BLE001
        return False
    finally:
        engine.dispose()


class Consent(SQLModel, table=True):
    """An explicit consent of a data subject (by pseudonym) for one purpose."""

    __tablename__ = "consents"

    id: str = Field(primary_key=True, max_length=32)
    tenant: str = Field(max_length=128)
    subject: str = Field(max_length=64, description="keyed HMAC pseudonym, never the raw id")
    purpose: str = Field(max_length=128)
    granted_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = Field(default=None)
    withdrawn_at: datetime | None = Field(default=None)
    evidence_ref: str = Field(default="", max_length=256, description="where the proof of consent lives")


class AuditRecord(SQLModel, table=True):
    """One decision record per request, hash-chained per writer process."""

    __tablename__ = "audit_records"

    request_id: str = Field(primary_key=True, max_length=32)
    chain_id: str = Field(max_length=32)
    seq: int
    at: datetime
    tenant: str = Field(max_length=128)
    app: str = Field(max_length=128)
    key_id: str = Field(max_length=32)
    subject: str | None = Field(default=None, max_length=64)
    model: str = Field(max_length=128)
    endpoint: str = Field(max_length=16)
    policy_hash: str = Field(max_length=64)
    decisions: str = Field(description="JSON list of {policy, action, facts}; counts and ids only")
    attempts: str = Field(description="JSON list of [deployment, outcome]")
    deployment: str | None = Field(default=None, max_length=128)
    jurisdiction: str | None = Field(default=None, max_length=8)
    fallback: str | None = Field(default=None, max_length=64)
    consent_ref: str | None = Field(default=None, max_length=64)
    status: int
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditChainMark(SQLModel, table=True):
    """Where a process's audit chain started and ended (``end`` at a clean stop, or ``recovered`` from the
    write-ahead file a killed process left), so that ``gateway audit verify`` can see a lost tail."""

    __tablename__ = "audit_chain_marks"

    chain_id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(primary_key=True, max_length=16)  # start | end | recovered
    seq: int
    at: datetime


class SubjectKey(SQLModel, table=True):
    """A per-subject key: the ledger and the audit trail store ``link(key, pseudonym)``, never the
    pseudonym. Erasure deletes the keys, and the rows that hold the links can no longer be tied to
    the subject (crypto-shredding), while the audit chain still verifies."""

    __tablename__ = "subject_keys"

    id: str = Field(primary_key=True, max_length=32)
    tenant: str = Field(max_length=128)
    subject: str = Field(max_length=64, description="keyed HMAC pseudonym")
    key: str = Field(max_length=64, description="hex of 32 random bytes")
    created_at: datetime = Field(default_factory=utcnow)


class SubjectErasure(SQLModel, table=True):
    """One erasure job. ``target`` (a keyed hash of tenant and pseudonym under the server secret) lets an
    interrupted job be resumed; it is cleared when the job finishes, leaving counts and the receipt."""

    __tablename__ = "subject_erasures"

    id: str = Field(primary_key=True, max_length=32)
    tenant: str = Field(max_length=128)
    target: str | None = Field(default=None, max_length=64)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = Field(default=None)
    counts: str = Field(default="{}", description="JSON: rows erased or unlinked per layer so far")
    receipt: str | None = Field(default=None, description="the signed receipt, JSON")


class AuditCheckpoint(SQLModel, table=True):
    """Where an audit chain resumes after retention deleted its oldest records: the last deleted record's
    sequence number and hash, how many were removed in all, signed under ``server.secret_key``."""

    __tablename__ = "audit_checkpoints"

    id: str = Field(primary_key=True, max_length=32)
    chain_id: str = Field(max_length=32, index=True)
    seq: int
    hash: str = Field(max_length=64)
    removed: int
    at: datetime = Field(default_factory=utcnow)
    signature: str = Field(max_length=64)


class JobLock(SQLModel, table=True):
    """A lease on a job only one worker may run at a time (the retention purge)."""

    __tablename__ = "job_locks"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=64)
    expires_at: datetime
