"""Native Responses upstreams (``supports: [responses]``): the wire format changes, the policies do not.

The gateway runs the repository's ``policies/`` in front of a recording loopback upstream that
serves ``/v1/responses`` itself (the development upstream, checking every body against the
Responses allow-list). The client is the OpenAI SDK, on both APIs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from pydantic import ValidationError

from gateway.bundle import load_bundle
from gateway.config import Deployment
from gateway.dev import DevUpstream
from gateway.policytest import SimRequest, simulate
from tests.accounting_support import ledger
from tests.conftest import RunningGateway, make_config, only_primary
from tests.test_responses import answered, output_text
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


TOOL: Any = {
    "type": "function",
    "name": "lookup",
    "description": "Look a customer up.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}


def test_a_function_tool_round_trip_natively(both: RunningGateway, upstream: DevUpstream) -> None:
    api = client(both)
    first = api.responses.create(model="mistral-7b", input=PROMPT, tools=[TOOL])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "lookup"
    assert EMAIL in call.arguments  # restored inside the JSON arguments
    assert upstream.received[0].body["tools"] == [{**TOOL, "strict": False}]
    second = api.responses.create(
        model="mistral-7b",
        tools=[TOOL],
        input=answered(call, f"Found {EMAIL}."),
    )
    assert EMAIL in second.output_text
    items = upstream.received[1].body["input"]
    assert [i.get("type", i.get("role")) for i in items] == ["user", "function_call", "function_call_output"]
    assert items[1]["call_id"] == call.call_id
    assert "<EMAIL_ADDRESS_1>" in items[1]["arguments"]
    assert "<EMAIL_ADDRESS_1>" in items[2]["output"]
    assert all(r.path == "/v1/responses" for r in upstream.received)
    assert EMAIL not in sent(upstream)


def test_a_streamed_function_call_natively(both: RunningGateway, upstream: DevUpstream) -> None:
    upstream.stream_tool_calls = True
    arguments: list[str] = []
    done: Any = None
    with client(both).responses.create(model="mistral-7b", input=PROMPT, tools=[TOOL], stream=True) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments.append(event.delta)
            if event.type == "response.function_call_arguments.done":
                done = event
    assert len(arguments) > 1
    assert done is not None
    assert done.arguments == "".join(arguments)
    assert json.loads(done.arguments)["echo"] == PROMPT  # placeholders restored across the split deltas
    assert upstream.received[0].path == "/v1/responses"
    assert EMAIL not in sent(upstream)


def test_the_ledger_counts_the_native_usage(both: RunningGateway) -> None:
    answer = client(both).responses.create(model="mistral-7b", input=PROMPT)
    final: Any = None
    with client(both).responses.create(model="mistral-7b", input=PROMPT, stream=True) as stream:
        for event in stream:
            if event.type == "response.completed":
                final = event.response
    rows = ledger(both.gateway.engine, 2)
    assert [(r.endpoint, r.estimated) for r in rows] == [("responses", False)] * 2
    for row, usage in zip(rows, (answer.usage, final.usage), strict=True):
        assert usage is not None
        assert (row.prompt_tokens, row.completion_tokens) == (usage.input_tokens, usage.output_tokens)
        assert row.prompt_tokens > 0
        assert row.completion_tokens > 0


def test_a_chat_client_reaches_a_responses_only_model_with_tools(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = gateway_factory(native(upstream, ["responses"]), SHIPPED_POLICIES)
    tool: Any = {"type": "function", "function": {"name": "lookup", "parameters": TOOL["parameters"]}}
    done = client(gw).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], tools=[tool]
    )
    [call] = done.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "lookup"
    assert EMAIL in call.function.arguments
    assert done.choices[0].finish_reason == "tool_calls"
    assert upstream.received[0].body["tools"] == [
        {"type": "function", "name": "lookup", "strict": False, "parameters": TOOL["parameters"]}
    ]


def test_a_field_a_responses_only_upstream_cannot_carry_is_a_400_naming_it(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = gateway_factory(native(upstream, ["responses"]), SHIPPED_POLICIES)
    for extra, field in (({"n": 2}, "n"), ({"stop": ["END"]}, "stop"), ({"seed": 7}, "seed")):
        with pytest.raises(openai.BadRequestError) as refused:
            client(gw).chat.completions.create(
                model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], **extra
            )
        error = refused.value.response.json()["error"]
        assert error["code"] == "deployment.unsupported_field"
        assert f"'{field}'" in error["message"]
        assert EMAIL not in refused.value.response.text
    assert upstream.received == []


def mixed(upstream: DevUpstream, secondary: DevUpstream, first: list[str], second: list[str]) -> Any:
    hop = {"kind": "openai_compatible", "model": "m", "jurisdiction": "EU", "region": "fr-par"}
    return make_config(
        upstream,
        deployments={
            "eu-primary": {**hop, "base_url": upstream.url, "supports": first},
            "eu-secondary": {**hop, "base_url": secondary.url, "supports": second},
        },
        models={"mistral-7b": {"deployments": ["eu-primary", "eu-secondary"]}},
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_native_hop_that_fails_falls_back_to_a_bridged_one(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    stream: bool,
) -> None:
    upstream.fail_status = 500
    upstream_b.echo = True
    gw = gateway_factory(mixed(upstream, upstream_b, ["responses"], ["chat"]), SHIPPED_POLICIES)
    raw = client(gw).responses.with_raw_response.create(model="mistral-7b", input=PROMPT, stream=stream)
    assert raw.headers["x-gateway-deployment"] == "eu-secondary"
    assert EMAIL in output_text(raw.parse())
    assert [r.path for r in upstream.received] == ["/v1/responses"]
    assert [r.path for r in upstream_b.received] == ["/v1/chat/completions"]
    assert EMAIL not in sent(upstream) + sent(upstream_b)


def test_a_chat_request_the_native_hop_cannot_carry_goes_to_the_next(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, upstream_b: DevUpstream
) -> None:
    gw = gateway_factory(mixed(upstream, upstream_b, ["responses"], ["chat"]), SHIPPED_POLICIES)
    for _ in range(6):  # more than the breaker's threshold (5)
        raw = client(gw).chat.completions.with_raw_response.create(
            model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], stop=["END"]
        )
        assert raw.headers["x-gateway-deployment"] == "eu-secondary"
        assert raw.headers["x-gateway-fallback"] == "deployment.unsupported_field"
    assert upstream.received == []
    assert upstream_b.received[0].body["stop"] == ["END"]
    # Not the deployment's fault: its breaker stays closed, and it serves what it can carry.
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.headers["x-gateway-deployment"] == "eu-primary"


def test_azure_serves_responses_on_its_v1_surface(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    upstream.echo = True
    gw = gateway_factory(
        only_primary(
            upstream,
            10,
            kind="azure_openai",
            base_url=upstream.base,
            model="gpt-4o-swc",
            api_key="azure-secret-key",
            supports=["chat", "responses"],
        ),
        SHIPPED_POLICIES,
    )
    api = client(gw)
    assert EMAIL in api.responses.create(model="mistral-7b", input=PROMPT).output_text
    api.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    native_call, chat_call = upstream.received
    assert native_call.path == "/openai/v1/responses"
    assert native_call.body["model"] == "gpt-4o-swc"  # the v1 surface names the deployment in the body
    assert native_call.headers["api-key"] == "azure-secret-key"
    assert "authorization" not in native_call.headers
    assert chat_call.path == "/openai/deployments/gpt-4o-swc/chat/completions"
    assert "model" not in chat_call.body
    assert EMAIL not in sent(upstream)


# --- which API a hop takes -------------------------------------------------------------------------

HOP = {
    "kind": "openai_compatible",
    "base_url": "http://127.0.0.1:9/v1",
    "model": "m",
    "jurisdiction": "EU",
    "region": "r",
}


@pytest.mark.parametrize(
    ("supports", "route", "api"),
    [
        (["chat"], "chat", "chat"),
        (["chat"], "responses", "chat"),  # bridged
        (["responses"], "chat", "responses"),  # a Responses-only model
        (["responses"], "responses", "responses"),
        (["chat", "responses"], "chat", "chat"),
        (["chat", "responses"], "responses", "responses"),
        (["responses", "chat"], "chat", "chat"),  # the request's own API wins over the list's order
    ],
)
def test_which_api_a_request_takes(supports: list[str], route: str, api: str) -> None:
    deployment = Deployment.model_validate({**HOP, "supports": supports})
    assert deployment.api("chat", route) == api
    assert deployment.api("embeddings", route) == "embeddings"


def test_supports_defaults_to_chat_and_is_checked() -> None:
    assert Deployment.model_validate(HOP).supports == ["chat"]
    for bad in ([], ["embeddings"], ["assistants"]):
        with pytest.raises(ValidationError):
            Deployment.model_validate({**HOP, "supports": bad})
    with pytest.raises(ValidationError, match="litellm kind speaks chat completions only"):
        Deployment.model_validate({**HOP, "kind": "litellm", "supports": ["chat", "responses"]})
    assert Deployment.model_validate({**HOP, "kind": "litellm"}).supports == ["chat"]


def test_a_dry_run_shows_what_a_native_hop_would_be_sent(upstream: DevUpstream) -> None:
    """``gateway policy explain`` / ``policy test``: a Responses-only hop's record is its wire body, so a case's
    ``never_sees`` checks exactly what would leave."""
    config = native(upstream, ["responses"])
    request = SimRequest(tenant="hr", app="hr-chatbot", model="mistral-7b", message=PROMPT)
    outcome = asyncio.run(simulate(config, load_bundle([SHIPPED_POLICIES]), request))
    assert outcome.deployment == "eu-primary"
    wire = outcome.sent["eu-primary"]
    assert wire["store"] is False
    assert "messages" not in wire
    assert "<EMAIL_ADDRESS_1>" in json.dumps(wire["input"])
    assert EMAIL not in json.dumps(wire)
