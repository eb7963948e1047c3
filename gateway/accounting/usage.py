"""Usage as the upstream reported it, found cheaply in a response body.

The gateway relays non-streamed bodies untouched. Parsing a whole body just to read its
``usage`` would cost a full JSON decode per request, so ``from_body`` looks for the last
``"usage"`` key (OpenAI puts it last; inside a JSON string the quotes would be escaped, so
an unescaped match is a key) and decodes only that object. Only a body without usage is
decoded in full, to collect the completion text for an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.accounting.limits import Check
    from gateway.sse import Event
    from gateway.store.counters import Counters, Limit
    from gateway.tokens import Tokenizer

_KEY = b'"usage"'


def from_body(raw: bytes) -> dict[str, Any]:
    """The body's ``usage`` object; without one, ``{"estimated": True, "completion_text": ...}``."""
    usage = find_usage(raw)
    if usage is not None:
        return usage
    return {"estimated": True, "completion_text": completion_text(raw)}


def find_usage(raw: bytes) -> dict[str, Any] | None:
    at = raw.rfind(_KEY)
    if at < 0:
        return None
    start = raw.find(b"{", at + len(_KEY))
    if start < 0 or raw[at + len(_KEY) : start].strip(b" \t\r\n:") != b"":
        return None  # "usage": null, or not followed by an object
    depth, pos = 1, start + 1
    while depth:
        close = raw.find(b"}", pos)
        if close < 0:
            return None
        depth += raw.count(b"{", pos, close) - 1
        pos = close + 1
    try:
        usage = orjson.loads(raw[start:pos])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None


def completion_text(raw: bytes) -> str:
    """All generated text (message contents and tool-call arguments) of a chat response body."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    parts: list[str] = []
    for choice in body.get("choices") or () if isinstance(body, dict) else ():
        message = choice.get("message") or choice.get("delta") or {} if isinstance(choice, dict) else {}
        parts.extend(_texts(message))
    return "".join(parts)


def _texts(message: Any) -> list[str]:
    if not isinstance(message, dict):
        return []
    out = [message["content"]] if isinstance(message.get("content"), str) else []
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out += [str(fn.get("name") or ""), str(fn.get("arguments") or "")]
    return out


def delta_texts(chunk: Any) -> list[str]:
    """Generated text in one streamed ``chat.completion.chunk``."""
    out: list[str] = []
    if isinstance(chunk, dict):
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                out += _texts(choice.get("delta"))
    return out


def tokens_of(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens from an OpenAI-format usage object."""
    prompt = _int(usage.get("prompt_tokens") or usage.get("input_tokens"))
    completion = _int(usage.get("completion_tokens") or usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return prompt, completion, cached


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def usage_chunk(last: dict[str, Any], counted: dict[str, Any]) -> dict[str, Any]:
    """The final usage chunk OpenAI sends (empty ``choices``), carrying the gateway's estimate ``counted``;
    ``last`` is the stream's last chunk (for its id, time and model)."""
    return {
        "id": last.get("id", ""),
        "object": "chat.completion.chunk",
        "created": last.get("created", 0),
        "model": last.get("model", ""),
        "choices": [],
        "usage": {k: counted[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        "x-gateway-usage": "estimated",
    }


@dataclass
class Pending:
    """One request's accounting between its reservation and its settlement."""

    prompt_tokens: int = 0
    tokenizer: Tokenizer | None = None
    strip_usage: bool = False  # the gateway asked a stream for usage the client did not ask for
    checks: tuple[Check, ...] = ()
    limits: list[Limit] = field(default_factory=list)  # what was reserved, one per check
    store: Counters | None = None
    chunks: list[Event] = field(default_factory=list)  # a stream's chunks, kept while it reports no usage

    def estimate(self, u: dict[str, Any]) -> tuple[int, int]:
        """(prompt, completion) tokens counted by the gateway, for answers that carry no usage."""
        text = u.get("completion_text") or "".join(t for ev in self.chunks for t in delta_texts(ev.json))
        return self.prompt_tokens, self.tokenizer.count(text) if self.tokenizer else len(text) // 4
