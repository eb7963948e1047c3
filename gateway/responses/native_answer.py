"""A native upstream's Responses answer as the chat completion the policies read.

The inverse of ``gateway.responses.answer`` (the bridge's way out) and ``.stream``: a Responses
object becomes a chat completion (``completion``), and a Responses event stream becomes chat
chunks ending in ``[DONE]`` (``Chunks``), usage included. The chain's hooks then run on chat, as
for any upstream (placeholders restored, output scanned, tokens counted), and a ``/v1/responses``
client gets the Responses shape back from the bridge. Only what chat can carry comes through:
message text, refusals, function calls and usage; reasoning items and annotations are dropped.

A failed response (``status: failed``, an ``error`` or ``response.failed`` event), or a stream
that ends before its terminal event, raises ``NativeFailed``.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.sse import DONE, Event, Parser

INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class NativeFailed(Exception):
    """The upstream's response failed or broke off; nothing usable to pass on."""


def chat_usage(usage: Any) -> dict[str, Any] | None:
    """Responses usage (input/output tokens) in the chat names (prompt/completion tokens)."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "prompt_tokens_details": {
            "cached_tokens": int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0)
        },
        "completion_tokens_details": {
            "reasoning_tokens": int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)
        },
    }


def _finish(response: dict[str, Any], calls: bool) -> str:
    reason = (response.get("incomplete_details") or {}).get("reason")
    if response.get("status") == "incomplete" and reason in INCOMPLETE:
        return INCOMPLETE[reason]
    return "tool_calls" if calls else "stop"


def _head(response: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{response.get('id') or ''}",
        "created": int(response.get("created_at") or 0),
        "model": str(response.get("model") or ""),
    }


def completion(raw: bytes) -> bytes:
    """The chat completion for a Responses object's bytes."""
    try:
        response = orjson.loads(raw)
        output = response["output"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        output = None
    if not isinstance(output, list):
        raise NativeFailed("The upstream returned no usable response.")
    if response.get("status") == "failed" or response.get("error"):
        raise NativeFailed("The upstream's response failed.")
    text: list[str] = []
    refusal: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    text.append(str(part.get("text") or ""))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusal.append(str(part.get("refusal") or ""))
        elif item.get("type") == "function_call":
            calls.append(
                _call(item)
                | {"function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}}
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if refusal:
        message["refusal"] = "".join(refusal)
    if calls:
        message["tool_calls"] = calls
    chat = {
        **_head(response),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(response, bool(calls))}],
        "usage": chat_usage(response.get("usage")),
    }
    return orjson.dumps(chat)


def _call(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item.get("call_id") or item.get("id") or "", "type": "function"}


class Chunks:
    """Translates one Responses event stream, fed in any chunking, into chat chunk SSE bytes."""

    def __init__(self) -> None:
        self.parser = Parser()
        self.head: dict[str, Any] = {"id": "chatcmpl-", "created": 0, "model": ""}
        self.calls: dict[int, int] = {}  # output_index -> tool call index
        self.started = False
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(e) for e in self.parser.feed(data))

    def close(self) -> bytes:
        out = b"".join(self._event(e) for e in self.parser.close())
        if not self.ended:
            raise NativeFailed("The upstream stream ended before its response completed.")
        return out

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        if delta is not None and not self.started:
            self.started = True
            delta = {"role": "assistant", **delta}
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        chunk = {**self.head, "object": "chat.completion.chunk", "choices": choices, **extra}
        return Event.of(chunk).encode()

    def _event(self, event: Event) -> bytes:
        data = event.json
        if self.ended or not isinstance(data, dict):
            return b""
        kind = data.get("type")
        if kind in ("error", "response.failed"):
            raise NativeFailed("The upstream's response failed.")
        if kind == "response.created" and isinstance(data.get("response"), dict):
            self.head = _head(data["response"])
        elif kind == "response.output_text.delta":
            return self._chunk({"content": str(data.get("delta") or "")})
        elif kind == "response.refusal.delta":
            return self._chunk({"refusal": str(data.get("delta") or "")})
        elif kind == "response.output_item.added" and (data.get("item") or {}).get("type") == "function_call":
            item = data["item"]
            index = self.calls[data.get("output_index", -1)] = len(self.calls)
            function = {"name": item.get("name", ""), "arguments": item.get("arguments", "")}
            return self._chunk({"tool_calls": [{"index": index, **_call(item), "function": function}]})
        elif kind == "response.function_call_arguments.delta":
            known = self.calls.get(data.get("output_index", -1))
            if known is not None:
                arguments = {"arguments": str(data.get("delta") or "")}
                return self._chunk({"tool_calls": [{"index": known, "function": arguments}]})
        elif kind in ("response.completed", "response.incomplete"):
            self.ended = True
            response: dict[str, Any] = data["response"] if isinstance(data.get("response"), dict) else {}
            finish = self._chunk({}, _finish(response, bool(self.calls)))
            usage = self._chunk(None, usage=chat_usage(response.get("usage")))
            return finish + usage + b"data: " + DONE + b"\n\n"
        return b""
