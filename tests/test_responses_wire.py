"""The native Responses wire format, as functions: chat body to Responses request, Responses answer and
stream back to chat (``gateway.responses.native_request``, ``.native_answer``, ``gateway.upstreams.native``).

tests/test_responses_native.py drives them through the gateway and a loopback upstream that serves
``/v1/responses``; these pin each mapping exactly, and two properties tie them to the bridge: what
the bridge makes survives the trip to a native upstream unchanged, and so does a chat answer that
goes out as a Responses object and comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.errors import GatewayError, UpstreamError
from gateway.openai_schema import CHAT, ChatRequest
from gateway.responses import Events, Shape, to_chat
from gateway.responses.native_answer import Chunks, NativeFailed, chat_usage, completion
from gateway.responses.native_request import Untranslatable, to_responses
from gateway.responses_schema import RESPONSES, ResponsesRequest
from gateway.sse import Event, Parser
from gateway.upstreams.base import UpstreamFailure, UpstreamResponse
from gateway.upstreams.native import NativeResponse, request
from tests.test_responses_bridge import chat_of  # also registers the request strategies

# --- request ---------------------------------------------------------------------------------------


def test_every_chat_field_lands_in_its_responses_field() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    body = to_responses(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.5,
            "top_p": 0.9,
            "parallel_tool_calls": False,
            "service_tier": "flex",
            "metadata": {"k": "v"},
            "user": "u1",
            "safety_identifier": "s1",
            "prompt_cache_key": "p1",
            "max_tokens": 100,
            "stream": True,
            "stream_options": {"include_usage": True},
            "store": True,
            "n": 1,
            "logprobs": False,
            "seed": None,
            "tools": [
                {"type": "function", "function": {"name": "a"}},
                {
                    "type": "function",
                    "function": {"name": "b", "description": "d", "parameters": schema, "strict": True},
                },
            ],
            "tool_choice": {"type": "function", "function": {"name": "b"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
            "verbosity": "low",
            "reasoning_effort": "high",
            "top_k": 5,
        },
        extensions=("top_k",),
    )
    assert body == {
        "input": [{"role": "user", "content": "hi"}],
        "store": False,  # always: a native upstream keeps nothing either
        "model": "m",
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "service_tier": "flex",
        "metadata": {"k": "v"},
        "user": "u1",
        "safety_identifier": "s1",
        "prompt_cache_key": "p1",
        "max_output_tokens": 100,
        "stream": True,
        "tools": [
            {"type": "function", "name": "a", "strict": False, "parameters": None},  # chat's defaults, said
            {"type": "function", "name": "b", "strict": True, "parameters": schema, "description": "d"},
        ],
        "tool_choice": {"type": "function", "name": "b"},
        "text": {
            "format": {"type": "json_schema", "name": "out", "strict": False, "schema": schema},
            "verbosity": "low",
        },
        "reasoning": {"effort": "high"},
        "top_k": 5,
    }


@pytest.mark.parametrize(
    ("chat", "expected"),
    [
        ({"max_completion_tokens": 7}, {"max_output_tokens": 7}),
        ({"tool_choice": "required"}, {"tool_choice": "required"}),
        ({"response_format": {"type": "json_object"}}, {"text": {"format": {"type": "json_object"}}}),
        ({"response_format": {"type": "text"}}, {"text": {"format": {"type": "text"}}}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "strict": True, "description": "d"},
                }
            },
            {"text": {"format": {"type": "json_schema", "name": "x", "strict": True, "description": "d"}}},
        ),
        ({"stream": False}, {"stream": False}),
    ],
)
def test_single_fields(chat: dict[str, Any], expected: dict[str, Any]) -> None:
    body = to_responses({"messages": [], **chat})
    assert body == {"input": [], "store": False, **expected}


def test_messages_become_items() -> None:
    image = {"url": "https://example.org/a.png"}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    items = to_responses(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "developer", "content": [{"type": "text", "text": "d"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": image},
                        {"type": "image_url", "image_url": {**image, "detail": "low"}},
                    ],
                },
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "r"},
                {
                    "role": "tool",
                    "tool_call_id": "c1",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "x", "tool_calls": [{**call, "id": "c2"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "y"}], "refusal": "no"},
                {"role": "assistant", "content": None, "refusal": "no"},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": None},
            ]
        }
    )["input"]
    function_call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    assert items == [
        {"role": "system", "content": "s"},
        {"role": "developer", "content": [{"type": "input_text", "text": "d"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": image["url"]},
                {"type": "input_image", "image_url": image["url"], "detail": "low"},
            ],
        },
        function_call,
        {"type": "function_call_output", "call_id": "c1", "output": "r"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {"role": "assistant", "content": "x"},
        {**function_call, "call_id": "c2"},
        {
            "role": "assistant",
            "content": [{"type": "output_text", "text": "y"}, {"type": "refusal", "refusal": "no"}],
        },
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": ""},
    ]


def test_assistant_history_as_clients_send_it_back() -> None:
    """SDKs append the assistant message they got, with its empty fields as None and refusal parts."""
    items = to_responses(
        {
            "messages": [
                {"role": "assistant", "content": "a", "function_call": None, "audio": None, "refusal": None},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "b"}, {"type": "refusal", "refusal": "r"}],
                    "refusal": "s",
                },
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "r"}]},
                {"role": "user", "content": "c", "name": None},
            ]
        }
    )["input"]
    assert items == [
        {"role": "assistant", "content": "a"},
        {
            "role": "assistant",
            "content": [{"type": "output_text", "text": "b"}, {"type": "refusal", "refusal": "rs"}],
        },
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "r"}]},
        {"role": "user", "content": "c"},
    ]
    with pytest.raises(Untranslatable) as refused:
        to_responses(
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": "r"}, {"type": "x"}]}
                ]
            }
        )
    assert refused.value.field == "messages[0].content[1].type"


@pytest.mark.parametrize(
    ("chat", "field"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["x"]}, "stop"),
        ({"seed": 1}, "seed"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"modalities": ["text"]}, "modalities"),
        ({"top_k": 5}, "top_k"),  # an extension this deployment does not list
        ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0].type"),
        ({"messages": [{"role": "user", "content": "a", "name": "n"}]}, "messages[0].name"),
        ({"messages": [{"role": "function", "name": "f", "content": "a"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "custom"}]}
                ]
            },
            "messages[0].tool_calls[0].type",
        ),
        ({"messages": [{"role": "assistant", "content": "a", "audio": {"id": "x"}}]}, "messages[0].audio"),
    ],
)
def test_what_the_responses_api_cannot_carry_is_named(chat: dict[str, Any], field: str) -> None:
    with pytest.raises(Untranslatable) as refused:
        to_responses({"messages": [], **chat})
    assert refused.value.field == field
    assert str(refused.value) == field
    with pytest.raises(UpstreamFailure) as failed:  # the hop fails; another one may serve the request
        request({"messages": [], **chat}, ())
    assert failed.value.reason == "deployment.unsupported_field"
    assert failed.value.status == 400
    assert failed.value.retryable
    assert failed.value.message == (
        f"'{field}' cannot be sent to this model's upstream, which speaks the Responses API; "
        "remove it or use another model."
    )


def test_the_hop_passes_its_own_extensions() -> None:
    assert request({"messages": [], "top_k": 5}, ("top_k",))["top_k"] == 5


def test_the_chat_body_is_not_changed() -> None:
    chat = {"messages": [{"role": "user", "content": "a"}], "stream": True, "stream_options": {}}
    before = orjson.dumps(chat)
    to_responses(chat)
    assert orjson.dumps(chat) == before


def _strict(chat: dict[str, Any]) -> dict[str, Any]:
    """The chat body with chat's default strictness written out, as a native upstream is told it, and an empty
    assistant turn (no text, refusal or call) as an empty string."""
    out = dict(chat)
    out["messages"] = [
        {**m, "content": ""} if m == {"role": "assistant", "content": None} else m for m in out["messages"]
    ]
    if "tools" in out:
        out["tools"] = [
            {**t, "function": {**t["function"], "strict": bool(t["function"].get("strict"))}}
            for t in out["tools"]
        ]
    fmt = out.get("response_format")
    if fmt is not None and fmt["type"] == "json_schema":
        schema = fmt["json_schema"]
        out["response_format"] = {**fmt, "json_schema": {**schema, "strict": bool(schema.get("strict"))}}
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_type(ResponsesRequest).map(lambda body: {**body, "model": "mistral-7b"}))
def test_what_the_bridge_makes_reaches_a_native_upstream_unchanged(body: dict[str, Any]) -> None:
    """For any request the allow-list accepts, the Responses request a native hop gets is one the allow-list
    accepts too, and it means the same chat completion: nothing is lost or added on the way."""
    try:
        chat = chat_of(dict(body))
    except GatewayError:
        return
    chat.pop("gateway_rag", None)
    native = to_responses(chat)
    RESPONSES.validate_python(native)
    assert to_chat(native) == _strict(chat)


# --- answer ----------------------------------------------------------------------------------------


def response(output: list[Any], **extra: Any) -> bytes:
    return orjson.dumps(
        {"id": "r1", "created_at": 9, "model": "gpt", "status": "completed", "output": output, **extra}
    )


def text_item(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": list(parts)}


USAGE = {
    "input_tokens": 3,
    "input_tokens_details": {"cached_tokens": 1},
    "output_tokens": 4,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 9,  # as reported, even when it is not the sum
}
CHAT_USAGE = {
    "prompt_tokens": 3,
    "completion_tokens": 4,
    "total_tokens": 9,
    "prompt_tokens_details": {"cached_tokens": 1},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def test_a_response_becomes_a_chat_completion() -> None:
    raw = response(
        [
            {"type": "reasoning", "id": "rs", "summary": []},
            text_item({"type": "output_text", "text": "Hel"}, {"type": "refusal", "refusal": "no"}),
            text_item({"type": "output_text", "text": "lo"}),
            {"type": "function_call", "id": "fc", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call", "id": "fc2", "name": "g"},
        ],
        usage=USAGE,
    )
    assert orjson.loads(completion(raw)) == {
        "id": "chatcmpl-r1",
        "created": 9,
        "model": "gpt",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "refusal": "no",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                        {"id": "fc2", "type": "function", "function": {"name": "g", "arguments": ""}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": CHAT_USAGE,
    }


@pytest.mark.parametrize(
    ("extra", "finish"),
    [
        ({}, "stop"),
        ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, "length"),
        ({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}}, "content_filter"),
        ({"status": "incomplete", "incomplete_details": {"reason": "other"}}, "stop"),
        ({"incomplete_details": {"reason": "max_output_tokens"}}, "stop"),  # only an incomplete status counts
    ],
)
def test_the_finish_reason(extra: dict[str, Any], finish: str) -> None:
    chat = orjson.loads(completion(response([text_item({"type": "output_text", "text": "a"})], **extra)))
    assert chat["choices"][0]["finish_reason"] == finish
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "a"}
    assert chat["usage"] is None


UNUSABLE = "The upstream returned no usable response."
FAILED = "The upstream's response failed."


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", UNUSABLE),
        (b"{}", UNUSABLE),
        (b"[]", UNUSABLE),
        (b'{"output": {}}', UNUSABLE),
        (response([], status="failed"), FAILED),
        (response([], error={"code": "server_error", "message": "m"}), FAILED),
    ],
)
def test_a_failed_or_unusable_response_raises(raw: bytes, message: str) -> None:
    with pytest.raises(NativeFailed) as failed:
        completion(raw)
    assert str(failed.value) == message  # what the client reads in the 502


def test_odd_items_are_skipped_and_missing_values_are_empty() -> None:
    raw = response(["x", {"type": "message", "content": [None, {"type": "output_text"}]}])
    message = orjson.loads(completion(raw))["choices"][0]["message"]
    assert message == {"role": "assistant", "content": ""}
    raw = response(
        [
            text_item(
                {"type": "refusal", "refusal": "a"}, {"type": "refusal"}, {"type": "refusal", "refusal": "b"}
            ),
            {"type": "function_call"},
        ]
    )
    message = orjson.loads(completion(raw))["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "refusal": "ab",
        "tool_calls": [{"id": "", "type": "function", "function": {"name": "", "arguments": ""}}],
    }
    bare = orjson.loads(completion(b'{"output": []}'))
    assert (bare["id"], bare["created"], bare["model"]) == ("chatcmpl-", 0, "")
    assert orjson.loads(completion(response([])))["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
    }


def test_usage_without_details_or_total() -> None:
    assert chat_usage({"input_tokens": 2, "output_tokens": 3}) == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert chat_usage("x") is None


@settings(max_examples=200, deadline=None)
@given(
    content=st.none() | st.text(min_size=1, max_size=20),
    calls=st.lists(
        st.tuples(st.from_regex(r"c[0-9]{1,3}", fullmatch=True), st.text(max_size=10)), max_size=3
    ),
    finish=st.sampled_from(["stop", "length", "content_filter", "tool_calls"]),
    prompt=st.integers(0, 10_000),
    out=st.integers(0, 10_000),
)
def test_a_chat_answer_survives_the_native_round_trip(
    content: str | None, calls: list[tuple[str, str]], finish: str, prompt: int, out: int
) -> None:
    """A chat answer written as a Responses object (as OpenAI would answer) reads back as the same answer."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    tool_calls = [{"id": i, "type": "function", "function": {"name": "f", "arguments": a}} for i, a in calls]
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
    chat = {"choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}
    back = orjson.loads(completion(Shape({"model": "m"}, "rid").answer(orjson.dumps(chat))))
    [choice] = back["choices"]
    assert choice["message"] == message
    cut = finish in ("length", "content_filter")  # an incomplete response keeps its reason
    assert choice["finish_reason"] == (finish if cut else "tool_calls" if tool_calls else "stop")
    assert back["usage"] == {
        **usage,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


# --- stream ----------------------------------------------------------------------------------------


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in events)


def chunks_of(out: bytes) -> list[Any]:
    return [e.json if not e.is_done else "[DONE]" for e in Parser().feed(out)]


CREATED = {
    "type": "response.created",
    "response": {"id": "r1", "created_at": 9, "model": "gpt", "output": []},
}
HEAD = {"id": "chatcmpl-r1", "created": 9, "model": "gpt", "object": "chat.completion.chunk"}


def delta(d: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if d is None else [{"index": 0, "delta": d, "finish_reason": finish}]
    return {**HEAD, "choices": choices, **extra}


def test_a_responses_stream_becomes_chat_chunks() -> None:
    call = {"type": "function_call", "id": "fc1", "call_id": "c1", "name": "f", "arguments": ""}
    stream = sse(
        CREATED,
        {"type": "response.in_progress"},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message"}},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "He"},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "llo"},
        {"type": "response.refusal.delta", "output_index": 0, "delta": "no"},
        {"type": "response.output_text.done", "output_index": 0, "text": "Hello"},
        {"type": "response.output_item.added", "output_index": 1, "item": call},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": '{"a"'},
        {
            "type": "response.output_item.added",
            "output_index": 2,
            "item": {**call, "call_id": "c2", "name": "g"},
        },
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{}"},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": ":1}"},
        {"type": "response.function_call_arguments.delta", "output_index": 7, "delta": "lost"},
        {"type": "response.completed", "response": {"status": "completed", "usage": USAGE}},
        {"type": "response.output_text.delta", "delta": "after the end"},
    )
    t = Chunks()
    out = t.feed(stream) + t.close()
    assert chunks_of(out) == [
        delta({"role": "assistant", "content": "He"}),
        delta({"content": "llo"}),
        delta({"refusal": "no"}),
        delta(
            {
                "tool_calls": [
                    {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
                ]
            }
        ),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
        delta(
            {
                "tool_calls": [
                    {"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}
                ]
            }
        ),
        delta({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        delta({}, "tool_calls"),
        delta(None, usage=CHAT_USAGE),
        "[DONE]",
    ]


def test_any_chunking_gives_the_same_chunks() -> None:
    stream = sse(
        CREATED,
        {"type": "response.output_text.delta", "delta": "Hi"},
        {
            "type": "response.incomplete",
            "response": {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
        },
    )
    whole = Chunks()
    expected = whole.feed(stream) + whole.close()
    bytewise = Chunks()
    assert (
        b"".join(bytewise.feed(stream[i : i + 1]) for i in range(len(stream))) + bytewise.close() == expected
    )
    assert chunks_of(expected) == [
        delta({"role": "assistant", "content": "Hi"}),
        delta({}, "length"),
        delta(None, usage=None),
        "[DONE]",
    ]


def test_a_final_event_without_its_blank_line_still_ends_the_stream() -> None:
    t = Chunks()
    out = t.feed(sse(CREATED)) + t.feed(b'data: {"type": "response.completed", "response": {}}')
    out += t.close()
    assert chunks_of(out) == [delta({"role": "assistant"}, "stop"), delta(None, usage=None), "[DONE]"]


def test_missing_values_in_a_stream_are_empty() -> None:
    t = Chunks()  # no response.created: the default head
    out = t.feed(
        sse(
            {"type": "response.output_text.delta"},
            {"type": "response.refusal.delta"},
            {"type": "response.output_item.added", "item": {"type": "function_call"}},  # no output_index
            {"type": "response.function_call_arguments.delta", "delta": "{}"},  # nor here: the same call
            {"type": "response.function_call_arguments.delta"},
            {"type": "response.completed", "response": "not an object"},
        )
    )
    blank = {"id": "chatcmpl-", "created": 0, "model": "", "object": "chat.completion.chunk"}
    call = {"index": 0, "id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    assert chunks_of(out + t.close()) == [
        {**blank, "choices": [{"index": 0, "delta": d, "finish_reason": f}]}
        for d, f in (
            ({"role": "assistant", "content": ""}, None),
            ({"refusal": ""}, None),
            ({"tool_calls": [call]}, None),
            ({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, None),
            ({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}, None),
            ({}, "tool_calls"),
        )
    ] + [{**blank, "choices": [], "usage": None}, "[DONE]"]
    t = Chunks()
    t.feed(sse({"type": "response.created", "response": {}}))
    assert (
        chunks_of(t.feed(sse({"type": "response.output_text.delta", "delta": "a"})))[0]["id"] == "chatcmpl-"
    )


def test_arguments_an_added_call_already_has_are_kept() -> None:
    t = Chunks()
    item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":'}
    out = t.feed(sse({"type": "response.output_item.added", "output_index": 0, "item": item}))
    [chunk] = chunks_of(out)
    assert chunk["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":'}


def test_nothing_follows_the_end() -> None:
    t = Chunks()
    out = t.feed(sse({"type": "response.completed", "response": {}}))
    assert out.endswith(b"data: [DONE]\n\n")
    assert t.feed(sse({"type": "response.output_text.delta", "delta": "late"})) == b""
    assert t.feed(b"data: not json\n\n") == b""
    assert t.close() == b""


@pytest.mark.parametrize(
    "events",
    [
        [CREATED, {"type": "error", "code": "server_error", "message": "m"}],
        [CREATED, {"type": "response.failed", "response": {"status": "failed"}}],
    ],
)
def test_a_failed_stream_raises(events: list[dict[str, Any]]) -> None:
    with pytest.raises(NativeFailed) as failed:
        Chunks().feed(sse(*events))
    assert str(failed.value) == FAILED


def test_a_stream_that_ends_before_its_terminal_event_raises() -> None:
    t = Chunks()
    assert chunks_of(
        t.feed(sse(CREATED, {"type": "response.output_text.delta", "delta": "a"}) + b"data: junk\n\n")
    ) == [delta({"role": "assistant", "content": "a"})]
    with pytest.raises(NativeFailed) as failed:
        t.close()
    assert str(failed.value) == "The upstream stream ended before its response completed."


def test_a_chat_stream_survives_the_native_round_trip() -> None:
    """Chat chunks written as Responses events (as OpenAI would stream them) read back as the same deltas."""

    async def events() -> AsyncIterator[Event]:
        yield Event.of({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]})
        yield Event.of({"choices": [{"index": 0, "delta": {"content": "lo"}}]})
        call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}}
        yield Event.of({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        yield Event.of(
            {
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}}
                ]
            }
        )
        yield Event.of({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        yield Event.of(
            {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}
        )

    async def run() -> bytes:
        return b"".join(
            [
                e.encode()
                async for batch in Events(Shape({"model": "m"}, "rid")).translate(events())
                for e in batch
            ]
        )

    t = Chunks()
    out = chunks_of(t.feed(asyncio.run(run())) + t.close())
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in out[:-2] if c["choices"]) == "Hello"
    calls = [tc for c in out[:-2] if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", ())]
    assert calls == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{"}},
        {"index": 0, "function": {"arguments": "}"}},
    ]
    assert out[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-2]["usage"]["total_tokens"] == 5
    assert out[-1] == "[DONE]"


# --- the upstream response wrapper -------------------------------------------------------------------


class Canned(UpstreamResponse):
    def __init__(self, body: bytes, parts: list[bytes] | None = None) -> None:
        self.body = body
        self.parts = parts or []
        self.status = 200
        self.content_type = "application/json"
        self.closed = self.released = False

    async def read(self) -> bytes:
        return self.body

    async def chunks(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part

    def close(self) -> None:
        self.closed = True

    async def release(self) -> None:
        self.released = True


def test_the_wrapper_reads_chat_and_fails_as_the_gateway_does() -> None:
    good = NativeResponse(Canned(response([text_item({"type": "output_text", "text": "a"})])))
    assert (good.status, good.content_type) == (200, "application/json")
    assert orjson.loads(asyncio.run(good.read()))["choices"][0]["message"]["content"] == "a"
    with pytest.raises(UpstreamError) as failed:
        asyncio.run(NativeResponse(Canned(response([], status="failed"))).read())
    assert (failed.value.status, failed.value.code) == (502, "upstream_invalid_response")
    assert failed.value.message == FAILED


def test_the_wrapper_streams_chat_and_a_failure_is_an_upstream_failure() -> None:
    async def collect(parts: list[bytes]) -> list[bytes]:
        return [c async for c in NativeResponse(Canned(b"", parts)).chunks()]

    stream = sse(
        CREATED,
        {"type": "response.output_text.delta", "delta": "a"},
        {"type": "response.completed", "response": {}},
    )
    got = asyncio.run(collect([stream[:10], stream[10:]]))
    assert all(got)  # nothing empty is passed on
    assert chunks_of(b"".join(got))[-1] == "[DONE]"
    for broken, message in (
        ([sse(CREATED, {"type": "error"})], FAILED),
        ([sse(CREATED)], "The upstream stream ended before its response completed."),
    ):
        with pytest.raises(UpstreamFailure) as failed:
            asyncio.run(collect(broken))
        assert (failed.value.reason, failed.value.status, failed.value.retryable) == (
            "upstream_5xx",
            502,
            True,
        )
        assert failed.value.message == message


def test_the_wrapper_hands_close_and_release_down() -> None:
    inner = Canned(b"")
    wrapper = NativeResponse(inner)
    wrapper.close()
    asyncio.run(wrapper.release())
    assert inner.closed
    assert inner.released


def valid_chat(chat: dict[str, Any]) -> dict[str, Any] | None:
    """``chat`` with what the chat schema refuses taken out (a top-level field, or a message), else None:
    a generated body is rarely valid whole, and repairing it lets about two in three reach the translation."""
    chat = {**chat, "model": "m"}
    for _ in range(20):
        try:
            CHAT.validate_python(chat)
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"]
            messages = chat["messages"]
            if loc[0] == "messages" and len(loc) > 1 and isinstance(loc[1], int) and len(messages) > 1:
                chat["messages"] = [m for i, m in enumerate(messages) if i != loc[1]]
            elif loc[0] in ("model", "messages"):
                return None
            else:
                del chat[str(loc[0])]
        else:
            return chat
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_type(ChatRequest))
def test_any_valid_chat_body_translates_or_names_what_it_cannot(generated: dict[str, Any]) -> None:
    """A chat client's request on a Responses-only deployment: whatever the chat schema admits either becomes a
    Responses request or fails the hop naming the field; it never raises anything else (a 5xx from input)."""
    chat = valid_chat(generated)
    if chat is None:
        return
    field = ""
    try:
        body = to_responses(chat)
    except Untranslatable as refused:
        field = refused.field
    if field:
        assert field.split("[")[0].split(".")[0] in chat  # names a field the request has
        return
    assert body["store"] is False
    assert len(body["input"]) >= sum(1 for m in chat["messages"] if m["role"] != "assistant")
