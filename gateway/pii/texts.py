"""Where text sits in OpenAI requests and responses.

``map_request`` returns a copy of a request with every outgoing text passed through a
function: message content (strings and ``text`` parts), system prompts, tool results,
assistant tool-call and function-call arguments (each JSON string leaf; the whole string when
it is not JSON) and ``/v1/embeddings`` input. Unchanged parts are shared, not copied.
The caller's request is never mutated, so each hop can be transformed from the original.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

TextFn = Callable[[str], str]


class Unscannable(ValueError):
    """The request carries input the gateway cannot read as text (token ids)."""


def map_json_text(raw: str, fn: TextFn, raw_fn: TextFn | None = None) -> str:
    """Apply ``fn`` to every string leaf of a JSON document; if it is not JSON, apply ``raw_fn``
    (default ``fn``) to the whole text."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return (raw_fn or fn)(raw)
    if isinstance(doc, str | dict | list):
        out = _map_leaves(doc, fn)
        if out is not doc:
            return orjson.dumps(out).decode()
    return raw


def _map_leaves(node: Any, fn: TextFn) -> Any:
    if isinstance(node, str):
        return fn(node)
    if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 100_000:
        # A card or phone number sent as a JSON number; redacted, it becomes a string.
        text = str(node)
        out = fn(text)
        return node if out == text else out
    if isinstance(node, dict):
        items = {k: _map_leaves(v, fn) for k, v in node.items()}
        return node if all(items[k] is node[k] for k in node) else items
    if isinstance(node, list):
        seq = [_map_leaves(v, fn) for v in node]
        return node if all(a is b for a, b in zip(seq, node, strict=True)) else seq
    return node


def _map_message(msg: Any, fn: TextFn) -> Any:
    if not isinstance(msg, dict):
        return msg
    out = dict(msg)
    content = msg.get("content")
    if isinstance(content, str):
        out["content"] = fn(content)
    elif isinstance(content, list):
        out["content"] = [
            {**part, "text": fn(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str) else part
            for part in content
        ]
    if isinstance(msg.get("tool_calls"), list):
        out["tool_calls"] = [_map_call(call, fn) for call in msg["tool_calls"]]
    if isinstance(msg.get("function_call"), dict):
        out["function_call"] = _map_function(msg["function_call"], fn)
    return out


def _map_call(call: Any, fn: TextFn) -> Any:
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        return {**call, "function": _map_function(call["function"], fn)}
    return call


def _map_function(function: dict[str, Any], fn: TextFn) -> dict[str, Any]:
    args = function.get("arguments")
    if isinstance(args, str):
        return {**function, "arguments": map_json_text(args, fn)}
    return function


def map_request(request: dict[str, Any], endpoint: str, fn: TextFn) -> dict[str, Any]:
    """A copy of ``request`` with ``fn`` applied to every text that leaves the gateway."""
    if endpoint == "embeddings":
        value = request.get("input")
        if isinstance(value, str):
            return {**request, "input": fn(value)}
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return {**request, "input": [fn(v) for v in value]}
        raise Unscannable("token-id input cannot be scanned")
    messages = request.get("messages")
    if not isinstance(messages, list):
        return request
    return {**request, "messages": [_map_message(m, fn) for m in messages]}


def collect(request: dict[str, Any], endpoint: str) -> list[str]:
    """Every outgoing text of a request, in order (duplicates kept)."""
    found: list[str] = []

    def keep(text: str) -> str:
        found.append(text)
        return text

    map_request(request, endpoint, keep)
    return found


def map_response(response: dict[str, Any], fn: TextFn, json_fn: TextFn) -> dict[str, Any]:
    """Apply ``fn`` to answer texts and ``json_fn`` to tool-call argument texts (in place)."""
    for choice in response.get("choices") or ():
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        if isinstance(msg.get("content"), str):
            msg["content"] = fn(msg["content"])
        for call in msg.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = json_fn(function["arguments"])
        function = msg.get("function_call")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = json_fn(function["arguments"])
    return response
