"""Records survive SIGKILL: every answered request has its ledger row and its audit record.

A real ``gateway serve`` process takes load from 32 concurrent clients and is killed with
SIGKILL. The writer is configured so that nothing reaches SQL before the kill (a 60 s flush
interval, batches larger than the load): every row must come back from the write-ahead file
when the next process starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import yaml
from sqlmodel import Session, col, select

from gateway import auth
from gateway.app import Gateway
from gateway.audit import verify
from gateway.bundle import BundleHolder, load_bundle
from gateway.dev import DevUpstream
from gateway.store.db import AuditRecord, make_engine, upgrade
from gateway.store.ledger import UsageRecord
from tests.accounting_support import CHAT, policy_file, priced_config
from tests.conftest import free_port

SECRET = "k" * 48


def _serve(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GATEWAY_SECRET": SECRET, "GATEWAY_LOG_LEVEL": "WARNING"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli_main", "serve", "--config", str(config), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gateway did not start: {log.read_text()[-2000:]}")


async def _load(url: str, key: str, seconds: float, answered: list[str], kill: Any) -> None:
    """32 clients in a closed loop; ``kill`` runs once the load has been going for ``seconds``."""
    stop = asyncio.Event()
    headers = {"Authorization": f"Bearer {key}"}

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}} if i % 4 == 0 else CHAT
        while not stop.is_set():
            try:
                async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
                    payload = await resp.read()
                    # Answered: a complete JSON body, or a stream the client read to [DONE].
                    if resp.status == 200 and (not body.get("stream") or b"data: [DONE]" in payload):
                        answered.append(resp.headers["x-gateway-request-id"])
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = [asyncio.create_task(client(session, i)) for i in range(32)]
        await asyncio.sleep(seconds)
        kill()
        await asyncio.sleep(0.5)  # the requests in flight fail now
        stop.set()
        await asyncio.gather(*tasks)


def test_sigkill_under_load_loses_no_row_of_an_answered_request(
    upstream: DevUpstream, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'gateway.db'}"
    policies, _ = policy_file(tmp_path)
    config = priced_config(upstream).model_dump(mode="json")
    config["storage"] = {
        "database_url": db,
        "spool_dir": str(tmp_path / "spool"),
        "writer_flush_interval_s": 60,
        "writer_batch_size": 100_000,
    }
    config["server"] = {**config["server"], "policies_dir": str(policies), "secret_key": SECRET}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    upgrade(db)
    engine = make_engine(db)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    key, _ = auth.create_key(engine, tenant=tenant, app="chat", models=["*"], scopes=["chat"])
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = _serve(path, port, log)
    answered: list[str] = []
    try:
        asyncio.run(
            _load(f"http://127.0.0.1:{port}", key, 3.0, answered, lambda: proc.send_signal(signal.SIGKILL))
        )
        assert proc.wait(10) == -signal.SIGKILL
        assert len(answered) > 100, "the load did not get going"
        with Session(engine) as s:  # nothing was flushed to SQL before the kill: the WAL is what is tested
            assert not s.exec(select(UsageRecord.request_id).where(UsageRecord.tenant == tenant)).all()
        assert list((tmp_path / "spool").glob("wal-*.wal")), "no write-ahead file was left behind"

        proc = _serve(path, port, log)  # start-up replays what the killed process had not written
        ids = set(answered)
        deadline = time.monotonic() + 30
        while True:
            with Session(engine) as s:
                ledger = set(s.exec(select(UsageRecord.request_id).where(UsageRecord.tenant == tenant)).all())
                audit = set(s.exec(select(AuditRecord.request_id).where(AuditRecord.tenant == tenant)).all())
            if (ids <= ledger and ids <= audit) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not ids - ledger, f"{len(ids - ledger)} of {len(ids)} answered requests have no ledger row"
        assert not ids - audit, f"{len(ids - audit)} of {len(ids)} answered requests have no audit record"
        checked, problems = verify(engine)
        assert checked >= len(ids)
        assert problems == []
        # The killed chain was closed from its write-ahead file: losing its newest record is now visible.
        with Session(engine) as s:
            killed = s.exec(select(AuditRecord).where(AuditRecord.request_id == answered[-1])).one()
            newest = s.exec(
                select(AuditRecord)
                .where(AuditRecord.chain_id == killed.chain_id)
                .order_by(col(AuditRecord.seq).desc())
            ).first()
            assert newest is not None
            chain, seq = killed.chain_id, newest.seq  # read before the commit expires the instances
            s.delete(newest)
            s.commit()
        assert verify(engine)[1] == [f"chain {chain}: records {seq}..{seq} are missing (end of chain)"]
    finally:
        proc.kill()
        proc.wait(10)
        engine.dispose()


def _ordered_events(gw: Gateway, key: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """Run one request through the ASGI app in-process; return writer puts and ASGI sends in order."""
    events: list[tuple[str, Any]] = []
    put = gw.writer.put

    def spying_put(row: Any) -> None:
        events.append(("put", row.__tablename__))
        put(row)

    gw.writer.put = spying_put  # type: ignore[method-assign]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "extensions": {},
        "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")],
    }
    messages = [{"type": "http.request", "body": orjson.dumps(body), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        events.append(("send", message))

    async def run() -> None:
        await gw.startup()
        try:
            await gw(scope, receive, send)
        finally:
            await gw.shutdown()

    asyncio.run(run())
    gw.writer.put = put  # type: ignore[method-assign]
    return events


def _last_byte(events: list[tuple[str, Any]], marker: bytes | None) -> int:
    """Index of the send that completes the answer: the one carrying ``marker``, else the last body send."""
    sends = [i for i, (kind, m) in enumerate(events) if kind == "send" and m["type"] == "http.response.body"]
    if marker is not None:
        return next(i for i in sends if marker in events[i][1]["body"])
    return sends[-1]


@pytest.mark.parametrize(
    ("body", "marker", "broken"),
    [
        (CHAT, None, False),
        ({**CHAT, "stream": True}, b"data: [DONE]", False),
        ({**CHAT, "stream": True, "stream_options": {"include_usage": True}}, b"data: [DONE]", False),
        (CHAT, None, True),  # every upstream down: the 502 is the answer
    ],
    ids=["json", "stream", "stream-usage", "upstream-error"],
)
def test_ledger_row_and_audit_record_are_queued_before_the_last_byte(
    upstream: DevUpstream,
    tmp_path: Path,
    body: dict[str, Any],
    marker: bytes | None,
    broken: bool,
) -> None:
    policies, _ = policy_file(tmp_path)
    config = priced_config(
        upstream,
        storage={"database_url": f"sqlite:///{tmp_path / 'g.db'}", "spool_dir": str(tmp_path / "spool")},
    )
    if broken:
        eu = {
            **config.deployments["eu-primary"].model_dump(mode="json"),
            "base_url": f"http://127.0.0.1:{free_port()}",
        }
        config = priced_config(
            upstream,
            storage=config.storage.model_dump(mode="json"),
            deployments={
                **{n: d.model_dump(mode="json") for n, d in config.deployments.items()},
                "eu-primary": eu,
            },
        )
    upgrade(config.storage.database_url)
    gw = Gateway(config, bundle=BundleHolder(load_bundle([policies])))
    key, _ = auth.create_key(gw.engine, tenant="t", app="a", models=["*"], scopes=["chat"])
    events = _ordered_events(gw, key, body)
    start = next(m for kind, m in events if kind == "send" and m["type"] == "http.response.start")
    assert start["status"] == (502 if broken else 200)
    last = _last_byte(events, marker)
    puts = [
        (i, table)
        for i, (kind, table) in enumerate(events)
        if kind == "put" and table in ("usage_ledger", "audit_records")
    ]
    assert sorted(table for _, table in puts) == ["audit_records", "usage_ledger"]
    assert all(i < last for i, _ in puts), f"records queued after the answer's last byte: {events}"
