"""The Responses bridge's translations, as functions: request to chat, chat answer and stream to Responses.

The end-to-end tests (tests/test_responses.py, tests/test_responses_shipped.py, the client suites)
drive them through the gateway; these pin each mapping exactly, so that a changed field, order,
status or count fails here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, UpstreamError
from gateway.openai_schema import CHAT
from gateway.responses import TERMINAL, Events, Shape, refuse, to_chat
from gateway.responses.answer import responses_usage
from gateway.responses_schema import ResponsesRequest
from gateway.sse import Event
from gateway.validation import validator

validate = validator("responses")


def chat_of(body: dict[str, Any]) -> dict[str, Any]:
    refuse(body)
    validate(body)
    chat = to_chat(body)
    CHAT.validate_python({k: v for k, v in chat.items() if k != "gateway_rag"})  # a valid chat completion
    return chat


# --- request ---------------------------------------------------------------------------------------


def test_every_bridged_field_lands_in_its_chat_field() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = chat_of(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": "Hi",
            "tools": [{"type": "function", "name": "f", "description": "d", "parameters": schema}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
            "temperature": 0.5,
            "top_p": 0.9,
            "service_tier": "default",
            "max_output_tokens": 77,
            "text": {"format": {"type": "json_schema", "name": "out", "schema": schema}, "verbosity": "low"},
            "reasoning": {"effort": "low", "summary": "auto"},
            "user": "u1",
            "safety_identifier": "s1",
            "prompt_cache_key": "p1",
            "metadata": {"k": "v"},
            "store": True,
            "include": ["reasoning.encrypted_content"],
            "truncation": "auto",
            "gateway_rag": {"top_k": 1},
        }
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "service_tier": "default",
        "user": "u1",
        "safety_identifier": "s1",
        "prompt_cache_key": "p1",
        "gateway_rag": {"top_k": 1},
        "max_tokens": 77,
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
        "verbosity": "low",
        "reasoning_effort": "low",
    }


def test_a_stream_asks_for_usage_and_simple_choices_pass_as_they_are() -> None:
    chat = chat_of({"model": "m", "input": "Hi", "stream": True, "tool_choice": "required"})
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["tool_choice"] == "required"
    assert "stream" not in chat_of({"model": "m", "input": "Hi", "stream": False})
    assert chat_of({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})[
        "response_format"
    ] == {"type": "json_object"}
    plain = chat_of({"model": "m", "input": "x", "text": {"format": {"type": "text"}}, "instructions": ""})
    assert plain == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def test_items_become_messages_with_calls_joined_to_the_assistant_turn() -> None:
    chat = chat_of(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://x/i.png", "detail": "low"}],
                },
                {"role": "assistant", "content": "Let me look."},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a": 1}'},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "two"}],
                },
                {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "A", "annotations": []},
                        {"type": "refusal", "refusal": "No."},
                        {"type": "output_text", "text": "B"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "Never."}]},
            ],
        }
    )
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a": 1}'}},
    ]
    assert chat["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "rules"}]},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": "low"}}],
        },
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "assistant", "content": "AB", "refusal": "No."},
        {"role": "assistant", "content": None, "refusal": "Never."},
    ]


def test_an_image_in_a_system_message_is_refused() -> None:
    body = {
        "model": "m",
        "input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x/i.png"}]}],
    }
    validate(body)
    with pytest.raises(GatewayError) as refused:
        to_chat(body)
    assert (refused.value.status, refused.value.param) == (400, "input")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"previous_response_id": "r"}, "responses.stateless", "previous_response_id"),
        ({"conversation": {"id": "c"}}, "responses.stateless", "conversation"),
        ({"prompt": {"id": "p"}}, "responses.stateless", "prompt"),
        ({"background": True}, "responses.unsupported_field", "background"),
        ({"max_tool_calls": 3}, "responses.unsupported_field", "max_tool_calls"),
        ({"top_logprobs": 2}, "responses.unsupported_field", "top_logprobs"),
        (
            {"tools": [{"type": "function", "name": "f"}, {"type": "mcp"}]},
            "responses.unsupported_tool",
            "tools[1].type",
        ),
        ({"tool_choice": {"type": "file_search"}}, "responses.unsupported_tool", "tool_choice"),
        ({"input": ["x", {"type": "item_reference", "id": "m"}]}, "responses.stateless", "input[1]"),
        ({"input": [{"type": "input_file"}]}, "responses.unsupported_item", "input[0].type"),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(GatewayError) as refused:
        refuse({"model": "m", "input": "x", **body})
    assert (refused.value.status, refused.value.code, refused.value.param) == (400, code, param)


def test_the_stateless_refusal_says_what_to_do_instead() -> None:
    with pytest.raises(GatewayError) as refused:
        refuse({"model": "m", "input": "x", "previous_response_id": "resp_1"})
    assert refused.value.message == (
        "'previous_response_id' needs a response stored at the provider; this gateway is stateless "
        "(store is treated as false). Send the whole conversation in 'input' instead."
    )


@pytest.mark.parametrize(
    "body",
    [
        {"background": False},
        {"previous_response_id": None},
        {"tools": [{"type": "function", "name": "f"}, "odd"]},  # the allow-list refuses the odd one
        {"tool_choice": "auto"},
        {"input": [{"role": "user", "content": "x"}, {"type": "message", "role": "user", "content": "y"}]},
    ],
)
def test_what_is_bridged_is_not_refused(body: dict[str, Any]) -> None:
    refuse({"model": "m", "input": "x", **body})


# --- answer ----------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", usage: Any = None) -> bytes:
    body: dict[str, Any] = {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def shape(**request: Any) -> Shape:
    return Shape({"model": "public", "input": "x", **request}, "rid")


def test_a_completion_becomes_a_response_with_the_request_echoed() -> None:
    usage = {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    s = shape(
        instructions="I", temperature=0.3, metadata={"a": "b"}, tools=[{"type": "function", "name": "f"}]
    )
    out = orjson.loads(
        s.answer(completion({"role": "assistant", "content": "Hello", "refusal": None}, usage=usage))
    )
    assert out["id"] == "resp_rid"
    assert out["object"] == "response"
    assert out["status"] == "completed"
    assert out["incomplete_details"] is None
    assert out["model"] == "public"
    assert out["store"] is False
    assert (out["instructions"], out["temperature"], out["top_p"], out["metadata"]) == (
        "I",
        0.3,
        1.0,
        {"a": "b"},
    )
    assert out["tools"] == [{"strict": None, "description": None, "type": "function", "name": "f"}]
    assert out["text"] == {"format": {"type": "text"}}
    assert out["output"] == [
        {
            "id": "msg_rid_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}],
        }
    ]
    assert out["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 10,
    }


def test_a_minimal_request_gets_every_field_of_the_response_object() -> None:
    out = orjson.loads(shape().answer(completion({"role": "assistant", "content": ""}, usage={})))
    assert out == {
        "id": "resp_rid",
        "object": "response",
        "created_at": out["created_at"],
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "model": "public",
        "output": [],  # an empty answer has no message item
        "previous_response_id": None,
        "store": False,
        "instructions": None,
        "max_output_tokens": None,
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "truncation": "disabled",
        "service_tier": "auto",
        "user": None,
        "safety_identifier": None,
        "prompt_cache_key": None,
        "text": {"format": {"type": "text"}},
        "reasoning": {"effort": None, "summary": None},
        "metadata": {},
        "usage": {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        },
    }
    assert abs(out["created_at"] - time.time()) < 60
    settings = {
        "instructions": "I",
        "max_output_tokens": 9,
        "parallel_tool_calls": False,
        "temperature": 0.0,
        "top_p": 0.5,
        "tool_choice": "none",
        "truncation": "auto",
        "service_tier": "flex",
        "user": "u",
        "safety_identifier": "s",
        "prompt_cache_key": "k",
        "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        "reasoning": {"effort": "high"},
    }
    echoed = orjson.loads(shape(**settings).answer(completion({"role": "assistant", "content": "x"})))
    assert {k: echoed[k] for k in settings} == {**settings, "reasoning": {"effort": "high", "summary": None}}


def test_tool_calls_and_refusals_become_output_items() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"q": 1}'}},
        {"type": "function", "function": {"name": "g"}},
        {"type": "function"},  # a malformed call still becomes an item, empty
    ]
    out = orjson.loads(
        shape().answer(completion({"role": "assistant", "refusal": "No", "tool_calls": calls}))
    )
    assert out["output"] == [
        {
            "id": "msg_rid_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "No"}],
        },
        {
            "id": "fc_rid_0",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_a",
            "name": "f",
            "arguments": '{"q": 1}',
        },
        {
            "id": "fc_rid_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "fc_rid_1",
            "name": "g",
            "arguments": "",
        },
        {
            "id": "fc_rid_2",
            "type": "function_call",
            "status": "completed",
            "call_id": "fc_rid_2",
            "name": "",
            "arguments": "",
        },
    ]
    assert out["usage"] is None


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_answer_is_incomplete(finish: str, reason: str) -> None:
    out = orjson.loads(shape().answer(completion({"role": "assistant", "content": "Hel"}, finish)))
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": reason}


@pytest.mark.parametrize("raw", [b"not json", b"{}", b'{"choices": []}', b'{"choices": [{}]}'])
def test_an_unusable_completion_is_a_502(raw: bytes) -> None:
    with pytest.raises(UpstreamError) as failed:
        shape().answer(raw)
    assert (failed.value.status, failed.value.code) == (502, "upstream_invalid_response")
    assert failed.value.message == "The upstream returned no usable answer."


def test_a_reported_total_is_kept() -> None:
    usage = responses_usage({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 9})
    assert usage is not None
    assert usage["total_tokens"] == 9


def test_usage_without_totals_is_summed() -> None:
    assert responses_usage({"prompt_tokens": 2, "completion_tokens": 5}) == {
        "input_tokens": 2,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    assert responses_usage("nope") is None


# --- stream ----------------------------------------------------------------------------------------


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, index: int = 0, **extra: Any
) -> Event:
    choices = [] if delta is None else [{"index": index, "delta": delta, "finish_reason": finish}]
    return Event.of({"object": "chat.completion.chunk", "choices": choices, **extra})


async def _feed(events: list[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


def translate(events: list[Event], s: Shape | None = None) -> list[list[dict[str, Any]]]:
    async def run() -> list[list[dict[str, Any]]]:
        batches = []
        async for batch in Events(s or shape()).translate(_feed(events)):
            for e in batch:
                assert e.event == e.json["type"].encode()
            batches.append([e.json for e in batch])
        return batches

    return asyncio.run(run())


def flat(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [e for batch in batches for e in batch]


MSG = {"item_id": "msg_rid_0", "output_index": 0, "content_index": 0}
HELLO = {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
MESSAGE_DONE = {
    "id": "msg_rid_0",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [HELLO],
}


def numbered(events: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    return [{"type": e["type"], "sequence_number": start + i, **e} for i, e in enumerate(events)]


def test_a_text_stream_becomes_the_event_sequence_a_batch_per_chunk() -> None:
    batches = translate(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"refusal": "lo"}),  # a refusal streams as text
            chunk({}, "stop"),
            chunk(None, usage={"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}),
            Event(b"[DONE]"),
        ]
    )
    assert [[e["type"] for e in b] for b in batches] == [
        ["response.created", "response.in_progress"],
        ["response.output_item.added", "response.content_part.added", "response.output_text.delta"],
        ["response.output_text.delta"],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ],
    ]
    events = flat(batches)
    started = shape().response("in_progress", [], None)
    assert events[:2] == [
        {"type": "response.created", "sequence_number": 0, "response": {**started, "created_at": ANY}},
        {"type": "response.in_progress", "sequence_number": 1, "response": {**started, "created_at": ANY}},
    ]
    message = {
        "id": "msg_rid_0",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert events[2:-1] == numbered(
        [
            {"type": "response.output_item.added", "output_index": 0, "item": message},
            {"type": "response.content_part.added", **MSG, "part": {**HELLO, "text": ""}},
            {"type": "response.output_text.delta", **MSG, "delta": "Hel", "logprobs": []},
            {"type": "response.output_text.delta", **MSG, "delta": "lo", "logprobs": []},
            {"type": "response.output_text.done", **MSG, "text": "Hello", "logprobs": []},
            {"type": "response.content_part.done", **MSG, "part": HELLO},
            {"type": "response.output_item.done", "output_index": 0, "item": MESSAGE_DONE},
        ],
        2,
    )
    final = events[-1]
    assert (final["type"], final["sequence_number"]) == ("response.completed", 9)
    assert final["response"] == {
        **shape().response("completed", [MESSAGE_DONE], {"prompt_tokens": 4, "completion_tokens": 2}),
        "created_at": ANY,
    }
    assert final["response"]["usage"]["total_tokens"] == 6


def test_text_then_two_streamed_calls_close_each_item_before_the_next() -> None:
    events = flat(
        translate(
            [
                chunk({"content": "Checking."}),
                chunk(
                    {"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}}]}
                ),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
                chunk({"tool_calls": [{"index": 1, "function": {"name": "g", "arguments": "{}"}}]}),  # no id
                Event.of({"choices": ["not a dict"]}),
                chunk({"tool_calls": ["not a dict"]}),
                chunk({}, "tool_calls"),
                chunk({"content": "ignored"}, index=1),  # only the first choice is a response
            ]
        )
    )
    assert [e["type"] for e in events[2:8]] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    a = {"id": "fc_rid_0", "type": "function_call", "call_id": "call_a", "name": "f"}
    b = {"id": "fc_rid_1", "type": "function_call", "call_id": "fc_rid_1", "name": "g"}
    a_done = {**a, "status": "completed", "arguments": '{"q": 1}'}
    b_done = {**b, "status": "completed", "arguments": "{}"}
    assert events[8:-1] == numbered(
        [
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "item": {**a, "status": "in_progress", "arguments": ""},
            },
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_rid_0",
                "output_index": 1,
                "delta": '{"q":',
            },
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_rid_0",
                "output_index": 1,
                "delta": " 1}",
            },
            {
                "type": "response.function_call_arguments.done",
                "item_id": "fc_rid_0",
                "output_index": 1,
                "name": "f",
                "arguments": '{"q": 1}',
            },
            {"type": "response.output_item.done", "output_index": 1, "item": a_done},
            {
                "type": "response.output_item.added",
                "output_index": 2,
                "item": {**b, "status": "in_progress", "arguments": ""},
            },
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_rid_1",
                "output_index": 2,
                "delta": "{}",
            },
            {
                "type": "response.function_call_arguments.done",
                "item_id": "fc_rid_1",
                "output_index": 2,
                "name": "g",
                "arguments": "{}",
            },
            {"type": "response.output_item.done", "output_index": 2, "item": b_done},
        ],
        8,
    )
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    checking = {**MESSAGE_DONE, "content": [{**HELLO, "text": "Checking."}]}
    assert final["output"] == [checking, a_done, b_done]
    assert final["usage"] is None


def test_odd_but_valid_chunk_shapes() -> None:
    """Chunks real upstreams send now and then: junk between events, a choice without an index, a later
    choice first, a call whose chunks omit the index, text and a call in one delta, a call then text."""
    events = flat(
        translate(
            [
                Event(b"not json"),  # skipped, not the end
                Event.of(
                    {"choices": [{"index": 1, "delta": {"content": "other"}}, {"delta": {"content": "A"}}]}
                ),  # the second choice has no index: it is the first one
                chunk({"content": "B", "refusal": "C"}),
                chunk(
                    {
                        "content": "D",
                        "tool_calls": [{"index": 0, "id": "call_x", "function": {"arguments": "{"}}],
                    }
                ),
                chunk({"tool_calls": ["not a dict", {"function": {"arguments": "}"}}]}),  # no index: call 0
                chunk({"content": "E"}),  # text after a call: a new message item
            ]
        )
    )
    texts = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert texts == ["A", "BC", "D", "E"]
    calls = [
        e for e in events if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
    ]
    assert [c["item"] for c in calls] == [
        {
            "id": "fc_rid_0",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_x",
            "name": "",  # no name in the chunks
            "arguments": "{}",
        }
    ]
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call", "message"]
    assert final["output"][0]["content"][0]["text"] == "ABCD"
    assert final["output"][2]["content"][0]["text"] == "E"
    assert [o["id"] for o in final["output"]] == ["msg_rid_0", "fc_rid_0", "msg_rid_1"]
    assert [e["type"] for e in events].count("response.output_item.done") == 3


def test_message_items_are_numbered_among_messages() -> None:
    events = flat(
        translate(
            [
                chunk(
                    {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}
                ),
                chunk(
                    {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}
                ),
                chunk({"content": "Done."}),
            ]
        )
    )
    assert [o["id"] for o in events[-1]["response"]["output"]] == ["fc_rid_0", "fc_rid_1", "msg_rid_0"]


def test_a_stream_cut_by_the_token_limit_ends_incomplete() -> None:
    events = flat(translate([chunk({"content": "Hel"}), chunk({}, "length")]))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert b"response.incomplete" in TERMINAL


def test_an_empty_stream_still_completes_and_junk_is_skipped() -> None:
    events = flat(translate([Event(b"not json"), Event.of(["a list"]), Event(b"[DONE]")]))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert events[-1]["response"]["output"] == []


def test_the_error_event_carries_both_shapes() -> None:
    events = Events(shape())
    events.seq = 5
    raw = events.error(GatewayError(502, "upstream_stream_error", "The upstream stream ended.", param="p"))
    name, data = raw.decode().strip().split("\n")
    assert name == "event: error"
    payload = orjson.loads(data.removeprefix("data: "))
    assert payload == {
        "type": "error",
        "sequence_number": 5,
        "code": "upstream_stream_error",
        "message": "The upstream stream ended.",
        "param": "p",
        "error": {
            "message": "The upstream stream ended.",
            "type": "server_error",
            "param": "p",
            "code": "upstream_stream_error",
        },
    }


# --- any accepted request translates ----------------------------------------------------------------


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Strings mostly shaped like identifiers, so that most requests pass the allow-list (model names and call ids
# have patterns) and reach the translation; free JSON (schemas, annotations) as any JSON object, metadata as
# strings; every other type from the schema.
st.register_type_strategy(str, st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True) | st.text(max_size=12))
st.register_type_strategy(
    dict,
    lambda t: st.dictionaries(
        st.text(max_size=5),
        JSON if getattr(t, "__args__", (None, None))[1] is Any else st.text(max_size=8),
        max_size=3,
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_type(ResponsesRequest).map(lambda body: {**body, "model": "mistral-7b"}))
def test_any_request_the_allow_list_accepts_becomes_a_valid_chat_completion(body: dict[str, Any]) -> None:
    """Whatever the schema admits either is refused with a 400 or translates into a chat completion the chat
    schema accepts: a Responses request never crashes the bridge (a 5xx caused by client input)."""
    try:
        chat_of(dict(body))
    except GatewayError as refused:
        status = refused.status
    else:
        status = 200
    assert status in (200, 400)
