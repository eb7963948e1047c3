"""The Responses API on the shipped configuration's riskiest path: the consent-gated DPA fallback to the US.

config.yaml and policies/ as shipped (``tests.test_shipped_bundle``'s fixtures): the EU deployments
fail, the subject consented, and the request reaches GPT-4 in the US, natively (the shipped
``openai-gpt4`` lists ``supports: [chat, responses]``, so the EU hops get a bridged chat body and
the US hop a Responses request). Every string of the Responses
request (instructions, message parts, earlier function calls and their outputs) must arrive there
without an identifier, streamed or not; a blocked type and a missing consent refuse as on chat.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway
from tests.test_responses import output_text
from tests.test_shipped_bundle import (  # noqa: F401  (the shipped configuration's fixtures)
    EMAIL,
    FULL_PROMPT,
    NAME,
    PHONE,
    SSN,
    SUBJECT,
    US_REPLY,
    _us_server,
    assert_no_identifier,
    client,
    error_of,
    eu_down,
    grant,
    sent,
    shipped_config_fixture,
    shipped_gw,
    upstream_us_fixture,
)

# Every place a Responses request carries text, each with identifiers.
ITEMS: list[dict[str, Any]] = [
    {"role": "developer", "content": f"The user is {NAME}, reachable at {EMAIL}."},
    {"role": "user", "content": [{"type": "input_text", "text": FULL_PROMPT}]},
    {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": json.dumps({"q": EMAIL})},
    {"type": "function_call_output", "call_id": "call_1", "output": f"{NAME}, phone {PHONE}"},
    {"role": "assistant", "content": [{"type": "output_text", "text": f"I found {NAME}."}]},
    {"role": "user", "content": "Go on."},
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "lookup",
        "description": f"Looks people up, e.g. {EMAIL}.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    }
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_consented_fallback_through_the_responses_api_sends_no_identifier_to_the_us(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream, stream: bool
) -> None:
    grant(gw)
    eu_down(upstream, upstream_b)
    raw = client(gw).responses.with_raw_response.create(
        model="mistral-7b",
        user=SUBJECT,
        instructions=f"Reply to {NAME} only.",
        input=ITEMS,  # type: ignore[arg-type]
        tools=TOOLS,
        stream=stream,
    )
    assert raw.headers["x-gateway-deployment"] == "openai-gpt4"
    assert raw.headers["x-gateway-fallback"] == "upstream_5xx"
    answer = raw.parse()
    if isinstance(answer, openai.Stream):  # the US upstream streams its canned text
        assert "".join(e.delta for e in answer if e.type == "response.output_text.delta") == US_REPLY
    else:  # and answers a non-streamed request that has tools with a call
        [call] = answer.output
        assert call.type == "function_call"
        assert call.name == "lookup"
    [body] = sent(upstream_us)
    assert_no_identifier(body)
    assert SUBJECT not in body
    # OpenAI serves /responses itself (supports: [chat, responses] as shipped): the hop is native.
    [native] = upstream_us.received
    assert native.path == "/v1/responses"
    assert [i.get("type", i.get("role")) for i in native.body["input"]] == [
        "system",
        "system",
        "user",
        "function_call",
        "function_call_output",
        "assistant",
        "user",
    ]
    assert native.body["model"] == "gpt-4o"
    assert native.body["store"] is False
    assert [r.path for r in (*upstream.received, *upstream_b.received)] == ["/v1/chat/completions"] * 2


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gpt4o_in_sweden_serves_the_responses_api_natively_with_identifiers_redacted(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream, stream: bool
) -> None:
    """The shipped gpt-4o (Azure, Sweden Central, supports: [chat, responses]): Azure's own Responses API, the
    EU rules for what an EU hop may see, the deployment named in the body and the key in api-key."""
    upstream_b.echo = True
    raw = client(gw).responses.with_raw_response.create(
        model="gpt-4o", user=SUBJECT, input=f"Write to {EMAIL} or call {PHONE}.", stream=stream
    )
    assert raw.headers["x-gateway-deployment"] == "azure-gpt4o-swedencentral"
    assert raw.headers["x-gateway-jurisdiction"] == "EU"
    assert EMAIL in output_text(raw.parse())  # the echo, restored
    [native] = upstream_b.received
    assert native.path == "/openai/v1/responses"
    assert native.headers["api-key"] == "sk-test-azure"
    assert native.body["model"] == "gpt-4o"
    assert native.body["store"] is False
    [body] = sent(upstream_b)
    for value in (EMAIL, PHONE, SUBJECT):
        assert value not in body
    assert "<EMAIL_ADDRESS_1>" in body
    assert upstream.received == []
    assert upstream_us.received == []


def test_a_us_ssn_in_a_function_output_is_refused_on_the_fallback_path(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream
) -> None:
    grant(gw)
    eu_down(upstream, upstream_b)
    items = [*ITEMS[:3], {"type": "function_call_output", "call_id": "call_1", "output": f"SSN {SSN}"}]
    with pytest.raises(openai.APIStatusError) as refused:
        client(gw).responses.create(model="mistral-7b", user=SUBJECT, input=items)  # type: ignore[arg-type]
    assert refused.value.status_code == 400
    assert error_of(refused.value)["code"] == "pii.blocked"
    assert SSN not in refused.value.response.text
    assert upstream_us.received == []


def test_without_consent_the_responses_api_gets_consent_required(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream
) -> None:
    eu_down(upstream, upstream_b)
    with pytest.raises(openai.APIStatusError) as refused:
        client(gw).responses.create(model="mistral-7b", user="emp-0099", input=f"Call me at {PHONE}")
    assert refused.value.status_code == 503
    assert error_of(refused.value)["code"] == "consent.required"
    assert upstream_us.received == []
