"""Shape checks for OpenAI request bodies: only fields the API defines, each by type and range.

The schema lives in ``gateway.openai_schema``. Nesting deeper than 32 levels is refused before
anything walks the body. Unknown top-level fields follow ``server.unknown_fields``; provider
extensions a deployment lists in ``extra_fields`` are accepted (and scanned like text).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gateway.errors import GatewayError, bad_request
from gateway.openai_schema import CHAT, EMBEDDINGS, MAX_DEPTH, TOP_LEVEL
from gateway.responses_schema import RESPONSES, TOP_LEVEL_RESPONSES

GATEWAY_FIELDS = frozenset({"gateway_rag"})  # our own request extensions, removed before forwarding
Validator = Callable[[dict[str, Any]], None]


def validator(
    endpoint: str, *, unknown_fields: str = "reject", max_n: int = 8, extensions: Collection[str] = ()
) -> Validator:
    """A function that checks (and, for ``drop``, trims) one request body in place; raises a 400."""
    adapters: dict[str, TypeAdapter[Any]] = {"chat": CHAT, "embeddings": EMBEDDINGS, "responses": RESPONSES}
    adapter = adapters[endpoint]
    core = TOP_LEVEL_RESPONSES if endpoint == "responses" else TOP_LEVEL[endpoint]
    known = core | GATEWAY_FIELDS | frozenset(extensions)

    def validate(body: dict[str, Any]) -> None:
        if depth(body) > MAX_DEPTH:
            raise GatewayError(
                400, "invalid_request.too_deep", f"The request nests deeper than {MAX_DEPTH} levels."
            )
        unknown = [k for k in body if k not in known]
        if unknown and unknown_fields == "reject":
            raise GatewayError(
                400,
                "invalid_request.unknown_field",
                f"Unknown field '{unknown[0][:64]}'.",
                param=unknown[0][:64],
            )
        if unknown and unknown_fields == "drop":
            for k in unknown:
                del body[k]
        checked = body if all(k in core for k in body) else {k: v for k, v in body.items() if k in core}
        try:
            adapter.validate_python(checked)
        except ValidationError as exc:
            param, code, message = problem(exc, checked)
            raise GatewayError(400, code, message, param=param or None) from None
        n = body.get("n")
        if isinstance(n, int) and n > max_n:
            raise bad_request(f"'n' may be at most {max_n}.", param="n", code="invalid_request.invalid_value")
        if body.get("stream_options") is not None and not body.get("stream"):
            raise bad_request(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )

    return validate


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value, counted without recursion; stops counting past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def problem(exc: ValidationError, body: Any) -> tuple[str, str, str]:
    """(param, code, message) for the first error, in OpenAI's style; never echoes the bad value."""
    err = exc.errors(include_url=False, include_input=False)[0]
    # pydantic's location also names union members and tags; keep only the steps that exist in the body.
    loc: list[str | int] = []
    node = body
    for i, step in enumerate(err["loc"]):
        in_dict = isinstance(node, dict) and step in node
        in_list = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if in_dict or in_list:
            node = node[step]
        elif not (i == len(err["loc"]) - 1 and err["type"] == "missing"):
            continue
        loc.append(step)
    param = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    if err["type"] == "extra_forbidden":
        return param, "invalid_request.unknown_field", f"Unknown field '{param}'."
    if err["type"] == "missing":
        return param, "invalid_request.missing_field", f"'{param}' is required."
    message = re.sub(r"\s+", " ", str(err["msg"]))[:200]
    return param, "invalid_request.invalid_value", f"Invalid value for '{param or 'body'}': {message}."
