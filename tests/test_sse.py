"""The SSE parser yields the same events for any chunking."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import Event, Parser

STREAM = (b'data: {"a": 1}\n\n: keep-alive comment\n\nevent: ping\ndata: x\n\n'
          b'data: line1\ndata: line2\n\ndata: [DONE]\n\n')


def parse_all(chunks: list[bytes]) -> list[tuple[bytes, bytes | None]]:
    parser = Parser()
    events = [ev for c in chunks for ev in parser.feed(c)] + parser.close()
    return [(e.data, e.event) for e in events]


def test_events_are_parsed_once_and_reencoded_byte_for_byte() -> None:
    events = Parser().feed(b'data: {"a": 1}\n\n')
    assert events[0].json == {"a": 1}
    assert events[0].encode() == b'data: {"a": 1}\n\n'


def test_multiline_data_and_named_events() -> None:
    assert parse_all([STREAM]) == [(b'{"a": 1}', None), (b"x", b"ping"), (b"line1\nline2", None), (b"[DONE]", None)]


def test_crlf_line_endings() -> None:
    assert parse_all([b"data: a\r\n\r\ndata: b\r\n\r\n"]) == [(b"a", None), (b"b", None)]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_yields_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse_all(chunks) == parse_all([STREAM])


def test_setting_json_reencodes_the_data() -> None:
    ev = Event.of({"x": 1})
    ev.json = {"x": 2}
    assert ev.encode() == b'data: {"x":2}\n\n'
    assert Event(b"[DONE]").is_done and Event(b"[DONE]").json is None
