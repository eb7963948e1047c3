"""Retention (config.yaml ``retention:``): what is past its period goes, in every data class, and the
audit chains still verify from their signed checkpoints. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, text
from sqlmodel import Session, select
from typer.testing import CliRunner

from gateway import audit, metrics, retention
from gateway.auth import Principal
from gateway.cli import app as cli
from gateway.config import Config
from gateway.dev import DevUpstream
from gateway.policy import Context
from gateway.rag.embedded import EmbeddedIndex
from gateway.store import consent
from gateway.store.db import AuditCheckpoint, make_engine, upgrade, utcnow
from gateway.store.ledger import UsageRecord
from gateway.store.rows import DirectWriter
from tests.conftest import make_config
from tests.rag_support import make_chunks

OLD = timedelta(days=100)
SECRET = "retention-test-secret"


def _config(engine: Engine, tmp_path: Path, **periods: str) -> Config:
    return make_config(
        cast(DevUpstream, _NoUpstream()),  # make_config reads only its url
        storage={
            "database_url": engine.url.render_as_string(hide_password=False),
            "spool_dir": str(tmp_path / "spool"),
        },
        server={"secret_key": SECRET, "policies_dir": "/nonexistent"},
        rag={"embedded": {"path": str(tmp_path / "rag-index")}},
        retention=periods,
    )


class _NoUpstream:
    url = "http://127.0.0.1:9/v1"


def _ledger_row(request_id: str, age: timedelta) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        at=utcnow() - age,
        tenant="acme",
        app="bot",
        key_id="k",
        model="m",
        cost_eur=Decimal(1),
    )


def _chain(engine: Engine, monkeypatch: pytest.MonkeyPatch, ages: list[timedelta]) -> audit.Auditor:
    """A chain with one record per age, oldest first."""
    auditor = audit.Auditor(DirectWriter(engine))
    auditor.start()
    for age in ages:
        monkeypatch.setattr(audit, "utcnow", lambda age=age: utcnow() - age)
        ctx = Context(
            principal=Principal("k", "acme", "bot", frozenset(), frozenset()),
            endpoint="chat",
            model="m",
            candidates=[],
        )
        ctx.status = 200
        auditor.record(ctx)
    monkeypatch.setattr(audit, "utcnow", utcnow)
    return auditor


def _ids(engine: Engine, table: str, key: str) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text(f"SELECT {key} FROM {table}"))}


def test_periods_are_whole_hours_days_or_weeks_and_never_zero_or_negative() -> None:
    parsed = Config.model_validate(
        {**_minimal(), "retention": {"ledger": "400d", "audit": "52w", "spool": "12h"}}
    )
    assert parsed.retention.periods() == {
        "ledger": timedelta(days=400),
        "audit": timedelta(weeks=52),
        "spool": timedelta(hours=12),
    }
    assert parsed.retention.model_dump()["ledger"] == "400d"
    for bad in ("0d", "-5d", "0h", "ten days", "5m", 30):
        with pytest.raises(ValidationError) as exc:
            Config.model_validate({**_minimal(), "retention": {"ledger": bad}})
        assert exc.value.errors()[0]["loc"] == ("retention", "ledger"), bad


def _minimal() -> dict[str, Any]:
    return {
        "deployments": {
            "eu": {
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "m",
                "jurisdiction": "EU",
                "region": "x",
            }
        },
        "models": {"m": {"deployments": ["eu"]}},
    }


def test_purge_deletes_each_class_past_its_period_and_audit_verifies_from_the_checkpoint(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = os.urandom(4).hex()  # the PostgreSQL database is shared by the session
    config = _config(
        engine, tmp_path, ledger="30d", audit="30d", consent_history="30d", rag_chunks="30d", spool="1d"
    )
    writer = DirectWriter(engine)
    writer.put(_ledger_row(f"old-{tag}", OLD))
    writer.put(_ledger_row(f"new-{tag}", timedelta(days=1)))
    withdrawn, active_old, recent = (
        consent.grant(engine, tenant="acme", subject=f"{n}-{tag}", purpose="p").id for n in ("s1", "s2", "s3")
    )
    with engine.begin() as conn:
        for cid, age in ((withdrawn, OLD), (recent, timedelta(days=2))):
            conn.execute(
                text("UPDATE consents SET withdrawn_at = :at WHERE id = :id"),
                {"at": utcnow() - age, "id": cid},
            )
    old_chain = _chain(engine, monkeypatch, [OLD, OLD, OLD, timedelta(days=1), timedelta(0)])
    gone_chain = _chain(engine, monkeypatch, [OLD, OLD])
    gone_chain.close()
    index = EmbeddedIndex(tmp_path / "rag-index")
    old_chunks = make_chunks("acme", ["An old handbook page."])
    asyncio.run(index.upsert("handbook", old_chunks))
    with index._lock:
        index._db.execute("UPDATE chunks SET ingested_at = ?", (time.time() - OLD.total_seconds(),))
    asyncio.run(index.upsert("handbook", make_chunks("acme", ["A new handbook page."], source="new.md")))
    asyncio.run(index.close())
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "rejected-x.bad").write_text("{}\n")
    (spool / "live.wal").write_text("{}\n")
    for name in ("rejected-x.bad", "live.wal"):
        os.utime(spool / name, (time.time() - 3 * 86400,) * 2)

    dry = asyncio.run(retention.purge(config, engine, dry_run=True))
    assert dry["ledger"] >= 1
    assert dry["audit"] >= 5
    assert (dry["rag_chunks"], dry["spool"]) == (1, 1)
    assert f"old-{tag}" in _ids(engine, "usage_ledger", "request_id")  # a dry run deletes nothing

    before = metrics.RETENTION_DELETED.labels("ledger")._value.get()
    counts = asyncio.run(retention.purge(config, engine))
    assert counts == dry
    assert metrics.RETENTION_DELETED.labels("ledger")._value.get() - before == counts["ledger"]
    ledger = _ids(engine, "usage_ledger", "request_id")
    assert f"old-{tag}" not in ledger
    assert f"new-{tag}" in ledger
    consents = _ids(engine, "consents", "id")
    assert withdrawn not in consents
    assert {active_old, recent} <= consents  # active (however old), or withdrawn recently
    with engine.connect() as conn:
        seqs = [
            r[0]
            for r in conn.execute(
                text("SELECT seq FROM audit_records WHERE chain_id = :c ORDER BY seq"),
                {"c": old_chain.chain_id},
            )
        ]
    assert seqs == [4, 5]
    assert sorted(p.name for p in spool.iterdir()) == ["live.wal"]  # a live write-ahead file is never touched
    index = EmbeddedIndex(tmp_path / "rag-index")
    assert asyncio.run(index.count("handbook", "acme")) == 1
    asyncio.run(index.close())

    # The chains verify from their signed checkpoints, also a chain retention emptied.
    _, problems = audit.verify(engine, SECRET)
    assert [p for p in problems if old_chain.chain_id in p or gone_chain.chain_id in p] == []
    with Session(engine) as s:
        cp = s.exec(select(AuditCheckpoint).where(AuditCheckpoint.chain_id == old_chain.chain_id)).one()
    assert (cp.seq, cp.removed) == (3, 3)
    # A changed checkpoint is reported, and is not used: the deleted records show as missing.
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_checkpoints SET removed = 2 WHERE id = :id"), {"id": cp.id})
    _, problems = audit.verify(engine, SECRET)
    mine = [p for p in problems if old_chain.chain_id in p]
    assert f"chain {old_chain.chain_id}: the checkpoint at seq 3 was modified" in mine
    assert f"chain {old_chain.chain_id}: records 1..3 are missing" in mine
    # A second purge finds nothing more, and adds no checkpoint.
    again = asyncio.run(retention.purge(config, engine))
    assert (again["audit"], again["rag_chunks"], again["spool"]) == (0, 0, 0)


def test_only_one_worker_holds_the_purge_lease_until_it_expires(engine: Engine) -> None:
    name = f"test-{os.urandom(4).hex()}"
    hour = timedelta(hours=1)
    assert retention.acquire(engine, "a", hour, name)
    assert not retention.acquire(engine, "b", hour, name)
    assert retention.acquire(engine, "a", hour, name)  # the holder renews
    assert retention.acquire(engine, "a", -hour, name)  # renewed into the past: expired
    assert retention.acquire(engine, "b", hour, name)
    assert not retention.acquire(engine, "a", hour, name)


def test_a_serving_gateway_purges_on_its_schedule(engine: Engine, tmp_path: Path) -> None:
    tag = os.urandom(4).hex()
    config = _config(engine, tmp_path, ledger="30d")
    DirectWriter(engine).put(_ledger_row(f"sched-{tag}", OLD))

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(retention.schedule(config, engine, stop))
        for _ in range(200):
            if f"sched-{tag}" not in _ids(engine, "usage_ledger", "request_id"):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(run())
    assert f"sched-{tag}" not in _ids(engine, "usage_ledger", "request_id")


def test_cli_dry_run_reports_and_deletes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    config_file = tmp_path / "config.yaml"
    base = f"""
deployments:
  eu: {{kind: openai_compatible, base_url: "http://127.0.0.1:9/v1", model: m, jurisdiction: EU, region: x}}
models:
  m: {{deployments: [eu]}}
storage: {{database_url: "{url}", spool_dir: "{tmp_path / "spool"}"}}
server: {{policies_dir: /nonexistent, secret_key: {SECRET}}}
"""
    config_file.write_text(base)
    none = CliRunner().invoke(cli, ["retention", "run", "-c", str(config_file)])
    assert none.exit_code == 0
    assert "no retention period" in none.output
    config_file.write_text(base + "retention: {ledger: 30d}\n")
    upgrade(url)
    engine = make_engine(url)
    DirectWriter(engine).put(_ledger_row("old", OLD))
    dry = CliRunner().invoke(cli, ["retention", "run", "--dry-run", "-c", str(config_file)])
    assert dry.exit_code == 0, dry.output
    assert "ledger           would delete 1  (older than 30d)" in dry.output
    assert _ids(engine, "usage_ledger", "request_id") == {"old"}
    done = CliRunner().invoke(cli, ["retention", "run", "-c", str(config_file)])
    assert "ledger           deleted 1" in done.output
    assert _ids(engine, "usage_ledger", "request_id") == set()
    config_file.write_text(base + "retention: {ledger: 0d}\n")
    bad = CliRunner().invoke(cli, ["retention", "run", "-c", str(config_file)])
    assert bad.exit_code == 2
    assert "retention.ledger" in bad.output


def _checkpoint(engine: Engine, chain: str, seq: int, removed: int, secret: str = SECRET) -> str:
    """A checkpoint as retention writes it: after seq ``seq``, whose hash it takes from the chain."""
    from gateway.identity import signer

    with engine.connect() as conn:
        hash_ = conn.execute(
            text("SELECT hash FROM audit_records WHERE chain_id = :c AND seq = :s"), {"c": chain, "s": seq}
        ).scalar_one()
    cid = os.urandom(8).hex()
    signature = signer(secret, audit.CHECKPOINT)(audit.checkpoint_message(chain, seq, hash_, removed))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_checkpoints (id, chain_id, seq, hash, removed, at, signature) "
                "VALUES (:id, :c, :s, :h, :r, :at, :sig)"
            ),
            {"id": cid, "c": chain, "s": seq, "h": hash_, "r": removed, "at": utcnow(), "sig": signature},
        )
    return cid


def _mine(engine: Engine, chain: str, secret: str | None = SECRET) -> list[str]:
    _, problems = audit.verify(engine, secret)
    return [p for p in problems if chain in p]


def test_a_purge_interrupted_after_its_checkpoint_still_verifies(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = _chain(engine, monkeypatch, [OLD] * 5).chain_id
    _checkpoint(engine, chain, 3, 3)  # the checkpoint went in; the deletes did not happen
    assert _mine(engine, chain) == []
    with engine.begin() as conn:  # then records 1..2 went, 3 did not
        conn.execute(text("DELETE FROM audit_records WHERE chain_id = :c AND seq < 3"), {"c": chain})
    assert _mine(engine, chain) == []
    with engine.begin() as conn:  # a record after the checkpoint is still checked
        conn.execute(
            text("UPDATE audit_records SET model = 'x' WHERE chain_id = :c AND seq = 4"), {"c": chain}
        )
    assert [p.split(": ", 1)[1] for p in _mine(engine, chain)] == ["record was modified"]


def test_the_newest_valid_checkpoint_of_a_chain_is_the_one_used(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = _chain(engine, monkeypatch, [OLD] * 6).chain_id
    _checkpoint(engine, chain, 4, 4)  # written first, but the newer one
    _checkpoint(engine, chain, 2, 2)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_records WHERE chain_id = :c AND seq <= 4"), {"c": chain})
    assert _mine(engine, chain) == []
    # An older checkpoint that was tampered with is reported, and the newer valid one still holds.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_checkpoints SET removed = 9 WHERE chain_id = :c AND seq = 2"), {"c": chain}
        )
    assert _mine(engine, chain) == [f"chain {chain}: the checkpoint at seq 2 was modified"]


def test_without_the_secret_checkpoints_are_used_but_their_signatures_not_checked(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = _chain(engine, monkeypatch, [OLD] * 3).chain_id
    _checkpoint(engine, chain, 2, 2, secret="another-deployments-secret")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_records WHERE chain_id = :c AND seq <= 2"), {"c": chain})
    assert _mine(engine, chain, None) == []  # as `gateway audit verify` without a config's secret
    assert _mine(engine, chain) == [
        f"chain {chain}: the checkpoint at seq 2 was modified",
        f"chain {chain}: records 1..2 are missing",
    ]


def test_the_schedule_logs_each_round_and_tries_again_after_a_failure(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Round one fails (the database away), round two purges: both are logged, and the interval between
    rounds is kept (shortened here below the configurable hour)."""
    config = _config(engine, tmp_path, ledger="30d")
    fast = config.retention.model_copy(update={"interval": timedelta(seconds=0.1)})
    config = config.model_copy(update={"retention": fast})
    rounds: list[int] = []

    async def purge(cfg: Config, eng: Engine) -> dict[str, int]:
        rounds.append(1)
        if len(rounds) == 1:
            raise ConnectionError("database away")
        return {"ledger": 3}

    monkeypatch.setattr(retention, "purge", purge)
    monkeypatch.setattr(retention, "acquire", lambda *_: True)  # another test's worker may hold the lease

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(retention.schedule(config, engine, stop))
        for _ in range(100):
            if len(rounds) >= 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    with caplog.at_level("INFO", logger="gateway"):
        asyncio.run(run())
    assert len(rounds) >= 2
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "gateway.retention"]
    assert ("WARNING", "retention purge failed (ConnectionError)") in messages
    done = [m for level, m in messages if level == "INFO" and m.startswith("retention purge: ")]
    assert done
    assert done[0].startswith("retention purge: {'ledger': 3} in ")
    assert done[0].endswith(" s")


def test_the_schedule_does_nothing_without_periods(engine: Engine, tmp_path: Path) -> None:
    stop = asyncio.Event()  # never set: with no period the schedule returns at once
    asyncio.run(asyncio.wait_for(retention.schedule(_config(engine, tmp_path), engine, stop), 5))


def test_purges_count_every_batch_and_take_expired_consents(engine: Engine, tmp_path: Path) -> None:
    tag = os.urandom(4).hex()
    config = _config(engine, tmp_path, ledger="30d", consent_history="30d", spool="1d", rag_chunks="30d")
    config = config.model_copy(update={"retention": config.retention.model_copy(update={"batch_size": 2})})
    writer = DirectWriter(engine)
    for i in range(5):
        writer.put(_ledger_row(f"batch-{tag}-{i}", OLD))
    expired, current = (
        consent.grant(engine, tenant="acme", subject=f"{n}-{tag}", purpose="p").id for n in ("e1", "e2")
    )
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE consents SET expires_at = :at WHERE id = :id"), {"at": utcnow() - OLD, "id": expired}
        )
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "spilled-1.jsonl").write_text("{}\n")
    os.utime(spool / "spilled-1.jsonl", (time.time() - 3 * 86400,) * 2)
    counts = asyncio.run(retention.purge(config, engine))
    assert counts["ledger"] >= 5  # 3 batches of at most 2, all counted
    assert not any(r.startswith(f"batch-{tag}") for r in _ids(engine, "usage_ledger", "request_id"))
    consents = _ids(engine, "consents", "id")
    assert expired not in consents  # expired longer ago than the period, never withdrawn
    assert current in consents
    assert counts["spool"] == 1
    assert not spool.joinpath("spilled-1.jsonl").exists()
    assert counts["rag_chunks"] == 0  # no RAG index was ever made: nothing to count


def test_leases_of_different_jobs_are_independent(engine: Engine) -> None:
    one, other = f"test-{os.urandom(4).hex()}", f"test-{os.urandom(4).hex()}"
    hour = timedelta(hours=1)
    assert retention.acquire(engine, "a", hour, one)
    assert retention.acquire(engine, "b", hour, other)  # another job's lease is free
    assert not retention.acquire(engine, "b", hour, one)
    assert not retention.acquire(engine, "a", hour, other)


def test_a_chain_purged_twice_keeps_one_running_count_and_verifies(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(engine, tmp_path, audit="30d", spool="1d")
    day = timedelta(days=1)
    chain = _chain(engine, monkeypatch, [OLD, OLD, day, day])
    recent = _chain(engine, monkeypatch, [day])  # another chain's seq 1 is recent: it must not shield chain's
    spool = tmp_path / "spool"
    spool.mkdir()
    for name in ("spilled-1.jsonl", "spilled-2.jsonl", "rejected-1.bad"):
        (spool / name).write_text("{}\n")
        os.utime(spool / name, (time.time() - 3 * 86400,) * 2)

    def seqs(chain_id: str) -> list[int]:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT seq FROM audit_records WHERE chain_id = :c ORDER BY seq"), {"c": chain_id}
            )
            return [r[0] for r in rows]

    first = asyncio.run(retention.purge(config, engine))
    assert seqs(chain.chain_id) == [3, 4]
    assert seqs(recent.chain_id) == [1]
    assert first["spool"] == 3
    # Record 3 ages past the period: the second purge removes exactly one, and its checkpoint counts 3.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_records SET at = :at WHERE chain_id = :c AND seq = 3"),
            {"at": utcnow() - OLD, "c": chain.chain_id},
        )
    asyncio.run(retention.purge(config, engine))
    assert seqs(chain.chain_id) == [4]
    with Session(engine) as s:
        marks = s.exec(select(AuditCheckpoint).where(AuditCheckpoint.chain_id == chain.chain_id)).all()
    assert sorted((m.seq, m.removed) for m in marks) == [(2, 2), (3, 3)]
    _, problems = audit.verify(engine, SECRET)
    assert [p for p in problems if chain.chain_id in p or recent.chain_id in p] == []
