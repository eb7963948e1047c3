"""The same gateway on PostgreSQL and Redis, used for real."""

from __future__ import annotations

import httpx
import pytest

from gateway import auth
from gateway.devupstream import DevUpstream
from gateway.store.db import make_engine, upgrade
from tests.conftest import REDIS_URL, make_config


def test_keys_round_trip_on_postgres(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    key, row = auth.create_key(engine, tenant="hr", app="bot", models=["m"], scopes=["chat"])
    assert row.secret_hash not in key and key.startswith("sk-gw-")
    assert [r.key_id for r in auth.list_keys(engine, "hr")] == [row.key_id]
    assert auth.revoke_key(engine, row.key_id)
    assert not auth.revoke_key(engine, row.key_id)


def test_migrations_are_idempotent(postgres_url: str) -> None:
    upgrade(postgres_url)
    upgrade(postgres_url)


def test_gateway_serves_from_postgres_and_reports_redis_ready(
    gateway_factory, upstream: DevUpstream, postgres_url: str  # type: ignore[no-untyped-def]
) -> None:
    gw = gateway_factory(make_config(upstream, storage={"database_url": postgres_url, "redis_url": REDIS_URL}))
    resp = httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {gw.key()}"},
                      json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    assert httpx.get(f"{gw.url}/readyz").json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_is_503_when_redis_is_down(gateway_factory, upstream: DevUpstream) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(make_config(upstream, storage={"database_url": "sqlite:///:memory:",
                                                       "redis_url": "redis://127.0.0.1:1/0"}))
    resp = httpx.get(f"{gw.url}/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["redis"].startswith("error")


@pytest.mark.parametrize("scopes", [["chat", "bogus"], ["ROOT"]])
def test_unknown_scopes_are_rejected(sqlite_url: str, scopes: list[str]) -> None:
    upgrade(sqlite_url)
    with pytest.raises(ValueError, match="unknown scope"):
        auth.create_key(make_engine(sqlite_url), tenant="t", app="a", models=["*"], scopes=scopes)
