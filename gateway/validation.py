"""Shape checks for OpenAI request bodies: only fields the API defines, each by type and range.

The schema lives in ``gateway.openai_schema``. Nesting deeper than 32 levels is refused before
anything walks the body. Unknown top-level fields follow ``server.unknown_fields``; provider
extensions a deployment lists in ``extra_fields`` are accepted (and scanned like text).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from pydantic import ValidationError

from gateway.errors import GatewayError, bad_request
from gateway.openai_schema import CHAT, EMBEDDINGS, MAX_DEPTH, TOP_LEVEL, depth, problem

GATEWAY_FIELDS = frozenset({"gateway_rag"})  # our own request extensions, removed before forwarding
Validator = Callable[[dict[str, Any]], None]


def validator(
    endpoint: str, *, unknown_fields: str = "reject", max_n: int = 8, extensions: Collection[str] = ()
) -> Validator:
    """A function that checks (and, for ``drop``, trims) one request body in place; raises a 400."""
    adapter = CHAT if endpoint == "chat" else EMBEDDINGS
    known = TOP_LEVEL[endpoint] | GATEWAY_FIELDS | frozenset(extensions)
    core = TOP_LEVEL[endpoint]

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
