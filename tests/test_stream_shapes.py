"""Placeholders are restored in every stream shape OpenAI sends, through the official SDK.

The development upstream is asked (its opt-in attributes) to stream tool calls whose arguments
are split across chunks, several choices whose events interleave, and streams that end without
any ``finish_reason``; in each case it echoes the redacted prompt, so the client must get the
original values back and the upstream must never see them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config
from tests.pii_values import EMAIL, IBAN

POLICY = """
version: 1
defaults:
  pii_redaction:
    entities: {EMAIL_ADDRESS: redact, IBAN_CODE: redact, PHONE_NUMBER: redact}
"""
# A quote and a backslash: restored values inside JSON arguments must stay valid JSON.
PROMPT = f'Send "the form" to {EMAIL} and refund IBAN {IBAN} \\ thanks'
TOOLS: Any = [
    {"type": "function", "function": {"name": "send", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}},
]
REPLY = "Mail <EMAIL_ADDRESS_1> now and refund [iban code 1] today, then write to {EMAIL_ADDRESS_1}"
RESTORED = f"Mail {EMAIL} now and refund {IBAN} today, then write to {EMAIL}"


@pytest.fixture(scope="module")
def _server() -> Iterator[DevUpstream]:
    server = DevUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def shapes(_server: DevUpstream) -> Iterator[DevUpstream]:
    """A recording upstream of this module's own, every opt-in shape off again after each test."""
    _server.reset()
    yield _server
    _server.reset()
    _server.reply, _server.chunks = DevUpstream.reply, DevUpstream.chunks


def _client(
    factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path, policy: str
) -> openai.OpenAI:
    path = tmp_path / "pii.yaml"
    path.write_text(policy)
    gw = factory(make_config(upstream), policies=path)
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0, timeout=30)


@pytest.fixture
def client(
    gateway_factory: Callable[..., RunningGateway], shapes: DevUpstream, tmp_path: Path
) -> openai.OpenAI:
    return _client(gateway_factory, shapes, tmp_path, POLICY)


@pytest.fixture
def scanning(
    gateway_factory: Callable[..., RunningGateway], shapes: DevUpstream, tmp_path: Path
) -> openai.OpenAI:
    """Answers scanned too: the output scanner holds back the last 64 characters of every channel
    (content and each tool call's arguments) until the choice or the stream ends."""
    return _client(gateway_factory, shapes, tmp_path, POLICY + "    output: {enabled: true, action: mask}\n")


def sent(upstream: DevUpstream) -> str:
    return json.dumps([r.body for r in upstream.received], ensure_ascii=False)


def assert_never_sent(upstream: DevUpstream) -> None:
    assert upstream.received, "the upstream was never called"
    text = sent(upstream)
    for value in (EMAIL, IBAN, IBAN.replace(" ", "")):
        assert value not in text
    assert "<EMAIL_ADDRESS_1>" in text
    assert "<IBAN_CODE_1>" in text


class Assembled:
    """What a client rebuilds from a stream: per choice, its text, tool calls and finish_reason."""

    def __init__(self, stream: Any) -> None:
        self.content: dict[int, str] = {}
        self.calls: dict[int, dict[int, dict[str, str]]] = {}
        self.function: dict[int, dict[str, str]] = {}
        self.finish: dict[int, str | None] = {}
        self.order: list[int] = []  # choice index of every chunk, in arrival order
        self.argument_chunks = 0
        for chunk in stream:
            for choice in chunk.choices:
                i = choice.index
                self.order.append(i)
                self.finish.setdefault(i, None)
                if choice.finish_reason is not None:
                    self.finish[i] = choice.finish_reason
                delta = choice.delta
                if delta.content:
                    self.content[i] = self.content.get(i, "") + delta.content
                for call in delta.tool_calls or ():
                    slot = self.calls.setdefault(i, {}).setdefault(
                        call.index, {"id": "", "name": "", "arguments": ""}
                    )
                    slot["id"] += call.id or ""
                    if call.function is not None:
                        slot["name"] += call.function.name or ""
                        slot["arguments"] += call.function.arguments or ""
                        self.argument_chunks += bool(call.function.arguments)
                if delta.function_call is not None:
                    slot = self.function.setdefault(i, {"name": "", "arguments": ""})
                    slot["name"] += delta.function_call.name or ""
                    slot["arguments"] += delta.function_call.arguments or ""
                    self.argument_chunks += bool(delta.function_call.arguments)


def stream(client: openai.OpenAI, **extra: Any) -> Assembled:
    return Assembled(
        client.chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], stream=True, **extra
        )
    )


def expected_calls(n_calls: int) -> dict[int, dict[str, str]]:
    return {
        i: {
            "id": f"call_dev_{i + 1}",
            "name": ("send", "refund")[i % 2],
            "arguments": json.dumps({"call": i, "echo": PROMPT}, separators=(",", ":"), ensure_ascii=False),
        }
        for i in range(n_calls)
    }


def parsed(calls: dict[int, dict[str, str]]) -> dict[int, tuple[str, str, Any]]:
    return {i: (c["id"], c["name"], json.loads(c["arguments"])) for i, c in calls.items()}


# --- tool calls ---------------------------------------------------------------------------------


def test_streamed_tool_call_arguments_split_across_chunks_are_restored(
    client: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.stream_tool_calls, shapes.tool_calls, shapes.arguments_chunk = True, 2, 5
    got = stream(client, tools=TOOLS)
    assert parsed(got.calls[0]) == parsed(expected_calls(2))
    assert got.finish == {0: "tool_calls"}
    assert got.argument_chunks > 10  # still streamed piece by piece, not buffered whole
    assert_never_sent(shapes)


@pytest.mark.parametrize("size", [1, 3, 64])
def test_tool_call_arguments_are_restored_whatever_the_chunk_size(
    client: openai.OpenAI, shapes: DevUpstream, size: int
) -> None:
    shapes.stream_tool_calls, shapes.arguments_chunk = True, size
    got = stream(client, tools=TOOLS)
    assert parsed(got.calls[0]) == parsed(expected_calls(1))
    assert_never_sent(shapes)


# --- several choices ------------------------------------------------------------------------------


def test_interleaved_choices_are_each_restored(client: openai.OpenAI, shapes: DevUpstream) -> None:
    shapes.stream_choices, shapes.reply, shapes.chunks = True, REPLY, 16  # about a word per chunk
    got = stream(client, n=3)
    assert got.content == dict.fromkeys(range(3), RESTORED)
    assert got.finish == dict.fromkeys(range(3), "stop")
    assert got.order[:6] == [0, 1, 2, 0, 1, 2]  # the events really interleave
    assert_never_sent(shapes)


def test_interleaved_choices_with_tool_calls_are_each_restored(
    client: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.stream_choices, shapes.stream_tool_calls, shapes.tool_calls, shapes.arguments_chunk = (
        True,
        True,
        2,
        4,
    )
    got = stream(client, n=2, tools=TOOLS)
    assert {i: parsed(calls) for i, calls in got.calls.items()} == dict.fromkeys(
        range(2), parsed(expected_calls(2))
    )
    assert got.finish == dict.fromkeys(range(2), "tool_calls")
    assert_never_sent(shapes)


# --- no finish_reason -----------------------------------------------------------------------------


def test_a_stream_without_finish_reason_still_gets_its_held_tail(
    client: openai.OpenAI, shapes: DevUpstream
) -> None:
    # The answer ends on what could be the start of a placeholder: the restorer holds it back until
    # the stream ends, and with no finish_reason only the gateway's last chunk before [DONE] carries it.
    shapes.finish_reason, shapes.reply, shapes.chunks = False, REPLY + " [IBAN_CO", 16
    got = stream(client)
    assert got.content == {0: RESTORED + " [IBAN_CO"}
    assert got.finish == {0: None}
    assert_never_sent(shapes)


def test_a_scanned_stream_without_finish_reason_gets_every_held_tail(
    scanning: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.finish_reason, shapes.stream_choices, shapes.reply, shapes.chunks = False, True, REPLY, 16
    got = stream(scanning, n=2)
    assert got.content == dict.fromkeys(range(2), RESTORED)
    assert got.finish == dict.fromkeys(range(2), None)
    assert_never_sent(shapes)


def test_scanned_tool_calls_without_finish_reason_get_every_held_tail(
    scanning: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.finish_reason, shapes.stream_tool_calls, shapes.tool_calls, shapes.arguments_chunk = (
        False,
        True,
        2,
        6,
    )
    got = stream(scanning, tools=TOOLS)
    assert parsed(got.calls[0]) == parsed(expected_calls(2))
    assert got.finish == {0: None}
    assert_never_sent(shapes)


def test_scanned_tool_calls_with_finish_reason_are_restored(
    scanning: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.stream_tool_calls, shapes.tool_calls, shapes.arguments_chunk = True, 2, 6
    got = stream(scanning, tools=TOOLS)
    assert parsed(got.calls[0]) == parsed(expected_calls(2))
    assert got.finish == {0: "tool_calls"}
    assert_never_sent(shapes)


def test_tool_calls_and_choices_without_finish_reason_are_restored(
    client: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.finish_reason, shapes.stream_choices, shapes.stream_tool_calls = False, True, True
    shapes.tool_calls, shapes.arguments_chunk = 2, 7
    got = stream(client, n=2, tools=TOOLS)
    assert {i: parsed(calls) for i, calls in got.calls.items()} == dict.fromkeys(
        range(2), parsed(expected_calls(2))
    )
    assert got.finish == dict.fromkeys(range(2), None)
    assert_never_sent(shapes)


def test_choices_without_finish_reason_are_each_restored(client: openai.OpenAI, shapes: DevUpstream) -> None:
    shapes.finish_reason, shapes.stream_choices, shapes.reply, shapes.chunks = False, True, REPLY, 16
    got = stream(client, n=3)
    assert got.content == dict.fromkeys(range(3), RESTORED)
    assert_never_sent(shapes)


# --- legacy function_call -------------------------------------------------------------------------

FUNCTIONS: Any = [{"name": "send", "parameters": {"type": "object"}}]


def test_legacy_function_call_arguments_in_an_answer_are_restored(
    client: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.legacy_function_call = True
    completion = client.chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], functions=FUNCTIONS
    )
    call = completion.choices[0].message.function_call
    assert call is not None
    assert call.name == "send"
    assert json.loads(call.arguments) == {"echo": PROMPT}
    assert_never_sent(shapes)


def test_streamed_legacy_function_call_arguments_are_restored(
    client: openai.OpenAI, shapes: DevUpstream
) -> None:
    shapes.legacy_function_call = True
    got = stream(client, functions=FUNCTIONS)
    assert got.function[0]["name"] == "send"
    assert json.loads(got.function[0]["arguments"]) == {"echo": PROMPT}
    assert_never_sent(shapes)
