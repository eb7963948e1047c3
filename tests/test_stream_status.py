"""A stream the client reads to the end is recorded as answered (200), even if the client hangs up at once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from gateway import audit, metrics
from gateway.dev import DevUpstream
from tests.accounting_support import ledger
from tests.conftest import RunningGateway, make_config


@pytest.fixture
def slow_upstream() -> Iterator[DevUpstream]:
    server = DevUpstream(chunk_delay_s=0.05).start()
    yield server
    server.stop()


@pytest.mark.parametrize("parsed", [False, True], ids=["relayed bytes", "parsed by a policy"])
def test_a_stream_read_to_done_is_recorded_as_200_when_the_client_hangs_up_at_once(
    gateway_factory: Callable[..., RunningGateway], slow_upstream: DevUpstream, tmp_path: Path, parsed: bool
) -> None:
    policies = None
    if parsed:  # output scanning makes the chain parse every event
        policies = tmp_path / "p"
        policies.mkdir()
        (policies / "bundle.yaml").write_text(
            "version: 1\ndefaults:\n  pii_redaction: {output: {enabled: true}}\n"
        )
    gw = gateway_factory(make_config(slow_upstream), policies)
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    ids = []
    for _ in range(3):
        with client.chat.completions.with_streaming_response.create(
            model="mistral-7b", messages=[{"role": "user", "content": "hi"}], stream=True
        ) as resp:
            ids.append(resp.headers["x-gateway-request-id"])
            text = "".join(chunk.choices[0].delta.content or "" for chunk in resp.parse() if chunk.choices)
        assert text == slow_upstream.reply
    gw.stop()
    statuses = [audit.fetch(gw.gateway.engine, request_id).status for request_id in ids]  # type: ignore[union-attr]
    assert statuses == [200, 200, 200]


def test_official_sdk_streams_from_a_chunked_upstream_are_200_in_ledger_audit_and_metrics(
    gateway_factory: Callable[..., RunningGateway], slow_upstream: DevUpstream, tmp_path: Path
) -> None:
    """The development upstream ends its body with the chunked terminator after [DONE]; the SDK hangs up first."""
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "bundle.yaml").write_text("version: 1\ndefaults:\n  token_accounting: {}\n")
    gw = gateway_factory(make_config(slow_upstream), policies)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(tenant=tenant), max_retries=0)
    ids = []
    for _ in range(5):
        with client.chat.completions.with_streaming_response.create(
            model="mistral-7b", messages=[{"role": "user", "content": "hi"}], stream=True
        ) as resp:
            ids.append(resp.headers["x-gateway-request-id"])
            assert (
                "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
                == slow_upstream.reply
            )
    gw.stop()
    engine = gw.gateway.engine
    assert [audit.fetch(engine, i).status for i in ids] == [200] * 5  # type: ignore[union-attr]
    assert sorted(r.status for r in ledger(engine, 5) if r.request_id in ids) == [200] * 5
    answered = metrics.REQUESTS.labels(
        tenant, "chat", "mistral-7b", "eu-primary", "EU", "200", "chat"
    )._value.get()
    aborted = metrics.REQUESTS.labels(
        tenant, "chat", "mistral-7b", "eu-primary", "EU", "499", "chat"
    )._value.get()
    assert (answered, aborted) == (5, 0)
