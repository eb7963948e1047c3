"""Streams are bounded: a client that stops reading is cut off, one key cannot take a deployment's every
slot, a stream ends at the deployment's total_s, and a client that asked for usage gets it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from gateway import audit
from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config, only_primary

_WORD = "x" * 99


@pytest.fixture
def long_upstream() -> Iterator[DevUpstream]:
    """About 8 MB of streamed answer in 4,000 events: more than loopback's socket buffers (4 MiB) hold."""
    server = DevUpstream(reply=" ".join([_WORD] * 80_000), chunks=4_000, chunk_delay_s=0.001).start()
    yield server
    server.stop()


def _stalled_stream(gw: RunningGateway, key: str) -> socket.socket:
    """Open a streaming chat request and never read the answer (a 4 KiB receive window)."""
    body = orjson.dumps(
        {"model": "mistral-7b", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer "
        + key.encode()
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    return sock


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _closed_by_peer(sock: socket.socket, seconds: float) -> bool:
    """Read (now, at last) until the gateway's end is gone."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def test_a_client_that_stops_reading_is_cut_off_and_its_upstream_and_slot_released(
    gateway_factory: Callable[..., RunningGateway], long_upstream: DevUpstream
) -> None:
    config = make_config(long_upstream, server={"stream_write_timeout_s": 0.5})
    gw = gateway_factory(config)
    key = gw.key()
    sock = _stalled_stream(gw, key)
    try:
        assert _wait(lambda: long_upstream.streams_started == 1, 5)
        assert _wait(lambda: long_upstream.streams_aborted == 1, 5), "the upstream kept streaming to nobody"
        assert _wait(lambda: not gw.gateway.router.slots.held, 2), "the key's slot was not released"
        assert long_upstream.streams_completed == 0
        assert _closed_by_peer(sock, 10), "the stalled client's connection is still open"
    finally:
        sock.close()
    gw.stop()
    records = gw.gateway.engine
    from sqlmodel import Session, select

    from gateway.store.db import AuditRecord

    with Session(records) as s:
        statuses = [r.status for r in s.exec(select(AuditRecord))]
    assert statuses == [499]


def test_one_key_cannot_take_every_slot_of_a_deployment(
    gateway_factory: Callable[..., RunningGateway], long_upstream: DevUpstream
) -> None:
    eu = {
        "kind": "openai_compatible",
        "base_url": long_upstream.url,
        "model": "m",
        "jurisdiction": "EU",
        "region": "fr-par",
        "max_concurrency": 4,
        "max_concurrency_per_key": 2,
        "timeouts": {"connect_s": 1, "read_s": 30, "total_s": 60},
    }
    config = make_config(
        long_upstream,
        deployments={"eu-primary": eu},
        models={"mistral-7b": {"deployments": ["eu-primary"]}},
        server={"stream_write_timeout_s": 30},
    )
    gw = gateway_factory(config)
    greedy, other = gw.key(), gw.key(tenant="other")
    socks = [_stalled_stream(gw, greedy) for _ in range(2)]
    try:
        assert _wait(lambda: long_upstream.streams_started == 2, 5)
        third = httpx.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {greedy}"},
            json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "concurrency.exceeded"
        assert third.headers["retry-after"] == "1"
        started = time.monotonic()
        fine = httpx.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {other}"},
            json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert fine.status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for s in socks:
            s.close()
    # A refused key does not trip the deployment's circuit breaker.
    assert gw.gateway.router.breakers["eu-primary"].failures == 0


def test_a_stream_ends_at_the_deployments_total_s(gateway_factory: Callable[..., RunningGateway]) -> None:
    slow = DevUpstream(chunks=40, chunk_delay_s=0.1).start()  # 4 s of stream
    try:
        gw = gateway_factory(only_primary(slow, total_s=1))
        started = time.monotonic()
        with httpx.stream(
            "POST",
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {gw.key()}"},
            json={"model": "mistral-7b", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        ) as resp:
            request_id = resp.headers["x-gateway-request-id"]
            text = b"".join(resp.iter_raw())
        assert time.monotonic() - started < 3
        assert b'"code":"upstream_timeout"' in text
        assert b"[DONE]" not in text
        assert _wait(lambda: slow.streams_aborted == 1, 5)
        gw.stop()
        record = audit.fetch(gw.gateway.engine, request_id)
        assert record is not None
        assert record.status == 504
    finally:
        slow.stop()


def test_a_client_that_asked_for_usage_gets_the_gateways_estimate_when_the_upstream_sends_none(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    quiet = DevUpstream(include_usage=False).start()  # like llama.cpp: no usage chunk
    try:
        policies = tmp_path / "p"
        policies.mkdir()
        (policies / "bundle.yaml").write_text("version: 1\ndefaults:\n  token_accounting: {}\n")
        gw = gateway_factory(make_config(quiet), policies)
        client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="mistral-7b",
                messages=[{"role": "user", "content": "hello there"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        last = chunks[-1]
        assert last.choices == []
        assert last.usage is not None
        assert last.usage.completion_tokens > 0
        assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
        assert (last.model_extra or {}).get("x-gateway-usage") == "estimated"
        assert last.id == chunks[0].id
        assert sum(1 for c in chunks if c.usage is not None) == 1
        # Not asked for: no usage chunk, even though the gateway counted.
        plain = list(
            client.chat.completions.create(
                model="mistral-7b", messages=[{"role": "user", "content": "hello there"}], stream=True
            )
        )
        assert all(c.usage is None for c in plain)
    finally:
        quiet.stop()
