"""Where text sits in requests and answers (gateway/pii/texts.py), field by field.

tests/test_request_fields.py sends every field through a real gateway; these pin the walker's
own promises: exactly which strings reach the scan function, in which pieces, that the caller's
request is never changed, and that unchanged parts are shared rather than copied.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.pii.texts import Unscannable, collect, map_json_text, map_request, map_response


def upper(text: str) -> str:
    return text.upper()


def same(text: str) -> str:
    return text


REQUEST: dict[str, Any] = {
    "model": "mistral-7b",
    "user": "pseudo-user",
    "messages": [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "image_url", "image_url": {"url": "https://ex.org/a/b?mail=x@y.de#top"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"to": "bob", "n": 1}'},
                }
            ],
            "function_call": {"name": "g", "arguments": "not json"},
        },
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "sends",
                "parameters": {"type": "object", "enum": ["a"]},
            },
        }
    ],
    "stop": ["END"],
    "metadata": {"ticket": "t-1"},
    "temperature": 0.2,
    "vendor_extension": {"note": ["deep"], "n": 5},
}


def test_every_text_field_and_nothing_else_reaches_the_scan_function_in_order() -> None:
    assert collect(REQUEST, "chat") == [
        "be brief",
        "ann",
        "hello",
        "https:/",
        "ex.org",
        "a",
        "b",
        "mail",
        "x@y.de",
        "top",
        "bob",
        "not json",
        "sends",
        "object",
        "a",
        "END",
        "t-1",
        "deep",
    ]


def test_the_scanned_copy_changes_only_text_and_leaves_the_callers_request_alone() -> None:
    before = copy.deepcopy(REQUEST)
    out = map_request(REQUEST, "chat", upper)
    assert before == REQUEST
    assert out["model"] == "mistral-7b"
    assert out["user"] == "pseudo-user"
    assert out["temperature"] == 0.2
    assert out["messages"][0] == {"role": "system", "content": "BE BRIEF"}
    parts = out["messages"][1]["content"]
    assert out["messages"][1]["name"] == "ANN"
    assert out["messages"][1]["role"] == "user"
    assert parts[0] == {"type": "text", "text": "HELLO"}
    assert parts[1]["image_url"]["url"] == "HTTPS://EX.ORG/A/B?MAIL=X@Y.DE#TOP"
    assert parts[2] == REQUEST["messages"][1]["content"][2]  # base64 media is not text
    assistant = out["messages"][2]
    assert orjson.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"to": "BOB", "n": 1}
    assert assistant["tool_calls"][0]["function"]["name"] == "f"
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert assistant["function_call"] == {"name": "g", "arguments": "NOT JSON"}
    assert out["tools"][0]["function"] == {
        "name": "f",
        "description": "SENDS",
        "parameters": {"type": "OBJECT", "enum": ["A"]},
    }
    assert out["stop"] == ["END"]
    assert out["metadata"] == {"ticket": "T-1"}
    assert out["vendor_extension"] == {"note": ["DEEP"], "n": 5}


def test_unchanged_parts_are_shared_and_an_unchanged_request_is_returned_as_is() -> None:
    assert map_request(REQUEST, "chat", same) is REQUEST

    def only_hello(text: str) -> str:
        return "HI" if text == "hello" else text

    out = map_request(REQUEST, "chat", only_hello)
    assert out is not REQUEST
    assert out["messages"] is not REQUEST["messages"]
    assert out["messages"][1]["content"][0] == {"type": "text", "text": "HI"}
    for shared in ("tools", "stop", "metadata", "vendor_extension"):
        assert out[shared] is REQUEST[shared]
    assert out["messages"][0] is REQUEST["messages"][0]
    assert out["messages"][2] is REQUEST["messages"][2]
    assert out["messages"][1]["content"][1] is REQUEST["messages"][1]["content"][1]


def test_large_json_numbers_are_scanned_as_text_small_ones_and_booleans_are_not() -> None:
    seen: list[str] = []

    def card(text: str) -> str:
        seen.append(text)
        return "<CARD>" if text.lstrip("-").isdigit() and len(text.lstrip("-")) >= 6 else text

    raw = orjson.dumps({"a": 4111111111111111, "b": 99999, "c": 100000, "d": -100000, "e": True, "f": 1.5e9})
    out = orjson.loads(map_json_text(raw.decode(), card))
    assert out == {"a": "<CARD>", "b": 99999, "c": "<CARD>", "d": "<CARD>", "e": True, "f": 1.5e9}
    assert seen == ["4111111111111111", "100000", "-100000"]
    kept = orjson.dumps({"n": 123456}).decode()
    assert map_json_text(kept, same) is kept  # scanned, unchanged: the number stays a number


def test_json_text_keeps_its_own_spelling_when_nothing_changes_and_falls_back_when_not_json() -> None:
    spaced = '{ "a" : [ "x" , 1 ] }'
    assert map_json_text(spaced, same) is spaced
    assert orjson.loads(map_json_text(spaced, upper)) == {"a": ["X", 1]}
    assert map_json_text('"quoted"', upper) == '"QUOTED"'
    assert map_json_text("12", upper) == "12"
    assert map_json_text("null", upper) == "null"
    assert map_json_text("{broken", upper, raw_fn=lambda t: f"raw:{t}") == "raw:{broken"
    assert map_json_text("{broken", upper) == "{BROKEN"


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2]], ["ok", 3], 5])
def test_token_id_embeddings_input_cannot_be_scanned(value: Any) -> None:
    with pytest.raises(Unscannable):
        map_request({"model": "e", "input": value}, "embeddings", same)


def test_embeddings_text_input_is_scanned() -> None:
    assert collect({"model": "e", "input": ["a", "b"], "user": "u"}, "embeddings") == ["a", "b"]
    assert map_request({"model": "e", "input": "a"}, "embeddings", upper) == {"model": "e", "input": "A"}


def test_answers_are_mapped_in_place_text_and_tool_arguments_apart() -> None:
    response: dict[str, Any] = {
        "choices": [
            "junk",
            {"index": 0},
            {
                "index": 1,
                "message": {
                    "content": "hi",
                    "refusal": "no",
                    "tool_calls": [
                        {"function": {"arguments": '{"a": "b"}'}},
                        "junk",
                        {"function": {"arguments": 3}},
                    ],
                    "function_call": {"arguments": '{"c": "d"}'},
                },
            },
            {"index": 2, "message": {"content": None, "function_call": "junk"}},
        ]
    }
    out = map_response(response, upper, lambda t: f"json:{t}")
    assert out is response
    msg = response["choices"][2]["message"]
    assert (msg["content"], msg["refusal"]) == ("HI", "NO")
    assert msg["tool_calls"] == [
        {"function": {"arguments": 'json:{"a": "b"}'}},
        "junk",
        {"function": {"arguments": 3}},
    ]
    assert msg["function_call"] == {"arguments": 'json:{"c": "d"}'}
    assert response["choices"][3]["message"] == {"content": None, "function_call": "junk"}
    assert map_response({"choices": None}, upper, upper) == {"choices": None}
