"""StreamEditor and OutputScanner chunk by chunk (gateway/pii/stream.py), with exact outputs.

The end-to-end stream tests (test_stream_shapes.py, test_pii_gateway.py) check what a client
finally reads; these check each chunk the editor emits, what it holds back, and what it reports
as changed, so that a changed branch in the editor shows up here (docs/testing.md).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.pii.analyzer import Analyzer, Span
from gateway.pii.placeholders import Vault
from gateway.pii.stream import WINDOW, OutputScanner, StreamEditor

EMAIL = "anna.schmidt@example.de"
QUOTED = 'Anna "Nan" Schmidt\\'  # a value that JSON must escape


@pytest.fixture
def vault() -> Vault:
    v = Vault(["EMAIL_ADDRESS", "PERSON"])
    assert v.placeholder("EMAIL_ADDRESS", EMAIL) == "<EMAIL_ADDRESS_1>"
    assert v.placeholder("PERSON", QUOTED) == "<PERSON_1>"
    return v


def chunk(*choices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": list(choices),
        **extra,
    }


def content(text: str, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": {"content": text}, "finish_reason": finish}


async def run(editor: StreamEditor, chunks: list[dict[str, Any]]) -> list[bool]:
    return [await editor.edit(c) for c in chunks]


async def test_a_placeholder_split_over_chunks_is_held_and_restored_in_the_next(vault: Vault) -> None:
    editor = StreamEditor(vault)
    first, second = chunk(content("Mail <EMAIL_")), chunk(content("ADDRESS_1> now"))
    assert await run(editor, [first, second]) == [True, True]
    assert first["choices"][0]["delta"]["content"] == "Mail "
    assert second["choices"][0]["delta"]["content"] == f"{EMAIL} now"


async def test_a_chunk_without_placeholders_is_reported_unchanged(vault: Vault) -> None:
    editor = StreamEditor(vault)
    plain = chunk(content("Hello there"))
    assert await editor.edit(plain) is False
    assert plain["choices"][0]["delta"]["content"] == "Hello there"
    assert (
        await editor.edit(chunk({"index": 0, "delta": {"role": "assistant"}, "finish_reason": None})) is False
    )
    assert await editor.edit({"choices": None}) is False
    assert await editor.edit({"choices": ["not a dict", 3]}) is False


async def test_held_text_goes_out_with_the_finish_reason_chunk(vault: Vault) -> None:
    editor = StreamEditor(vault)
    start, end = chunk(content("Write to <EMAIL_ADDRESS")), chunk(content("", finish="stop"))
    await run(editor, [start, end])
    assert start["choices"][0]["delta"]["content"] == "Write to "
    assert end["choices"][0]["delta"] == {"content": "<EMAIL_ADDRESS"}  # not a placeholder after all
    # A finish chunk without a delta gets one; nothing is held any more afterwards.
    editor = StreamEditor(vault)
    await editor.edit(chunk(content("To [person")))
    bare = chunk({"index": 0, "finish_reason": "stop"})
    assert await editor.edit(bare) is True
    assert bare["choices"][0]["delta"] == {"content": "[person"}
    assert await editor.tail() is None


async def test_the_finish_chunk_flushes_only_its_own_choice(vault: Vault) -> None:
    editor = StreamEditor(vault)
    await editor.edit(chunk(content("A <PERSON", index=0), content("B <EMAIL_ADDRESS", index=1)))
    done_1 = chunk({"index": 1, "delta": {"content": "_1>"}, "finish_reason": "stop"})
    assert await editor.edit(done_1) is True
    assert done_1["choices"][0]["delta"] == {"content": EMAIL}
    done_0 = chunk({"index": 0, "delta": {}, "finish_reason": "length"})
    assert await editor.edit(done_0) is True
    assert done_0["choices"][0]["delta"] == {"content": "<PERSON"}


async def test_a_choice_without_index_is_choice_zero(vault: Vault) -> None:
    editor = StreamEditor(vault)
    await editor.edit(chunk({"delta": {"content": "Hi <PERSON_"}}))
    end = chunk({"index": 0, "delta": {"content": "1>!"}, "finish_reason": "stop"})
    await editor.edit(end)
    assert end["choices"][0]["delta"]["content"] == f"{QUOTED}!"


async def test_refusals_are_restored_and_flushed_like_content(vault: Vault) -> None:
    editor = StreamEditor(vault)
    first = chunk({"index": 0, "delta": {"refusal": "Cannot mail <EMAIL_ADDRESS_"}, "finish_reason": None})
    last = chunk({"index": 0, "delta": {"refusal": "1"}, "finish_reason": "stop"})
    await run(editor, [first, last])
    assert first["choices"][0]["delta"]["refusal"] == "Cannot mail "
    assert last["choices"][0]["delta"] == {"refusal": "<EMAIL_ADDRESS_1"}
    editor = StreamEditor(vault)
    one = chunk({"index": 0, "delta": {"refusal": "No, <PERSON_1>."}, "finish_reason": None})
    assert await editor.edit(one) is True
    assert one["choices"][0]["delta"]["refusal"] == f"No, {QUOTED}."


def tool_delta(index: int, arguments: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}


async def test_tool_call_arguments_are_restored_json_escaped_per_call(vault: Vault) -> None:
    editor = StreamEditor(vault)
    chunks = [
        chunk({"index": 0, "delta": tool_delta(0, '{"to": "<PERS'), "finish_reason": None}),
        chunk({"index": 0, "delta": tool_delta(1, '{"mail": "<EMAIL_ADDRESS_1>"}'), "finish_reason": None}),
        chunk({"index": 0, "delta": tool_delta(0, 'ON_1>"}'), "finish_reason": None}),
    ]
    assert await run(editor, chunks) == [True, True, True]
    args = [c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks]
    assert args == ['{"to": "', f'{{"mail": "{EMAIL}"}}', json.dumps(QUOTED)[1:-1] + '"}']
    assert json.loads(args[0] + args[2]) == {"to": QUOTED}


async def test_held_tool_call_arguments_go_out_with_finish_reason_under_their_call_index(
    vault: Vault,
) -> None:
    editor = StreamEditor(vault)
    await editor.edit(chunk({"index": 0, "delta": tool_delta(2, '{"x": "<PERSON'), "finish_reason": None}))
    end = chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
    assert await editor.edit(end) is True
    assert end["choices"][0]["delta"] == {"tool_calls": [{"index": 2, "function": {"arguments": "<PERSON"}}]}


async def test_tool_calls_without_an_index_and_malformed_calls(vault: Vault) -> None:
    editor = StreamEditor(vault)
    odd = chunk(
        {
            "index": 0,
            "delta": {
                "tool_calls": [
                    {"function": {"arguments": '"<PERSON_1>"'}},
                    "junk",
                    {"function": {"arguments": 5}},
                    {"function": None},
                ]
            },
            "finish_reason": None,
        }
    )
    assert await editor.edit(odd) is True
    calls = odd["choices"][0]["delta"]["tool_calls"]
    assert calls[0]["function"]["arguments"] == json.dumps(QUOTED)
    assert calls[1:] == ["junk", {"function": {"arguments": 5}}, {"function": None}]
    unchanged = chunk({"index": 0, "delta": tool_delta(0, '{"a": 1}'), "finish_reason": None})
    assert await editor.edit(unchanged) is False


async def test_legacy_function_call_arguments_are_restored_and_flushed(vault: Vault) -> None:
    editor = StreamEditor(vault)
    first = chunk(
        {
            "index": 0,
            "delta": {"function_call": {"name": "f", "arguments": '{"p": "<PERSON_1>", "m": "<EMAIL'}},
            "finish_reason": None,
        }
    )
    assert await editor.edit(first) is True
    assert first["choices"][0]["delta"]["function_call"] == {
        "name": "f",
        "arguments": '{"p": "' + json.dumps(QUOTED)[1:-1] + '", "m": "',
    }
    end = chunk({"index": 0, "delta": {}, "finish_reason": "function_call"})
    assert await editor.edit(end) is True
    assert end["choices"][0]["delta"] == {"function_call": {"arguments": "<EMAIL"}}
    editor = StreamEditor(vault)
    same = chunk({"index": 0, "delta": {"function_call": {"arguments": "{}"}}, "finish_reason": None})
    assert await editor.edit(same) is False
    assert (
        await editor.edit(chunk({"index": 0, "delta": {"function_call": "x"}, "finish_reason": None}))
        is False
    )


async def test_flush_appends_to_text_already_in_the_finish_chunk(vault: Vault) -> None:
    editor = StreamEditor(vault)
    await editor.edit(
        chunk(
            {
                "index": 0,
                "delta": {"content": "a <P", "function_call": {"arguments": "{<PER"}},
                "finish_reason": None,
            }
        )
    )
    end = chunk(
        {
            "index": 0,
            "delta": {"content": "b", "function_call": {"arguments": "SON"}},
            "finish_reason": "stop",
        }
    )
    await editor.edit(end)
    # "{" went out with the first chunk; "<PERSON" was held over both and is appended at the end.
    assert end["choices"][0]["delta"] == {"content": "<Pb", "function_call": {"arguments": "<PERSON"}}


async def test_tail_carries_what_a_stream_without_finish_reason_still_holds(vault: Vault) -> None:
    editor = StreamEditor(vault)
    assert await editor.tail() is None
    await editor.edit(
        chunk(
            content("x <PERSON", index=1),
            content("y <EMAIL", index=0),
            content("z", index=2),
            system_fingerprint="fp",
        )
    )
    tail = await editor.tail()
    assert tail == {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": "<EMAIL"}, "finish_reason": None},
            {"index": 1, "delta": {"content": "<PERSON"}, "finish_reason": None},
        ],
    }
    assert await editor.tail() is None  # flushed once
    editor = StreamEditor(vault)
    await editor.edit({"choices": [content("q <PERSON")]})
    assert await editor.tail() == {
        "choices": [{"index": 0, "delta": {"content": "<PERSON"}, "finish_reason": None}]
    }


# --- OutputScanner ------------------------------------------------------------------------------


def redact(text: str, spans: tuple[Span, ...]) -> str:
    for span in sorted(spans, key=lambda s: s.start, reverse=True):
        text = text[: span.start] + f"[{span.entity}]" + text[span.end :]
    return text


@pytest.fixture
def analyzer() -> Analyzer:
    return Analyzer({"EMAIL_ADDRESS": 0.5})


async def test_the_scanner_holds_up_to_a_window_and_releases_all_but_a_window(analyzer: Analyzer) -> None:
    scanner = OutputScanner(analyzer, redact)
    assert await scanner.feed("a" * WINDOW) == ""  # exactly a window: still held
    assert await scanner.feed("b") == "a"  # one more: all but the last WINDOW characters
    assert await scanner.feed("", final=True) == "a" * (WINDOW - 1) + "b"
    assert await scanner.feed("", final=True) == ""


async def test_the_scanner_never_cuts_through_an_entity_and_redacts_it_whole(analyzer: Analyzer) -> None:
    scanner = OutputScanner(analyzer, redact)
    text = "x" * 60 + f" mail {EMAIL} please " + "y" * 70
    out = ""
    for i in range(0, len(text), 7):
        out += await scanner.feed(text[i : i + 7])
    out += await scanner.feed("", final=True)
    assert out == "x" * 60 + " mail [EMAIL_ADDRESS] please " + "y" * 70
    assert EMAIL not in out


async def test_the_scanner_applies_only_spans_before_the_cut(analyzer: Analyzer) -> None:
    seen: list[tuple[str, tuple[Span, ...]]] = []

    def record(text: str, spans: tuple[Span, ...]) -> str:
        seen.append((text, spans))
        return text

    scanner = OutputScanner(analyzer, record)
    head = f"{EMAIL} " + "z" * 80
    await scanner.feed(head + f" {EMAIL}")
    released, spans = seen[0]
    assert released == head[: len(head) + 1 + len(EMAIL) - WINDOW]
    assert spans == (Span("EMAIL_ADDRESS", 0, len(EMAIL), spans[0].score),)


async def test_a_scanning_channel_is_made_per_text_channel(vault: Vault, analyzer: Analyzer) -> None:
    made: list[OutputScanner] = []

    def scanner() -> OutputScanner:
        made.append(OutputScanner(analyzer, redact))
        return made[-1]

    editor = StreamEditor(vault, scanner)
    first = chunk(content(f"To {EMAIL}, ", index=0), content("hi", index=1))
    assert await editor.edit(first) is True  # everything is held in the window
    assert [c["delta"]["content"] for c in first["choices"]] == ["", ""]
    end = chunk(content("bye <PERSON_1>", index=0, finish="stop"))
    await editor.edit(end)
    assert end["choices"][0]["delta"]["content"] == f"To [EMAIL_ADDRESS], bye {QUOTED}"
    assert len(made) == 2


async def test_every_choice_and_every_channel_counts_towards_changed(vault: Vault) -> None:
    editor = StreamEditor(vault)
    # A malformed choice before a real one is skipped, not the end of the chunk.
    mixed = chunk("junk", content("<PERSON_1>", index=0), content("plain", index=1))  # type: ignore[arg-type]
    assert await editor.edit(mixed) is True
    assert mixed["choices"][1]["delta"]["content"] == QUOTED
    for unchanged_channel in (tool_delta(0, "{}"), {"function_call": {"arguments": "{}"}}):
        editor = StreamEditor(vault)
        delta = {"content": "<EMAIL_ADDRESS_1>", **unchanged_channel}
        assert await editor.edit(chunk({"index": 0, "delta": delta, "finish_reason": None})) is True


async def test_held_text_is_appended_after_what_the_finish_chunk_itself_released(vault: Vault) -> None:
    editor = StreamEditor(vault)
    end = chunk(
        {
            "index": 0,
            "delta": {"content": "done <PERS", "function_call": {"arguments": '{"a": "<EMAIL'}},
            "finish_reason": "stop",
        }
    )
    await editor.edit(end)
    assert end["choices"][0]["delta"] == {
        "content": "done <PERS",
        "function_call": {"arguments": '{"a": "<EMAIL'},
    }


async def test_a_held_tool_call_without_an_index_is_flushed_as_call_zero(vault: Vault) -> None:
    editor = StreamEditor(vault)
    await editor.edit(
        chunk(
            {
                "index": 0,
                "delta": {"tool_calls": [{"function": {"arguments": '{"x": "<PERSON'}}]},
                "finish_reason": None,
            }
        )
    )
    end = chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
    await editor.edit(end)
    assert end["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": "<PERSON"}}]}


async def test_an_entity_at_the_very_end_of_the_answer_is_scanned(analyzer: Analyzer) -> None:
    scanner = OutputScanner(analyzer, redact)
    assert await scanner.feed(f"write to {EMAIL}") == ""
    assert await scanner.feed("", final=True) == "write to [EMAIL_ADDRESS]"
    long = OutputScanner(analyzer, redact)
    text = "w" * 80 + f" {EMAIL}"
    released = await long.feed(text)
    assert released + await long.feed("", final=True) == "w" * 80 + " [EMAIL_ADDRESS]"
