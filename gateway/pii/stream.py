"""Streamed answers: placeholder restore and optional output scanning, chunk by chunk.

``StreamEditor`` keeps one pipeline per text channel of a chat completion stream (each
choice's content, each tool call's arguments). A channel emits at once everything except a
bounded tail: the output scanner holds back ``WINDOW`` characters so an entity split across
chunks is seen whole, the restorer holds back a possible placeholder prefix (at most
``MAX_HOLD``). Held text goes out with the choice's ``finish_reason`` chunk, or in a final
chunk before ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.pii.analyzer import Analyzer, Span
from gateway.pii.placeholders import StreamRestorer, Vault, json_escape

WINDOW = 64
Scan = Callable[[str, tuple[Span, ...]], str]


class OutputScanner:
    """Detects PII in model output across chunk boundaries; ``apply`` acts on what it finds."""

    def __init__(self, analyzer: Analyzer, apply: Scan) -> None:
        self._analyzer = analyzer
        self._apply = apply
        self._held = ""

    async def feed(self, text: str, final: bool = False) -> str:
        buf = self._held + text
        if not buf or (len(buf) <= WINDOW and not final):
            self._held = buf
            return ""
        spans = (await self._analyzer.analyze([buf], cache=False))[buf]
        cut = len(buf) if final else len(buf) - WINDOW
        for span in spans:
            if span.start < cut < span.end:  # never cut through an entity
                cut = span.start
        self._held = buf[cut:]
        return self._apply(buf[:cut], tuple(s for s in spans if s.end <= cut))


class Channel:
    def __init__(self, vault: Vault, scanner: OutputScanner | None, json: bool) -> None:
        self.restorer = StreamRestorer(vault, json_escape if json else None)
        self.scanner = scanner

    async def feed(self, text: str) -> str:
        if self.scanner is not None:
            text = await self.scanner.feed(text)
        return self.restorer.feed(text)

    async def flush(self) -> str:
        text = await self.scanner.feed("", final=True) if self.scanner is not None else ""
        return self.restorer.feed(text) + self.restorer.flush()


class StreamEditor:
    """Edits parsed ``chat.completion.chunk`` objects in place; returns whether one changed."""

    def __init__(self, vault: Vault, scanner: Callable[[], OutputScanner] | None = None) -> None:
        self._vault = vault
        self._scanner = scanner
        self._channels: dict[tuple[int, str, int], Channel] = {}
        self.last: dict[str, Any] = {}

    def _channel(self, key: tuple[int, str, int]) -> Channel:
        ch = self._channels.get(key)
        if ch is None:
            scanner = self._scanner() if self._scanner is not None else None
            ch = self._channels[key] = Channel(self._vault, scanner, json=key[1] in ("tool", "function"))
        return ch

    async def edit(self, chunk: dict[str, Any]) -> bool:
        self.last = chunk
        changed = False
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                changed |= await self._edit_delta(index, delta)
            if choice.get("finish_reason") is not None:
                delta = choice.setdefault("delta", {})
                changed |= await self._flush_into(index, delta)
        return changed

    async def _edit_delta(self, index: int, delta: dict[str, Any]) -> bool:
        changed = False
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str):
                new = await self._channel((index, key, 0)).feed(delta[key])
                changed, delta[key] = changed or new != delta[key], new
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                new = await self._channel((index, "tool", call.get("index", 0))).feed(function["arguments"])
                changed |= new != function["arguments"]
                function["arguments"] = new
        legacy = delta.get("function_call")  # the deprecated single function call
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            new = await self._channel((index, "function", 0)).feed(legacy["arguments"])
            changed |= new != legacy["arguments"]
            legacy["arguments"] = new
        return changed

    async def _flush_into(self, index: int, delta: dict[str, Any]) -> bool:
        changed = False
        for key, ch in list(self._channels.items()):
            if key[0] != index:
                continue
            rest = await ch.flush()
            del self._channels[key]
            if not rest:
                continue
            changed = True
            if key[1] in ("content", "refusal"):
                delta[key[1]] = (delta.get(key[1]) or "") + rest
            elif key[1] == "function":
                legacy = delta.setdefault("function_call", {})
                legacy["arguments"] = (legacy.get("arguments") or "") + rest
            else:
                delta.setdefault("tool_calls", []).append({"index": key[2], "function": {"arguments": rest}})
        return changed

    async def tail(self) -> dict[str, Any] | None:
        """A last chunk carrying whatever is still held (a stream that ended without finish_reason)."""
        choices = []
        for index in sorted({key[0] for key in self._channels}):
            delta: dict[str, Any] = {}
            if await self._flush_into(index, delta):
                choices.append({"index": index, "delta": delta, "finish_reason": None})
        if not choices:
            return None
        base: dict[str, Any] = {
            k: self.last[k] for k in ("id", "object", "created", "model") if k in self.last
        }
        return {**base, "choices": choices}
