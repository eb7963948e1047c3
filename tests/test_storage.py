"""The same gateway on PostgreSQL and Redis, used for real."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine, inspect, text

from gateway import auth
from gateway.dev import DevUpstream
from gateway.store.db import make_engine, upgrade
from tests.conftest import REDIS_URL, make_config


def test_keys_round_trip_on_postgres(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    key, row = auth.create_key(engine, tenant="hr", app="bot", models=["m"], scopes=["chat"])
    assert row.secret_hash not in key
    assert key.startswith("sk-gw-")
    assert [r.key_id for r in auth.list_keys(engine, "hr")] == [row.key_id]
    assert auth.revoke_key(engine, row.key_id)
    assert not auth.revoke_key(engine, row.key_id)


def _schema(engine: Engine) -> dict[str, list[str]]:
    inspector = inspect(engine)
    return {
        t: sorted(c["name"] for c in inspector.get_columns(t)) for t in sorted(inspector.get_table_names())
    }


def test_migrations_are_idempotent(postgres_url: str) -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory
    from sqlmodel import SQLModel

    from gateway.store.db import MIGRATIONS

    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    before = _schema(engine)
    _, row = auth.create_key(engine, tenant="migrations", app="bot", models=["m"], scopes=["chat"])
    upgrade(postgres_url)  # again, on a database already at head and holding data
    assert _schema(engine) == before
    assert set(SQLModel.metadata.tables) <= set(before)  # every table model has its table
    for name, table in SQLModel.metadata.tables.items():
        assert set(before[name]) >= {c.name for c in table.columns}, name
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        versions = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    assert versions == [ScriptDirectory.from_config(cfg).get_current_head()]
    assert [r.key_id for r in auth.list_keys(engine, "migrations")] == [row.key_id]  # data kept
    engine.dispose()


def test_gateway_serves_from_postgres_and_reports_redis_ready(
    gateway_factory, upstream: DevUpstream, postgres_url: str
) -> None:
    gw = gateway_factory(
        make_config(upstream, storage={"database_url": postgres_url, "redis_url": REDIS_URL})
    )
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200
    assert httpx.get(f"{gw.url}/readyz").json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_is_503_when_redis_is_down(gateway_factory, upstream: DevUpstream) -> None:
    gw = gateway_factory(
        make_config(
            upstream, storage={"database_url": "sqlite:///:memory:", "redis_url": "redis://127.0.0.1:1/0"}
        )
    )
    resp = httpx.get(f"{gw.url}/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["redis"].startswith("error")


@pytest.mark.parametrize("scopes", [["chat", "bogus"], ["ROOT"]])
def test_unknown_scopes_are_rejected(sqlite_url: str, scopes: list[str]) -> None:
    upgrade(sqlite_url)
    with pytest.raises(ValueError, match="unknown scope"):
        auth.create_key(make_engine(sqlite_url), tenant="t", app="a", models=["*"], scopes=scopes)
