"""A chat completion as the Responses request a native upstream gets (``supports: [responses]``).

The policies always see a request in one shape, the chat completion: a ``/v1/responses`` request
is bridged to it first (``gateway.responses.request``), and so every policy, the PII walker
included, applies unchanged. A deployment that serves the Responses API itself gets that chat
body, as the policies left it for its hop (redacted for its jurisdiction, RAG context added),
written back as a Responses request here. ``to_chat(to_responses(chat))`` is ``chat`` for every
body the bridge makes (tests/test_responses_native.py).

A chat field the Responses API cannot carry (``n`` > 1, ``stop``, ``logit_bias``, audio...)
raises ``Untranslatable`` naming it: that hop cannot serve the request, another may. ``store``
is always sent as false: a native upstream keeps nothing either.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

_SAME = (
    *("model", "temperature", "top_p", "parallel_tool_calls", "service_tier", "metadata"),
    *("user", "safety_identifier", "prompt_cache_key"),  # already pseudonymised by the route
)
_DROPPED = {"stream_options", "store"}  # Responses streams always end with usage; store is ours to set
_NEUTRAL = {"n": 1, "logprobs": False}  # chat fields that may be sent with the value meaning "none"


class Untranslatable(ValueError):
    """A chat field or value the Responses API has no place for; ``field`` names it (``messages[2].name``)."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def to_responses(chat: dict[str, Any], extensions: Collection[str] = ()) -> dict[str, Any]:
    """The Responses request for a chat body (a new dict); ``extensions`` (the deployment's
    ``extra_fields``) pass as they are."""
    body: dict[str, Any] = {"input": [], "store": False}
    for field, value in chat.items():
        if value is None or field in _DROPPED or _NEUTRAL.get(field, ...) == value:
            continue
        if field in _SAME or field in extensions:
            body[field] = value
        elif field == "messages":
            for i, message in enumerate(value):
                body["input"] += _items(message, f"messages[{i}]")
        elif field in ("max_tokens", "max_completion_tokens"):
            body["max_output_tokens"] = value
        elif field == "stream":
            body["stream"] = bool(value)
        elif field == "tools":
            body["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(value)]
        elif field == "tool_choice":
            body["tool_choice"] = (
                {"type": "function", "name": value["function"]["name"]} if isinstance(value, dict) else value
            )
        elif field == "response_format":
            body.setdefault("text", {})["format"] = _format(value)
        elif field == "verbosity":
            body.setdefault("text", {})["verbosity"] = value
        elif field == "reasoning_effort":
            body["reasoning"] = {"effort": value}
        else:
            raise Untranslatable(field)
    return body


def _items(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """One chat message as Responses input items (an assistant turn with calls gives several)."""
    role = message["role"]
    for key, value in message.items():
        if value is not None and key not in _MESSAGE_KEYS.get(role, ()):  # None: as good as absent
            raise Untranslatable(f"{where}.{key}" if role in _MESSAGE_KEYS else f"{where}.role")
    if role == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": message["tool_call_id"],
                "output": _output(message["content"], f"{where}.content"),
            }
        ]
    if role == "assistant":
        items: list[dict[str, Any]] = []
        text, refusal = _assistant(message, f"{where}.content")
        if refusal is not None:
            parts = [{"type": "output_text", "text": text}] if text else []
            items.append({"role": "assistant", "content": [*parts, {"type": "refusal", "refusal": refusal}]})
        elif text is not None or not message.get("tool_calls"):
            items.append({"role": "assistant", "content": text or ""})
        for j, call in enumerate(message.get("tool_calls") or ()):
            if call.get("type", "function") != "function":
                raise Untranslatable(f"{where}.tool_calls[{j}].type")
            function = call["function"]
            items.append(
                {
                    "type": "function_call",
                    "call_id": call["id"],
                    "name": function["name"],
                    "arguments": function["arguments"],
                }
            )
        return items
    content = message["content"]
    if not isinstance(content, str):
        content = [_part(p, f"{where}.content[{j}]", role) for j, p in enumerate(content)]
    return [{"role": role, "content": content}]


_MESSAGE_KEYS = {
    "system": ("role", "content"),
    "developer": ("role", "content"),
    "user": ("role", "content"),
    "assistant": ("role", "content", "refusal", "tool_calls"),
    "tool": ("role", "content", "tool_call_id"),
}


def _assistant(message: dict[str, Any], where: str) -> tuple[str | None, str | None]:
    """An assistant turn's text and refusal: its content (a string, or text and refusal parts) and ``refusal``."""
    content, refusal = message.get("content"), message.get("refusal")
    if not isinstance(content, list):
        return content, refusal
    text: list[str] = []
    refusals: list[str] = []
    for j, part in enumerate(content):
        if part.get("type") not in ("text", "refusal"):
            raise Untranslatable(f"{where}[{j}].type")
        (text if part["type"] == "text" else refusals).append(part[part["type"]])
    if refusals or refusal is not None:
        refusal = "".join([*refusals, refusal or ""])
    return "".join(text), refusal


def _output(content: Any, where: str) -> Any:
    """A tool result: a string, or its text parts as ``input_text`` parts."""
    if not isinstance(content, list):
        return content
    for j, part in enumerate(content):
        if part.get("type") != "text":
            raise Untranslatable(f"{where}[{j}].type")
    return [{"type": "input_text", "text": p["text"]} for p in content]


def _part(part: dict[str, Any], where: str, role: str) -> dict[str, Any]:
    if part["type"] == "text":
        return {"type": "input_text", "text": part["text"]}
    if part["type"] == "image_url" and role == "user":
        image = part["image_url"]
        return {
            "type": "input_image",
            "image_url": image["url"],
            **({"detail": image["detail"]} if "detail" in image else {}),
        }
    raise Untranslatable(f"{where}.type")


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Untranslatable(f"{where}.type")
    function = tool["function"]
    # The Responses API makes function tools strict unless told (chat's default is not strict), and it
    # requires `parameters`, which chat may leave out.
    out = {
        "type": "function",
        "name": function["name"],
        "strict": bool(function.get("strict")),
        "parameters": function.get("parameters"),
    }
    if function.get("description") is not None:
        out["description"] = function["description"]
    return out


def _format(fmt: dict[str, Any]) -> dict[str, Any]:
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    schema = fmt["json_schema"]
    out = {"type": "json_schema", "name": schema["name"], "strict": bool(schema.get("strict"))}
    out.update({k: schema[k] for k in ("schema", "description") if schema.get(k) is not None})
    return out
