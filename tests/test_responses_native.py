"""Native Responses upstreams (``supports: [responses]``): the wire format changes, the policies do not.

The gateway runs the repository's ``policies/`` in front of a recording loopback upstream that
serves ``/v1/responses`` itself (the development upstream, checking every body against the
Responses allow-list). The client is the OpenAI SDK, on both APIs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, only_primary
from tests.test_shipped_bundle import SHIPPED_POLICIES

EMAIL = "maria.schneider@example.de"
PROMPT = f"Write to {EMAIL} about the contract."


def native(upstream: DevUpstream, supports: list[str]) -> Any:
    return only_primary(upstream, 10, supports=supports)


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0, timeout=30)


def sent(upstream: DevUpstream) -> str:
    return json.dumps([r.body for r in upstream.received])


@pytest.fixture
def both(gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream) -> RunningGateway:
    upstream.echo = True
    return gateway_factory(native(upstream, ["chat", "responses"]), SHIPPED_POLICIES)


def test_a_responses_request_goes_natively_redacted_and_comes_back_restored(
    both: RunningGateway, upstream: DevUpstream
) -> None:
    resp = client(both).responses.create(
        model="mistral-7b", instructions="Answer briefly.", input=PROMPT, max_output_tokens=200
    )
    assert resp.status == "completed"
    assert EMAIL in resp.output_text
    assert resp.usage is not None
    assert resp.usage.input_tokens > 0
    [received] = upstream.received
    assert received.path == "/v1/responses"
    body = received.body
    assert body["store"] is False
    assert body["max_output_tokens"] == 200
    assert body["input"][0] == {"role": "system", "content": "Answer briefly."}
    assert "<EMAIL_ADDRESS_1>" in body["input"][-1]["content"]
    assert EMAIL not in sent(upstream)


def test_a_streamed_responses_request_goes_natively(both: RunningGateway, upstream: DevUpstream) -> None:
    deltas: list[str] = []
    final: Any = None
    with client(both).responses.create(model="mistral-7b", input=PROMPT, stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                final = event.response
    assert EMAIL in "".join(deltas)
    assert final is not None
    assert final.usage.output_tokens > 0
    [received] = upstream.received
    assert received.path == "/v1/responses"
    assert received.body["stream"] is True
    assert EMAIL not in sent(upstream)


def test_a_chat_request_to_a_responses_only_deployment(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    upstream.echo = True
    gw = gateway_factory(native(upstream, ["responses"]), SHIPPED_POLICIES)
    c = client(gw)
    done = c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert EMAIL in (done.choices[0].message.content or "")
    assert done.usage is not None
    assert done.usage.prompt_tokens > 0
    stream = c.chat.completions.create(
        model="mistral-7b",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert EMAIL in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert [r.path for r in upstream.received] == ["/v1/responses", "/v1/responses"]
    assert EMAIL not in sent(upstream)
