"""Where text sits in OpenAI requests and responses.

``map_request`` returns a copy of a request with every outgoing text passed through a
function: every field ``gateway.openai_schema`` marks as text (message content in every
shape, names, refusals, tool and function definitions and call arguments, stop sequences,
metadata values, predictions, response-format schemas, embeddings input) and any top-level
field it does not know. Unchanged parts are shared, not copied. The caller's request is never
mutated, so each hop can be transformed from the original.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from gateway.openai_plan import PLAN, Plan
from gateway.openai_schema import FREE_JSON, JSON_TEXT, TEXT, TOP_LEVEL, URL

TextFn = Callable[[str], str]
_URL_PARTS = re.compile(r"([?&=#]|/(?!/))")


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


def _walk(node: Any, plan: Plan | None, fn: TextFn) -> Any:
    """``node`` with ``fn`` applied to every string the plan marks as text; unchanged parts are shared."""
    if plan is None:
        return node
    if isinstance(node, str):
        kind = plan if isinstance(plan, str) else plan.get("")
        if kind in (TEXT, FREE_JSON):
            return fn(node)
        if kind == JSON_TEXT:
            return map_json_text(node, fn)
        if kind == URL:
            # base64 media stays; a URL is scanned piece by piece (an e-mail in a query is not a URL's whole).
            if node.startswith("data:"):
                return node
            scanned = "".join(part if i % 2 else fn(part) for i, part in enumerate(_URL_PARTS.split(node)))
            return node if scanned == node else scanned  # unchanged: share it, like every other part
        return node  # an identifier, enum, pseudonym or base64 media: validated as not free text
    if plan == FREE_JSON:
        return _map_leaves(node, fn)
    if not isinstance(plan, dict):
        return node
    if isinstance(node, dict):
        each = plan.get("{}")
        out = {k: _walk(v, plan.get(k, each), fn) for k, v in node.items()}
        return node if all(out[k] is node[k] for k in node) else out
    if isinstance(node, list):
        item = plan.get("[]")
        seq = [_walk(v, item, fn) for v in node]
        return node if all(a is b for a, b in zip(seq, node, strict=True)) else seq
    return node


def map_request(request: dict[str, Any], endpoint: str, fn: TextFn) -> dict[str, Any]:
    """A copy of ``request`` with ``fn`` applied to every text that leaves the gateway.

    Which fields are text is declared once, in ``gateway.openai_schema``; a top-level field the
    schema does not know (a provider extension, or ``server.unknown_fields: scan``) is scanned
    whole."""
    plan = PLAN[endpoint]
    assert isinstance(plan, dict)
    if endpoint == "embeddings":
        value = request.get("input")
        if not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise Unscannable("token-id input cannot be scanned")
    known = TOP_LEVEL[endpoint]
    out = {k: _walk(v, plan.get(k) if k in known else FREE_JSON, fn) for k, v in request.items()}
    return request if all(out[k] is request[k] for k in request) else out


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
        for key in ("content", "refusal"):
            if isinstance(msg.get(key), str):
                msg[key] = fn(msg[key])
        for call in msg.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = json_fn(function["arguments"])
        function = msg.get("function_call")
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = json_fn(function["arguments"])
    return response
