"""The SSE parser yields the same events for any chunking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import Event, Parser

STREAM = (
    b'data: {"a": 1}\n\n: keep-alive comment\n\nevent: ping\ndata: x\n\n'
    b"data: line1\ndata: line2\n\ndata: [DONE]\n\n"
)


def parse_all(chunks: list[bytes]) -> list[tuple[bytes, bytes | None]]:
    parser = Parser()
    events = [ev for c in chunks for ev in parser.feed(c)] + parser.close()
    return [(e.data, e.event) for e in events]


def test_events_are_parsed_once_and_reencoded_byte_for_byte() -> None:
    events = Parser().feed(b'data: {"a": 1}\n\n')
    assert events[0].json == {"a": 1}
    assert events[0].encode() == b'data: {"a": 1}\n\n'


def test_multiline_data_and_named_events() -> None:
    assert parse_all([STREAM]) == [
        (b'{"a": 1}', None),
        (b"x", b"ping"),
        (b"line1\nline2", None),
        (b"[DONE]", None),
    ]


def test_crlf_line_endings() -> None:
    assert parse_all([b"data: a\r\n\r\ndata: b\r\n\r\n"]) == [(b"a", None), (b"b", None)]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM) * 2), max_size=20))
def test_any_chunking_of_any_line_ending_yields_the_same_events(newline: bytes, cuts: list[int]) -> None:
    stream = STREAM.replace(b"\n", newline)
    bounds = [0, *sorted(min(c, len(stream)) for c in cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse_all(chunks) == parse_all([STREAM])


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["CRLF", "CR"])
def test_a_split_at_every_byte_yields_the_same_events(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    expected = parse_all([STREAM])
    for cut in range(len(stream) + 1):
        assert parse_all([stream[:cut], stream[cut:]]) == expected, cut
    assert parse_all([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = Parser()
    assert parser.feed(b"event: x\r") == []
    assert parser.feed(b"") == []
    [event] = parser.feed(b"\ndata: 1\r\n\r\n")
    assert (event.event, event.data) == (b"x", b"1")


def test_setting_json_reencodes_the_data() -> None:
    ev = Event.of({"x": 1})
    ev.json = {"x": 2}
    assert ev.encode() == b'data: {"x":2}\n\n'
    assert Event(b"[DONE]").is_done
    assert Event(b"[DONE]").json is None
