"""The PII walker's plan: the request schema (``gateway.openai_schema``) as a tree of field kinds.

``PLAN[endpoint]`` maps each field to its kind (``TEXT``, ``JSON_TEXT``, ``URL``...), with ``"[]"``
for list items and ``"{}"`` for map values, so the walker (``gateway.pii.texts``) follows it without
looking at types; ``PSEUDONYMISED`` names the end-user id fields.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, Required, Union, get_args, get_origin

from gateway.openai_schema import PSEUDONYM, ChatRequest, EmbeddingsRequest

Plan = str | dict[str, Any]  # a leaf kind, or {key: Plan} with "[]" for list items and "{}" for map values


def _merge(a: Plan | None, b: Plan | None) -> Plan | None:
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, str) and isinstance(b, str):
        return a
    # A string or a container (content: str | list[part]): the container's plan, the string's kind under "".
    da = a if isinstance(a, dict) else {"": a}
    db = b if isinstance(b, dict) else {"": b}
    return {k: _merge(da.get(k), db.get(k)) for k in {*da, *db}}


def _plan(tp: Any) -> Plan | None:
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *meta = get_args(tp)
        kind = next((m for m in meta if isinstance(m, str)), None)
        return kind if kind is not None else _plan(inner)
    if origin in (Required, NotRequired):
        return _plan(get_args(tp)[0])
    if origin is Union or type(tp).__name__ == "UnionType":
        plan: Plan | None = None
        for arg in get_args(tp):
            plan = _merge(plan, _plan(arg))
        return plan
    if origin is list:
        item = _plan(get_args(tp)[0])
        return {"[]": item} if item is not None else None
    if origin is dict:
        value = _plan(get_args(tp)[1])
        return {"{}": value} if value is not None else None
    if isinstance(tp, type) and hasattr(tp, "__total__"):
        hints = {k: _plan(v) for k, v in _hints(tp).items()}
        return {k: v for k, v in hints.items() if v is not None} or None
    return None


def _hints(tp: type) -> dict[str, Any]:
    from typing import get_type_hints

    return get_type_hints(tp, include_extras=True)


PLAN: dict[str, Plan] = {"chat": _plan(ChatRequest) or {}, "embeddings": _plan(EmbeddingsRequest) or {}}
PSEUDONYMISED = {
    endpoint: tuple(k for k, v in plan.items() if v == PSEUDONYM)
    for endpoint, plan in PLAN.items()
    if isinstance(plan, dict)
}
