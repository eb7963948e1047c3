"""Structured answers: what the development upstream replies when a request asks for a JSON schema
(``response_format: json_schema``), so LangChain's ``with_structured_output`` and the Responses API's
``text.format`` get a parseable answer."""

from __future__ import annotations

from typing import Any


def json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else {"type": "object"}
    return None


def instance(schema: dict[str, Any], text: str, depth: int = 0) -> Any:
    """A value of ``schema`` (object, array, string, number, boolean, enum) whose strings are ``text``, so a
    structured answer echoes the prompt for the gateway to restore."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    variants = schema.get("anyOf") or schema.get("oneOf")
    if kind is None and isinstance(variants, list) and variants:
        return instance(variants[0], text, depth + 1)
    if kind == "object" and depth < 8:
        props = schema.get("properties") or {}
        return {k: instance(v, text, depth + 1) for k, v in props.items() if isinstance(v, dict)}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text
