"""A Responses request as the chat completion the pipeline runs (the bridge's way in).

``refuse(body)`` names the first field the gateway does not serve (state at the provider, a
provider's own tools), before the allow-list (``gateway.responses_schema``) checks the rest.
``to_chat(body)`` builds the chat body from a validated request: every text it forwards lands in
a chat field, where the policies (PII redaction, RAG, accounting) see it as they see any chat.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError

# Fields of the API that need state at the provider, or features no chat upstream has.
_STATEFUL = {
    "previous_response_id": "a response stored at the provider",
    "conversation": "a conversation stored at the provider",
    "prompt": "a prompt template stored at the provider",
}
_UNSERVED = {
    "background": "Background responses are not available: the gateway keeps no responses to poll.",
    "max_tool_calls": "'max_tool_calls' applies to built-in tools, which the gateway does not offer.",
    "top_logprobs": "'top_logprobs' is not bridged to chat completions.",
}
_FIELDS_KEPT = (
    *("temperature", "top_p", "parallel_tool_calls", "service_tier"),
    *("user", "safety_identifier", "prompt_cache_key"),  # pseudonymised by the route, as for chat
    "gateway_rag",  # our extension: the route hands it to rag_context and removes it
)


def stateless(field: str, what: str) -> GatewayError:
    return GatewayError(
        400,
        "responses.stateless",
        f"'{field}' needs {what}; this gateway is stateless (store is treated as false). "
        "Send the whole conversation in 'input' instead.",
        param=field,
    )


def refuse(body: dict[str, Any]) -> None:
    """Raise a 400 naming the first field the bridge does not serve."""
    for field, what in _STATEFUL.items():
        if body.get(field) is not None:
            raise stateless(field, what)
    for field, message in _UNSERVED.items():
        if body.get(field) not in (None, False):
            raise GatewayError(400, "responses.unsupported_field", message, param=field)
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "function":
            raise GatewayError(
                400,
                "responses.unsupported_tool",
                "Built-in tools (web or file search, computer use...) are not available through this "
                "gateway; only function tools are.",
                param=f"tools[{i}].type",
            )
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        raise GatewayError(
            400,
            "responses.unsupported_tool",
            "Only 'none', 'auto', 'required' or a function may be the tool choice.",
            param="tool_choice",
        )
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "item_reference":
            raise stateless(f"input[{i}]", "an item stored at the provider")
        if isinstance(kind, str) and kind not in ("message", "function_call", "function_call_output"):
            raise GatewayError(
                400,
                "responses.unsupported_item",
                "This type of input item is not bridged to chat completions; messages, function calls "
                "and function call outputs are.",
                param=f"input[{i}].type",
            )


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion for a validated Responses request (a new dict; ``body`` is not changed)."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    else:
        follows_assistant = False
        for item in items:
            _add(messages, item, follows_assistant)
            follows_assistant = item.get("type") == "function_call" or item.get("role") == "assistant"
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    for field in _FIELDS_KEPT:
        if body.get(field) is not None:
            chat[field] = body[field]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = [_tool(t) for t in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    text = body.get("text") or {}
    fmt = text.get("format")
    if fmt is not None and fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None and fmt["type"] == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    return chat


def _add(messages: list[dict[str, Any]], item: dict[str, Any], follows_assistant: bool) -> None:
    """Append ``item`` as chat messages; function calls right after assistant output join its message."""
    kind = item.get("type", "message")
    if kind == "function_call":
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        if follows_assistant:
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item["output"]
        content = output if isinstance(output, str) else [{"type": "text", "text": p["text"]} for p in output]
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
    elif item["role"] == "assistant":
        messages.append(_assistant(item["content"]))
    else:
        role = "system" if item["role"] == "developer" else item["role"]
        messages.append({"role": role, "content": _content(item["content"], role)})


def _assistant(content: str | list[dict[str, Any]]) -> dict[str, Any]:
    """Earlier assistant output: its texts joined (chat upstreams expect a string), a refusal as ``refusal``."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = "".join(p["text"] for p in content if p["type"] != "refusal")
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    refusals = [p["refusal"] for p in content if p["type"] == "refusal"]
    if refusals:
        message["refusal"] = "".join(refusals)
    return message


def _content(content: str | list[dict[str, Any]], role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "input_text":
            parts.append({"type": "text", "text": part["text"]})
        elif role == "user":
            image = {"url": part["image_url"], **({"detail": part["detail"]} if "detail" in part else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise GatewayError(
                400,
                "invalid_request.invalid_value",
                "Only user messages may carry images.",
                param="input",
            )
    return parts


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {
        k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None
    }
    return {"type": "function", "function": function}
