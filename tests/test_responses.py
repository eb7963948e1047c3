"""``POST /v1/responses``, bridged to chat completions, with the shipped policies and the OpenAI SDK.

The gateway runs the repository's ``policies/`` (PII redaction, accounting, residency...) in front
of a recording loopback upstream that speaks chat completions. Each test checks what the client got
(a Responses object or event sequence, with the e-mail address restored) and what the upstream
received (a chat completion, with only a placeholder).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseFunctionCallArgumentsDeltaEvent
from sqlmodel import Session, select

from gateway.dev import DevUpstream
from gateway.store.db import AuditRecord
from tests.accounting_support import ledger
from tests.conftest import RunningGateway, make_config, only_primary
from tests.test_shipped_bundle import SHIPPED_POLICIES

EMAIL = "maria.schneider@example.de"
PROMPT = f"Write to {EMAIL} about the contract."
TOOL: FunctionToolParam = {
    "type": "function",
    "name": "lookup",
    "description": "Look a customer up.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "strict": None,
}


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream) -> RunningGateway:
    upstream.echo = True
    return gateway_factory(make_config(upstream), SHIPPED_POLICIES)


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0, timeout=30)


def sent(upstream: DevUpstream) -> str:
    """Every body the upstream received, as one JSON text."""
    return json.dumps([r.body for r in upstream.received])


def post(gw: RunningGateway, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/responses", headers={"Authorization": f"Bearer {gw.key()}"}, json=body, timeout=30
    )


def test_a_plain_response_is_a_chat_completion_upstream_and_restored(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    resp = client(gw).responses.create(
        model="mistral-7b",
        instructions="Answer briefly.",
        input=PROMPT,
        max_output_tokens=200,
        temperature=0.2,
        metadata={"ticket": "T-1"},
    )
    assert resp.object == "response"
    assert resp.status == "completed"
    assert resp.id.startswith("resp_")
    assert EMAIL in resp.output_text  # restored from the placeholder the upstream saw and echoed
    assert resp.usage is not None
    assert resp.usage.input_tokens > 0
    assert resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.metadata == {"ticket": "T-1"}
    assert resp.model_dump()["store"] is False
    [received] = upstream.received
    assert received.path.endswith("/chat/completions")
    body = received.body
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert body["messages"][-1]["role"] == "user"
    assert "<EMAIL_ADDRESS_1>" in body["messages"][-1]["content"]
    assert body["max_tokens"] == 200
    assert body["temperature"] == 0.2
    assert "metadata" not in body  # echoed to the client, never sent
    assert EMAIL not in sent(upstream)


def test_a_streamed_response_emits_the_responses_event_sequence(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    kinds: list[str] = []
    deltas: list[str] = []
    final: Any = None
    with client(gw).responses.create(model="mistral-7b", input=PROMPT, stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert len(deltas) > 1
    assert EMAIL in "".join(deltas)
    assert final is not None
    assert final.output_text == "".join(deltas)
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0
    [received] = upstream.received
    assert received.body["stream"] is True
    assert received.body["stream_options"] == {"include_usage": True}
    assert EMAIL not in sent(upstream)


def test_the_sequence_numbers_count_up_and_each_event_names_its_type(gw: RunningGateway) -> None:
    with httpx.stream(
        "POST",
        f"{gw.base_url}/responses",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-7b", "input": "hello", "stream": True},
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        text = resp.read().decode()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    events = []
    for block in blocks:
        name, data = block.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "[DONE]" not in text
    assert events[-1]["type"] == "response.completed"


def answered(call: Any, output: str) -> Any:
    """The second turn of a tool round trip: the prompt, the model's call, and the tool's output."""
    return [
        {"role": "user", "content": PROMPT},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": output},
    ]


def output_text(answer: Any) -> str:
    """The text of a Responses answer, streamed (the deltas) or not."""
    if isinstance(answer, openai.Stream):
        return "".join(e.delta for e in answer if e.type == "response.output_text.delta")
    return str(answer.output_text)


def test_a_function_tool_round_trip(gw: RunningGateway, upstream: DevUpstream) -> None:
    api = client(gw)
    first = api.responses.create(model="mistral-7b", input=PROMPT, tools=[TOOL])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "lookup"
    assert EMAIL in call.arguments  # restored inside the JSON arguments
    request = upstream.received[0].body
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a customer up.",
                "parameters": TOOL["parameters"],
            },  # strict: None is not forwarded
        }
    ]
    second = api.responses.create(
        model="mistral-7b",
        tools=[TOOL],
        input=answered(call, f"Found {EMAIL}: customer 7."),
    )
    assert second.output[0].type == "message"
    assert EMAIL in second.output_text
    messages = upstream.received[1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2]["tool_call_id"] == call.call_id
    assert "<EMAIL_ADDRESS_1>" in messages[2]["content"]
    assert EMAIL not in sent(upstream)


def test_a_streamed_function_call(gw: RunningGateway, upstream: DevUpstream) -> None:
    upstream.stream_tool_calls = True
    kinds: list[str] = []
    arguments: list[str] = []
    done: Any = None
    with client(gw).responses.create(
        model="mistral-7b",
        input=PROMPT,
        tools=[TOOL],
        stream=True,
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if isinstance(event, ResponseFunctionCallArgumentsDeltaEvent):
                arguments.append(event.delta)
            if event.type == "response.function_call_arguments.done":
                done = event
    assert kinds[2] == "response.output_item.added"
    assert "response.output_text.delta" not in kinds
    assert len(arguments) > 1
    assert done is not None
    assert done.arguments == "".join(arguments)
    assert EMAIL in done.arguments
    assert json.loads(done.arguments)["echo"] == PROMPT
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert EMAIL not in sent(upstream)


def test_structured_output_through_text_format(gw: RunningGateway, upstream: DevUpstream) -> None:
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["summary", "count"],
        "additionalProperties": False,
    }
    resp = client(gw).responses.create(
        model="mistral-7b",
        input=PROMPT,
        text={"format": {"type": "json_schema", "name": "digest", "schema": schema, "strict": True}},
    )
    assert json.loads(resp.output_text) == {"summary": PROMPT, "count": 1}
    assert upstream.received[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "digest", "schema": schema, "strict": True},
    }
    assert EMAIL not in sent(upstream)


def test_message_items_with_parts_and_history(gw: RunningGateway, upstream: DevUpstream) -> None:
    resp = post(
        gw,
        {
            "model": "mistral-7b",
            "input": [
                {"role": "developer", "content": "Be formal."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": PROMPT},
                        {"type": "input_image", "image_url": f"https://img.example/?owner={EMAIL}"},
                    ],
                },
            ],
        },
    )
    assert resp.status_code == 200, resp.text
    messages = upstream.received[0].body["messages"]
    assert messages[0] == {"role": "system", "content": "Be formal."}
    assert messages[1] == {"role": "user", "content": [{"type": "text", "text": "Hi."}]}
    assert messages[2] == {"role": "assistant", "content": "Hello."}
    assert messages[3]["content"][1]["type"] == "image_url"
    assert EMAIL not in sent(upstream)  # the image URL's query was scanned like any chat image URL


@pytest.mark.parametrize(
    ("field", "value", "code", "param"),
    [
        ("previous_response_id", "resp_123", "responses.stateless", "previous_response_id"),
        ("conversation", "conv_1", "responses.stateless", "conversation"),
        ("prompt", {"id": "pmpt_1"}, "responses.stateless", "prompt"),
        ("background", True, "responses.unsupported_field", "background"),
        ("tools", [{"type": "web_search"}], "responses.unsupported_tool", "tools[0].type"),
        ("tools", [TOOL, {"type": "file_search"}], "responses.unsupported_tool", "tools[1].type"),
        ("tools", [{"type": "computer_use_preview"}], "responses.unsupported_tool", "tools[0].type"),
        ("tool_choice", {"type": "web_search"}, "responses.unsupported_tool", "tool_choice"),
        ("input", [{"type": "item_reference", "id": "msg_1"}], "responses.stateless", "input[0]"),
        ("input", [{"type": "reasoning", "id": "rs_1"}], "responses.unsupported_item", "input[0].type"),
        ("surprise", 1, "invalid_request.unknown_field", "surprise"),
        ("max_output_tokens", 0, "invalid_request.invalid_value", "max_output_tokens"),
    ],
)
def test_what_the_bridge_does_not_serve_is_a_400_naming_the_field(
    gw: RunningGateway, upstream: DevUpstream, field: str, value: Any, code: str, param: str
) -> None:
    body: dict[str, Any] = {"model": "mistral-7b", "input": PROMPT, field: value}
    resp = post(gw, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert EMAIL not in resp.text
    assert "web_search" not in resp.text  # the messages echo no value of the request
    assert "computer_use" not in resp.text
    assert upstream.received == []


def test_nothing_is_stored_to_retrieve(gw: RunningGateway) -> None:
    resp = httpx.get(
        f"{gw.base_url}/responses/resp_123", headers={"Authorization": f"Bearer {gw.key()}"}, timeout=10
    )
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "responses.stateless"
    anonymous = httpx.delete(f"{gw.base_url}/responses/resp_123", timeout=10)
    assert anonymous.status_code == 401


def test_an_embeddings_model_is_refused(gw: RunningGateway, upstream: DevUpstream) -> None:
    resp = post(gw, {"model": "mistral-embed", "input": "hi"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "model_wrong_endpoint"
    assert upstream.received == []


def test_the_ledger_and_the_audit_trail_say_responses(gw: RunningGateway) -> None:
    client(gw).responses.create(model="mistral-7b", input=PROMPT)
    with client(gw).responses.create(model="mistral-7b", input=PROMPT, stream=True) as stream:
        for _ in stream:
            pass
    rows = ledger(gw.gateway.engine, 2)
    assert [row.endpoint for row in rows] == ["responses", "responses"]
    assert all(row.prompt_tokens > 0 and row.completion_tokens > 0 for row in rows)
    deadline = time.monotonic() + 10
    while True:
        with Session(gw.gateway.engine) as s:
            audit = [(r.endpoint, r.status) for r in s.exec(select(AuditRecord))]
        if len(audit) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert audit == [("responses", 200), ("responses", 200)]
    metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text
    assert 'endpoint="responses"' in metrics


def test_a_stream_that_runs_past_total_s_ends_with_an_error_event(
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    slow = DevUpstream(chunks=40, chunk_delay_s=0.1).start()  # 4 s of stream
    try:
        gw = gateway_factory(only_primary(slow, total_s=1))
        kinds: list[str] = []
        with (
            pytest.raises(openai.APIError) as failed,
            client(gw).responses.create(model="mistral-7b", input="hi", stream=True) as stream,
        ):
            kinds.extend(event.type for event in stream)
        assert "upstream model timed out" in str(failed.value)
        assert kinds[0] == "response.created"
        with httpx.stream(
            "POST",
            f"{gw.base_url}/responses",
            headers={"Authorization": f"Bearer {gw.key()}"},
            json={"model": "mistral-7b", "input": "hi", "stream": True},
            timeout=10,
        ) as resp:
            text = resp.read().decode()
        last = text.strip().split("\n\n")[-1]
        assert last.startswith("event: error\ndata: ")
        error = json.loads(last.split("data: ", 1)[1])
        assert (error["type"], error["code"]) == ("error", "upstream_timeout")
        assert "response.completed" not in text
    finally:
        slow.stop()


def test_the_route_authenticates_before_reading_and_bounds_the_body(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = gateway_factory(make_config(upstream, server={"max_body_bytes": 2048}), SHIPPED_POLICIES)
    anonymous = httpx.post(
        f"{gw.base_url}/responses", json={"model": "mistral-7b", "input": "hi"}, timeout=10
    )
    assert anonymous.status_code == 401
    embeddings_only = gw.key(scopes=("embeddings",))
    refused = httpx.post(
        f"{gw.base_url}/responses",
        headers={"Authorization": f"Bearer {embeddings_only}"},
        json={"model": "mistral-7b", "input": "hi"},
        timeout=10,
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "insufficient_scope")
    big = post(gw, {"model": "mistral-7b", "input": "x" * 4096})
    assert (big.status_code, big.json()["error"]["code"]) == (413, "request_too_large")
    deep: Any = "x"
    for _ in range(40):
        deep = {"a": deep}
    nested = post(gw, {"model": "mistral-7b", "input": "hi", "metadata": deep})
    assert (nested.status_code, nested.json()["error"]["code"]) == (400, "invalid_request.too_deep")
    assert upstream.received == []
