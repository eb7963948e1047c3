"""A chat completion stream as the Responses event sequence (the bridge's way out, streamed).

The chat chunks come after the policies' stream hooks (placeholders restored, output scanned),
so every delta here is what the client may see. The sequence is OpenAI's:

    response.created, response.in_progress
    per output item: response.output_item.added
        message:        response.content_part.added, response.output_text.delta...,
                        response.output_text.done, response.content_part.done
        function call:  response.function_call_arguments.delta..., response.function_call_arguments.done
    response.output_item.done
    response.completed (or response.incomplete) with the whole response and its usage

Every event carries its ``type`` (also as the SSE event name) and a ``sequence_number``. The
terminal event is the last one: no ``[DONE]`` follows, as with OpenAI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.responses.answer import Shape, output_text
from gateway.sse import Event

TERMINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})


class _Item:
    """An output item being streamed: a message's text, or one function call's arguments."""

    __slots__ = ("body", "index", "text")

    def __init__(self, index: int, body: dict[str, Any]) -> None:
        self.index = index
        self.body = body
        self.text: list[str] = []


class Events:
    """Translates one request's chat chunks into Responses events."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.message: _Item | None = None
        self.calls: dict[int, _Item] = {}
        self.open_call: _Item | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def event(self, kind: str, **fields: Any) -> Event:
        ev = Event.of({"type": kind, "sequence_number": self.seq, **fields})
        ev.event = kind.encode()
        self.seq += 1
        return ev

    def error(self, exc: GatewayError) -> bytes:
        """A failure after the stream started, as the Responses ``error`` event; it also carries the error
        object chat streams end with, which makes the OpenAI SDKs raise instead of ending quietly."""
        error = orjson.loads(exc.body())["error"]
        return self.event("error", code=exc.code, message=exc.message, param=exc.param, error=error).encode()

    async def translate(self, chunks: AsyncIterator[Event]) -> AsyncIterator[list[Event]]:
        """The Responses events, a batch per chat chunk that produced any (one write each)."""
        shape = self.shape
        started = shape.response("in_progress", [], None)
        batch = [
            self.event("response.created", response=started),
            self.event("response.in_progress", response=started),
        ]
        async for chunk in chunks:
            data = chunk.json  # None for [DONE]: the chain's hooks run to the stream's end
            if not isinstance(data, dict):
                continue
            if isinstance(data.get("usage"), dict):
                self.usage = data["usage"]
            for choice in data.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                batch += self._delta(choice.get("delta") or {})
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
            if batch:
                yield batch
                batch = []
        batch += self._close_all()
        final = shape.response("completed", self.output, self.usage, self.finish_reason)
        yield [*batch, self.event(f"response.{final['status']}", response=final)]

    def _delta(self, delta: dict[str, Any]) -> list[Event]:
        out: list[Event] = []
        text = "".join(t for t in (delta.get("content"), delta.get("refusal")) if isinstance(t, str))
        if text:
            if self.message is None:
                out += self._close_call()
                messages = sum(1 for item in self.output if item["type"] == "message")
                self.message = self._open(self.shape.message_item([], "in_progress", messages))
                out.append(
                    self.event(
                        "response.output_item.added",
                        output_index=self.message.index,
                        item=dict(self.message.body),
                    )
                )
                out.append(self._part("response.content_part.added", output_text("")))
            self.message.text.append(text)
            out.append(self._text_event("response.output_text.delta", delta=text, logprobs=[]))
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            k = call.get("index", 0)
            function = call.get("function") or {}
            item = self.calls.get(k)
            if item is None:
                out += self._close_message() + self._close_call()
                call_id = call.get("id") or self.shape.call_id(k)
                body = self.shape.call_item(
                    len(self.calls), call_id, function.get("name") or "", "in_progress"
                )
                item = self.calls[k] = self.open_call = self._open(body)
                out.append(self.event("response.output_item.added", output_index=item.index, item=dict(body)))
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                item.text.append(arguments)
                out.append(
                    self.event(
                        "response.function_call_arguments.delta",
                        item_id=item.body["id"],
                        output_index=item.index,
                        delta=arguments,
                    )
                )
        return out

    def _open(self, body: dict[str, Any]) -> _Item:
        item = _Item(len(self.output), body)
        self.output.append(body)
        return item

    def _part(self, kind: str, part: dict[str, Any]) -> Event:
        assert self.message is not None
        return self.event(
            kind, item_id=self.message.body["id"], output_index=self.message.index, content_index=0, part=part
        )

    def _text_event(self, kind: str, **fields: Any) -> Event:
        assert self.message is not None
        return self.event(
            kind, item_id=self.message.body["id"], output_index=self.message.index, content_index=0, **fields
        )

    def _close_message(self) -> list[Event]:
        item = self.message
        if item is None:
            return []
        text = "".join(item.text)
        part = output_text(text)
        item.body.update(status="completed", content=[part])
        out = [
            self._text_event("response.output_text.done", text=text, logprobs=[]),
            self._part("response.content_part.done", part),
            self.event("response.output_item.done", output_index=item.index, item=item.body),
        ]
        self.message = None
        return out

    def _close_call(self) -> list[Event]:
        item = self.open_call
        if item is None:
            return []
        arguments = "".join(item.text)
        item.body.update(status="completed", arguments=arguments)
        self.open_call = None
        return [
            self.event(
                "response.function_call_arguments.done",
                item_id=item.body["id"],
                output_index=item.index,
                name=item.body["name"],
                arguments=arguments,
            ),
            self.event("response.output_item.done", output_index=item.index, item=item.body),
        ]

    def _close_all(self) -> list[Event]:
        return self._close_message() + self._close_call()
