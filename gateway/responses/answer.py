"""A chat completion as a Responses object (the bridge's way out, non-streamed).

``Shape`` holds what one request's response echoes (its id, creation time, and the request's
settings) and builds the response object, its output items and its usage from the chat answer,
after the policies ran on it (placeholders restored, output scanned).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import UpstreamError

# finish_reason -> why the response is incomplete
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "parallel_tool_calls": True,
    "temperature": 1.0,
    "top_p": 1.0,
    "tool_choice": "auto",
    "tools": [],
    "truncation": "disabled",
    "service_tier": "auto",
    "user": None,
    "safety_identifier": None,
    "prompt_cache_key": None,
}


class Shape:
    """One request's Responses object, built from its chat answer."""

    def __init__(self, body: dict[str, Any], request_id: str) -> None:
        self.id = f"resp_{request_id}"
        self.request_id = request_id
        self.created_at = int(time.time())
        echo = {k: body[k] if body.get(k) is not None else v for k, v in _DEFAULTS.items()}
        echo["tools"] = [{"strict": None, "description": None, **t} for t in echo["tools"]]
        echo["text"] = {"format": {"type": "text"}, **(body.get("text") or {})}
        echo["reasoning"] = {"effort": None, "summary": None, **(body.get("reasoning") or {})}
        echo["metadata"] = body.get("metadata") or {}
        self.echo = echo
        self.model = body["model"]

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        """The Responses object; ``status`` becomes ``incomplete`` when the finish reason says so."""
        reason = INCOMPLETE.get(finish_reason or "") if status == "completed" else None
        if reason is not None:
            status = "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": reason} if reason is not None else None,
            "model": self.model,
            "output": output,
            "previous_response_id": None,
            "store": False,
            **self.echo,
            "usage": responses_usage(usage),
        }

    def call_id(self, index: int) -> str:
        return f"fc_{self.request_id}_{index}"

    def answer(self, raw: bytes) -> bytes:
        """The Responses object for a non-streamed chat completion's bytes."""
        try:
            completion = orjson.loads(raw)
            choice = completion["choices"][0]
            message = choice["message"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise UpstreamError(
                502, "upstream_invalid_response", "The upstream returned no usable answer."
            ) from None
        output: list[dict[str, Any]] = []
        parts = []
        if isinstance(message.get("content"), str) and message["content"]:
            parts.append(output_text(message["content"]))
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            parts.append({"type": "refusal", "refusal": message["refusal"]})
        if parts:
            output.append(self.message_item(parts, "completed"))
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            output.append(
                self.call_item(i, call.get("id") or self.call_id(i), function.get("name", ""), "completed")
                | {"arguments": function.get("arguments") or ""}
            )
        usage = completion.get("usage")
        return orjson.dumps(self.response("completed", output, usage, choice.get("finish_reason")))

    def message_item(self, content: list[dict[str, Any]], status: str, index: int = 0) -> dict[str, Any]:
        """The ``index``-th message item (a stream can have text after a call: a second message)."""
        return {
            "id": f"msg_{self.request_id}_{index}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def call_item(self, index: int, call_id: str, name: str, status: str) -> dict[str, Any]:
        return {
            "id": self.call_id(index),
            "type": "function_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage (prompt/completion tokens) in the Responses names (input/output tokens)."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }
