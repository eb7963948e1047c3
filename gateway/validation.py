"""Shape checks for OpenAI request bodies.

Only the types of parameters the gateway knows are checked; unknown fields pass through to
the upstream untouched, as OpenAI-compatible servers add their own.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import bad_request

_NUM = (int, float)
_NONE = type(None)

CHAT: dict[str, tuple[type, ...]] = {
    "messages": (list,),
    "stream": (bool, _NONE),
    "n": (int, _NONE),
    "max_tokens": (int, _NONE),
    "max_completion_tokens": (int, _NONE),
    "temperature": (*_NUM, _NONE),
    "top_p": (*_NUM, _NONE),
    "presence_penalty": (*_NUM, _NONE),
    "frequency_penalty": (*_NUM, _NONE),
    "seed": (int, _NONE),
    "stop": (str, list, _NONE),
    "tools": (list, _NONE),
    "tool_choice": (str, dict, _NONE),
    "parallel_tool_calls": (bool, _NONE),
    "response_format": (dict, _NONE),
    "logprobs": (bool, _NONE),
    "top_logprobs": (int, _NONE),
    "logit_bias": (dict, _NONE),
    "user": (str, _NONE),
    "stream_options": (dict, _NONE),
    "metadata": (dict, _NONE),
}

EMBEDDINGS: dict[str, tuple[type, ...]] = {
    "input": (str, list),
    "encoding_format": (str, _NONE),
    "dimensions": (int, _NONE),
    "user": (str, _NONE),
}

_NAMES = {int: "integer", float: "number", bool: "boolean", str: "string", list: "array", dict: "object",
          _NONE: "null"}


def _check_types(body: dict[str, Any], table: dict[str, tuple[type, ...]]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a string.", param="model")
    for key, types in table.items():
        if key not in body:
            continue
        value = body[key]
        # bool is an int in Python; JSON true is not a valid integer parameter.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            expected = " or ".join(dict.fromkeys(_NAMES[t] for t in types))
            raise bad_request(f"Invalid type for '{key}': expected {expected}.", param=key,
                              code="invalid_type")


def validate_chat(body: dict[str, Any]) -> None:
    """Raise a 400 GatewayError when a known chat parameter has the wrong type."""
    _check_types(body, CHAT)
    messages = body.get("messages")
    if not messages:
        raise bad_request("'messages' is required and must be a non-empty array.", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string 'role'.", param=f"messages[{i}]",
                              code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not body.get("stream"):
        raise bad_request("'stream_options' is only allowed when 'stream' is true.", param="stream_options")


def validate_embeddings(body: dict[str, Any]) -> None:
    """Raise a 400 GatewayError when the embeddings body is malformed."""
    _check_types(body, EMBEDDINGS)
    if "input" not in body:
        raise bad_request("'input' is required.", param="input")
    value = body["input"]
    if isinstance(value, list) and not value:
        raise bad_request("'input' must not be empty.", param="input")
