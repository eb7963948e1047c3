"""Token-id embeddings input (LangChain's default): decoded to text, then scanned and forwarded as text.

The gateway runs the shipped policies/ (PII redaction on); the OpenAI SDK sends `input` as cl100k
token ids, as `OpenAIEmbeddings` does. The recording upstream must see text with the e-mail address
replaced, never the address and never the ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway.dev import DevUpstream
from gateway.tokenids import _encoding
from tests.conftest import RunningGateway, make_config
from tests.test_shipped_bundle import SHIPPED_POLICIES

EMAIL = "maria.schneider@example.de"
TEXT = f"Please write to {EMAIL} about the contract."


def ids(text: str) -> list[int]:
    return list(_encoding("cl100k_base").encode(text))


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream) -> RunningGateway:
    return gateway_factory(make_config(upstream), SHIPPED_POLICIES)


def _embed(gw: RunningGateway, value: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/embeddings",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-embed", "input": value},
        timeout=30,
    )


def test_token_ids_are_decoded_redacted_and_sent_as_text(gw: RunningGateway, upstream: DevUpstream) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0, timeout=30)
    result = client.embeddings.create(model="mistral-embed", input=[ids(TEXT), ids("Second chunk.")])
    assert len(result.data) == 2
    [received] = upstream.received
    sent = received.body["input"]
    assert isinstance(sent, list)
    assert len(sent) == 2
    assert all(isinstance(t, str) for t in sent)
    body = json.dumps(received.body)
    assert EMAIL not in body
    assert "<EMAIL_ADDRESS_1>" in sent[0]
    assert sent[1] == "Second chunk."
    single = client.embeddings.create(model="mistral-embed", input=ids("One text only."))
    assert len(single.data) == 1
    assert upstream.received[-1].body["input"] == "One text only."


def test_an_id_outside_the_encoding_is_a_400_and_nothing_is_sent(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    for bad in ([1, 2, 10**7], [[5], [-1]]):
        resp = _embed(gw, bad)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "embeddings.token_input_invalid"
        assert resp.json()["error"]["param"] == "input"
    assert upstream.received == []


def test_token_input_reject_refuses_ids_and_still_takes_text(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = gateway_factory(make_config(upstream, embeddings={"token_input": "reject"}), SHIPPED_POLICIES)
    resp = _embed(gw, ids(TEXT))
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "embeddings.token_input_rejected"
    assert upstream.received == []
    assert _embed(gw, "plain text").status_code == 200


@pytest.mark.parametrize(("token_input", "loaded"), [("decode", True), ("reject", False)])
def test_the_encoding_is_loaded_at_start_up_not_on_the_first_request(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, token_input: str, loaded: bool
) -> None:
    """Loading cl100k takes about 0.2 s: at start-up, in a thread, and not in the event loop on the first
    LangChain embeddings request (which would stall every request in flight)."""
    _encoding.cache_clear()
    gateway_factory(make_config(upstream, embeddings={"token_input": token_input}), SHIPPED_POLICIES)
    assert (_encoding.cache_info().currsize == 1) is loaded
