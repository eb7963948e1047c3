"""The usage ledger loses nothing and duplicates nothing when PostgreSQL goes away mid-load."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from gateway.dev import DevUpstream
from gateway.store.db import make_engine
from gateway.store.ledger import UsageRecord
from tests.accounting_support import CHAT, policy_file, priced_config
from tests.conftest import RunningGateway
from tests.tcpproxy import TcpProxy


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    # Our own loopback hop in front of the shared server: cutting it affects only this gateway.
    p = TcpProxy("127.0.0.1", 5432).start()
    yield p
    p.stop()


def test_every_request_has_exactly_one_ledger_row_after_postgres_drops_out_mid_load(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    postgres_url: str,
    proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    policies, _ = policy_file(tmp_path)
    config = priced_config(
        upstream,
        storage={
            "database_url": url,
            "spool_dir": str(tmp_path / "spool"),
            "writer_flush_interval_s": 0.05,
            "writer_batch_size": 20,
        },
    )
    gw = gateway_factory(config, policies)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    key = gw.key(tenant=tenant)
    ids: list[str] = []
    lock = threading.Lock()

    def one(client: httpx.Client) -> None:
        resp = client.post(
            f"{gw.base_url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.status_code == 200
        with lock:
            ids.append(resp.headers["x-gateway-request-id"])

    def load(n: int) -> None:
        with httpx.Client(timeout=10) as client, ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: one(client), range(n)))

    load(60)
    proxy.cut()  # PostgreSQL is gone: open connections reset, new ones refused
    load(120)
    spooled = list((tmp_path / "spool").glob("*.jsonl"))
    time.sleep(0.5)
    proxy.restore()
    load(60)
    gw.stop()  # a clean shutdown drains the queue and replays the spool

    assert spooled, "rows were not spooled while the database was unreachable"
    engine = make_engine(postgres_url)
    with Session(engine) as s:
        rows = s.exec(
            select(col(UsageRecord.request_id), func.count())
            .where(col(UsageRecord.tenant) == tenant)
            .group_by(col(UsageRecord.request_id))
        ).all()
    engine.dispose()
    assert len(ids) == 240
    assert {r[0] for r in rows} == set(ids)
    assert all(count == 1 for _, count in rows)
    assert not list((tmp_path / "spool").glob("*.jsonl"))
