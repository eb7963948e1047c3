"""Server-sent events: one incremental parser, one serializer.

Each upstream chunk is split into events once. An event keeps its raw ``data`` bytes and
decodes JSON only when a policy asks for it; an event nobody changed is written back with its
original bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

DONE = b"[DONE]"
_UNSET: Any = object()


class Event:
    __slots__ = ("_json", "data", "event", "id")

    def __init__(self, data: bytes, event: bytes | None = None, id: bytes | None = None) -> None:
        self.data = data
        self.event = event
        self.id = id
        self._json: Any = _UNSET

    @property
    def is_done(self) -> bool:
        return self.data == DONE

    @property
    def json(self) -> Any:
        """The decoded data (None for ``[DONE]`` or non-JSON data); decoded at most once."""
        if self._json is _UNSET:
            try:
                self._json = None if self.is_done else orjson.loads(self.data)
            except orjson.JSONDecodeError:
                self._json = None
        return self._json

    @json.setter
    def json(self, value: Any) -> None:
        self._json = value
        self.data = orjson.dumps(value)

    def encode(self) -> bytes:
        out = b""
        if self.event is not None:
            out += b"event: " + self.event + b"\n"
        if self.id is not None:
            out += b"id: " + self.id + b"\n"
        return out + b"data: " + self.data + b"\n\n"

    @classmethod
    def of(cls, obj: Any) -> Event:
        ev = cls(orjson.dumps(obj))
        ev._json = obj
        return ev


class Parser:
    """Feed bytes in any chunking; get complete events out.

    Lines end in LF, CRLF or CR. A chunk that ends in CR may be the first half of a CRLF: the CR
    counts as the line end, and an LF at the start of the next chunk is then dropped.
    """

    def __init__(self) -> None:
        self._buf = b""  # line ends already normalised to LF
        self._cr = False  # the last byte fed was a CR

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk
        events = []
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            block, buf = buf[:end], buf[end + 2 :]
            ev = _parse_block(block)
            if ev is not None:
                events.append(ev)
        self._buf = buf
        return events

    def close(self) -> list[Event]:
        """Flush a final event that lacked its blank line."""
        rest, self._buf, self._cr = self._buf, b"", False
        ev = _parse_block(rest.strip(b"\n")) if rest.strip() else None
        return [ev] if ev is not None else []


def _parse_block(block: bytes) -> Event | None:
    data: list[bytes] = []
    event = id_ = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            event = value
        elif field == b"id":
            id_ = value
    if not data and event is None:
        return None
    return Event(b"\n".join(data), event, id_)


async def parse(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    parser = Parser()
    async for chunk in chunks:
        for ev in parser.feed(chunk):
            yield ev
    for ev in parser.close():
        yield ev
