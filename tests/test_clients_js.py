"""JavaScript clients against the gateway: the `openai` npm SDK and the Vercel AI SDK (`ai` with `@ai-sdk/openai`).

Each test starts the gateway with the shipped policies/ (PII redaction on) in front of a recording
loopback upstream in echo mode, and runs one scenario of ``tests/clients/clients.mjs`` in Node.js,
as an application would call the gateway: chat completions, streams, embeddings, the Responses API
(the AI SDK's default provider), and a tool round trip. The prompt carries an e-mail address: no
request the upstream received may contain it (only its placeholder), and the client must get it
back restored. The driver prints one JSON line with what the client saw; the tests check that and
the upstream's bodies. ``make test`` installs the clients (``npm ci --prefix tests/clients``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.dev import DevUpstream, Received, embed
from tests.conftest import RunningGateway, make_config, with_supports
from tests.test_shipped_bundle import SHIPPED_POLICIES

CLIENTS = Path(__file__).resolve().parent / "clients"
DRIVER = CLIENTS / "clients.mjs"
INSTALL = "npm ci --prefix tests/clients --no-audit --no-fund"

CHAT_MODEL = "mistral-7b"
EMBED_MODEL = "mistral-embed"
EMAIL = "maria.schneider@example.de"
PLACEHOLDER = "<EMAIL_ADDRESS_1>"
PROMPT = f"Please write to {EMAIL} about the contract."
REDACTED = PROMPT.replace(EMAIL, PLACEHOLDER)
TOOL_RESULT = "lookup result: the contract is filed under reference ALPHA"  # clients.mjs's lookup tool


@pytest.fixture
def echo(upstream: DevUpstream) -> Iterator[DevUpstream]:
    """The session's upstream, answering with a report that repeats the last user message."""
    before = upstream.echo
    upstream.echo = True
    yield upstream
    upstream.echo = before


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], echo: DevUpstream) -> RunningGateway:
    return gateway_factory(make_config(echo), SHIPPED_POLICIES)


@pytest.fixture(params=["chat", "responses"], ids=["bridged", "native"])
def api(request: pytest.FixtureRequest) -> str:
    """The upstream API a /v1/responses request takes: bridged to chat, or native (supports: [chat, responses])."""
    return str(request.param)


@pytest.fixture
def rgw(gateway_factory: Callable[..., RunningGateway], echo: DevUpstream, api: str) -> RunningGateway:
    return gateway_factory(with_supports(echo, ["chat", api]), SHIPPED_POLICIES)


def assert_api(upstream: DevUpstream, api: str) -> None:
    """Every request reached the upstream on ``api``'s path."""
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    assert [r.path for r in upstream.received] == [path] * len(upstream.received)


def run(gw: RunningGateway, scenario: str) -> dict[str, Any]:
    """Run one scenario of clients.mjs against ``gw``; its JSON line, or the test fails with its error."""
    if not all((CLIENTS / "node_modules" / name).is_dir() for name in ("openai", "ai", "@ai-sdk/openai")):
        pytest.fail(f"run `{INSTALL}` (make test does) to install the JavaScript clients")
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js (20+) is needed for the JavaScript client tests")
    env = {
        **os.environ,
        "GATEWAY_BASE_URL": gw.base_url,
        "GATEWAY_API_KEY": gw.key(),
        "CHAT_MODEL": CHAT_MODEL,
        "EMBED_MODEL": EMBED_MODEL,
        "PROMPT": PROMPT,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    try:
        proc = subprocess.run(
            [node, str(DRIVER), scenario], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{scenario}: no answer within {exc.timeout} s; stderr: {exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(
            f"{scenario} failed (exit {proc.returncode}):\n{proc.stderr.strip()}\n{proc.stdout.strip()}"
        )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result: dict[str, Any] = json.loads(lines[0])
    assert result["scenario"] == scenario
    return result


# --- what the upstream received ------------------------------------------------------------------


def dumped(received: Received) -> str:
    return json.dumps(received.body, ensure_ascii=False)


def assert_redacted(upstream: DevUpstream, requests: int) -> list[Received]:
    """``requests`` bodies reached the upstream; none carries the address, each the redacted prompt."""
    received = list(upstream.received)
    assert len(received) == requests, [r.path for r in received]
    for r in received:
        assert EMAIL not in dumped(r), r.path
        assert REDACTED in dumped(r), r.path
    return received


def assert_restored(text: Any) -> None:
    """The echoed prompt came back with the address restored, no placeholder left."""
    assert isinstance(text, str)
    assert PROMPT in text
    assert PLACEHOLDER not in text


def assert_positive(usage: Any, *fields: str) -> None:
    assert isinstance(usage, dict), usage
    for field in fields:
        value = usage.get(field)
        assert isinstance(value, int), (field, usage)
        assert value > 0, (field, usage)


def tool_outputs(body: dict[str, Any]) -> dict[str, Any]:
    """Tool results a request carries, by call id: chat ``tool`` messages or Responses
    ``function_call_output`` items (the gateway may reach the upstream either way)."""
    found: dict[str, Any] = {}
    for m in body.get("messages") or ():
        if isinstance(m, dict) and m.get("role") == "tool":
            found[str(m.get("tool_call_id"))] = m.get("content")
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            found[str(item.get("call_id"))] = item.get("output")
    return found


def tool_calls_sent(body: dict[str, Any]) -> dict[str, str]:
    """The earlier tool calls a request carries (arguments by call id), in either format."""
    found: dict[str, str] = {}
    for m in body.get("messages") or ():
        if isinstance(m, dict) and m.get("role") == "assistant":
            for call in m.get("tool_calls") or ():
                found[str(call.get("id"))] = str((call.get("function") or {}).get("arguments"))
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") == "function_call":
            found[str(item.get("call_id"))] = str(item.get("arguments"))
    return found


def assert_chat_path(received: list[Received]) -> None:
    assert all(r.path.endswith("/chat/completions") for r in received), [r.path for r in received]


def assert_tool_round_trip(result: dict[str, Any], upstream: DevUpstream, *, streamed: bool) -> None:
    """One call of ``lookup``, its result sent back in a second request, the final answer restored."""
    assert result["steps"] == 2
    assert result["step_finish_reasons"] == ["tool-calls", "stop"]
    [call] = result["tool_calls"]
    assert call["toolName"] == "lookup"
    assert result["executed"] == 1
    # The model's arguments echo the prompt: the gateway restored the address in them.
    assert result["tool_input"] == {"query": PROMPT}
    assert all(PLACEHOLDER not in raw for raw in result["raw_inputs"])
    assert result["tool_results"] == [
        {"toolName": "lookup", "toolCallId": call["toolCallId"], "output": TOOL_RESULT}
    ]
    assert_restored(result["text"])
    assert_positive(result["usage"], "inputTokens", "outputTokens", "totalTokens")
    for step in result["step_usage"]:
        assert_positive(step, "inputTokens", "outputTokens", "totalTokens")

    first, second = assert_redacted(upstream, 2)
    assert first.body.get("tools")
    assert second.body.get("tools")
    assert tool_outputs(first.body) == {}
    assert tool_outputs(second.body) == {call["toolCallId"]: TOOL_RESULT}
    # The call goes back with the tool result; its arguments carry the address, redacted again.
    arguments = tool_calls_sent(second.body)[call["toolCallId"]]
    assert PLACEHOLDER in arguments
    assert bool(first.body.get("stream")) is streamed
    assert bool(second.body.get("stream")) is streamed


# --- the openai SDK ------------------------------------------------------------------------------


def test_openai_chat(gw: RunningGateway, echo: DevUpstream) -> None:
    result = run(gw, "openai.chat")
    assert_restored(result["text"])
    assert result["finish_reason"] == "stop"
    assert_positive(result["usage"], "prompt_tokens", "completion_tokens", "total_tokens")
    [sent] = assert_redacted(echo, 1)
    assert_chat_path([sent])
    assert sent.body["messages"] == [{"role": "user", "content": REDACTED}]


def test_openai_chat_stream(gw: RunningGateway, echo: DevUpstream) -> None:
    result = run(gw, "openai.chat_stream")
    assert_restored(result["text"])
    assert result["finish_reason"] == "stop"
    assert result["chunks"] > 2
    usage = result["usage"]
    assert_positive(usage, "prompt_tokens", "completion_tokens", "total_tokens")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    [sent] = assert_redacted(echo, 1)
    assert_chat_path([sent])
    assert sent.body["stream"] is True


def test_openai_embeddings(gw: RunningGateway, echo: DevUpstream) -> None:
    # The SDK asks for base64 unless told otherwise, and decodes what comes back as float32.
    result = run(gw, "openai.embeddings")
    [sent] = assert_redacted(echo, 1)
    assert sent.path.endswith("/embeddings")
    assert sent.body["input"] == [REDACTED, "A second text."]
    assert result["embeddings"] == {"count": 2, "dimension": echo.embedding_dim}
    expected = embed(REDACTED, echo.embedding_dim)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(result["first"], expected, strict=True))
    assert_positive(result["usage"], "prompt_tokens", "total_tokens")


def test_openai_responses(rgw: RunningGateway, echo: DevUpstream, api: str) -> None:
    result = run(rgw, "openai.responses")
    assert_restored(result["text"])  # output_text: the SDK joins the message items' output_text parts
    assert result["object"] == "response"
    assert result["status"] == "completed"
    assert result["id"]
    assert result["output_types"] == ["message"]
    usage = result["usage"]
    assert_positive(usage, "input_tokens", "output_tokens", "total_tokens")
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert_redacted(echo, 1)
    assert_api(echo, api)


def test_openai_responses_stream(rgw: RunningGateway, echo: DevUpstream, api: str) -> None:
    result = run(rgw, "openai.responses_stream")
    assert_restored(result["text"])
    events: list[str] = result["events"]
    assert events[0] == "response.created"
    assert events[-1] == "response.completed"
    assert events.count("response.completed") == 1
    first_delta = events.index("response.output_text.delta")
    assert events.index("response.output_item.added") < first_delta
    assert first_delta < events.index("response.output_text.done") < events.index("response.output_item.done")
    # Every event is numbered, in order (the SDK's types require sequence_number).
    assert result["sequence"] == list(range(result["sequence"][0], result["sequence"][0] + len(events)))
    assert result["status"] == "completed"
    usage = result["usage"]
    assert_positive(usage, "input_tokens", "output_tokens", "total_tokens")
    [sent] = assert_redacted(echo, 1)
    assert sent.body.get("stream") is True
    assert_api(echo, api)


def test_openai_responses_stream_helper(rgw: RunningGateway, echo: DevUpstream, api: str) -> None:
    # responses.stream() rebuilds the response from the events: each must apply to its snapshot.
    result = run(rgw, "openai.responses_helper")
    assert_restored(result["text"])
    assert result["final_text"] == result["text"]
    assert result["events"][0] == "response.created"
    assert "response.content_part.added" in result["events"]
    assert result["status"] == "completed"
    assert_positive(result["usage"], "input_tokens", "output_tokens", "total_tokens")
    assert_redacted(echo, 1)
    assert_api(echo, api)


# --- the Vercel AI SDK: the default provider speaks the Responses API -------------------------------


def test_ai_generate_text(rgw: RunningGateway, echo: DevUpstream, api: str) -> None:
    result = run(rgw, "ai.generate")
    assert_restored(result["text"])
    assert result["finish_reason"] == "stop"
    assert_positive(result["usage"], "inputTokens", "outputTokens", "totalTokens")
    assert result["response_id"]
    assert_redacted(echo, 1)
    assert_api(echo, api)


def test_ai_stream_text(rgw: RunningGateway, echo: DevUpstream, api: str) -> None:
    result = run(rgw, "ai.stream")
    assert_restored(result["text"])
    assert result["finish_reason"] == "stop"
    assert {"text-start", "text-delta", "text-end"} <= set(result["parts"])
    assert_positive(result["usage"], "inputTokens", "outputTokens", "totalTokens")
    [sent] = assert_redacted(echo, 1)
    assert sent.body.get("stream") is True
    assert_api(echo, api)


def test_ai_tool_round_trip(rgw: RunningGateway, echo: DevUpstream, api: str) -> None:
    assert_tool_round_trip(run(rgw, "ai.tool"), echo, streamed=False)
    assert_api(echo, api)


def test_ai_stream_tool_round_trip(rgw: RunningGateway, echo: DevUpstream, api: str) -> None:
    echo.stream_tool_calls = True
    assert_tool_round_trip(run(rgw, "ai.stream_tool"), echo, streamed=True)
    assert_api(echo, api)


def test_ai_multi_turn_with_store_false_sends_the_history_inline(
    rgw: RunningGateway, echo: DevUpstream, api: str
) -> None:
    result = run(rgw, "ai.multi_turn")
    assert result["refused"] is None
    assert_restored(result["first"])
    assert "Once more, please." in result["second"]
    first, second = assert_redacted(echo, 2)
    messages = second.body["messages" if api == "chat" else "input"]  # chat messages, or Responses items
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert PLACEHOLDER in messages[1]["content"]  # the first answer went back redacted again
    assert EMAIL not in dumped(first) + dumped(second)
    assert_api(echo, api)


def test_ai_multi_turn_by_default_is_refused_as_stateless_naming_the_item(
    gw: RunningGateway, echo: DevUpstream
) -> None:
    """The AI SDK assumes state at the provider unless `store: false`: earlier output goes back as an
    `item_reference`, which a stateless gateway cannot resolve (docs/api.md says how to set it)."""
    result = run(gw, "ai.multi_turn_default")
    assert_restored(result["first"])
    assert result["refused"]["status"] == 400
    error = result["refused"]["error"]
    assert (error["code"], error["param"]) == ("responses.stateless", "input[1]")
    assert len(echo.received) == 1  # the second turn never left


# --- the Vercel AI SDK on chat completions (openai.chat(model)) and embeddings -----------------------


def test_ai_chat_generate_text(gw: RunningGateway, echo: DevUpstream) -> None:
    result = run(gw, "ai.chat_generate")
    assert_restored(result["text"])
    assert result["finish_reason"] == "stop"
    assert_positive(result["usage"], "inputTokens", "outputTokens", "totalTokens")
    [sent] = assert_redacted(echo, 1)
    assert_chat_path([sent])
    assert sent.body["messages"] == [{"role": "user", "content": REDACTED}]


def test_ai_chat_stream_text(gw: RunningGateway, echo: DevUpstream) -> None:
    result = run(gw, "ai.chat_stream")
    assert_restored(result["text"])
    assert result["finish_reason"] == "stop"
    assert {"text-start", "text-delta", "text-end"} <= set(result["parts"])
    assert_positive(result["usage"], "inputTokens", "outputTokens", "totalTokens")
    [sent] = assert_redacted(echo, 1)
    assert_chat_path([sent])
    assert sent.body["stream"] is True


def test_ai_chat_tool_round_trip(gw: RunningGateway, echo: DevUpstream) -> None:
    assert_tool_round_trip(run(gw, "ai.chat_tool"), echo, streamed=False)
    assert_chat_path(echo.received)


def test_ai_chat_stream_tool_round_trip(gw: RunningGateway, echo: DevUpstream) -> None:
    echo.stream_tool_calls = True
    assert_tool_round_trip(run(gw, "ai.chat_stream_tool"), echo, streamed=True)
    assert_chat_path(echo.received)


def test_ai_embed_many(gw: RunningGateway, echo: DevUpstream) -> None:
    result = run(gw, "ai.embed_many")
    assert result["embeddings"] == {"count": 2, "dimension": echo.embedding_dim}
    expected = embed(REDACTED, echo.embedding_dim)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(result["first"], expected, strict=True))
    assert_positive(result["usage"], "tokens")
    [sent] = assert_redacted(echo, 1)
    assert sent.path.endswith("/embeddings")
    assert sent.body["input"] == [REDACTED, "A second text."]
