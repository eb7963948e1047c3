"""What the development upstream answers: canned or echoed chat completions (JSON and SSE chunks in the
shapes tests opt into) and deterministic embeddings. ``gateway.dev.server`` serves them over HTTP."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.dev.structured import instance, json_schema
from gateway.dev.vectors import embed, encoded


@dataclass
class Answers:
    """The answer shapes; tests set these attributes on the running server."""

    reply: str = "Hello from the ExecAI development upstream. This is canned text, not a model."
    echo: bool = False  # answer with a report of what arrived instead of ``reply``
    chunks: int = 5
    embedding_dim: int = 16
    include_usage: bool = True
    # Opt-in answer shapes (see the module docstring); reset() turns them off again.
    stream_tool_calls: bool = False  # a streamed request with ``tools`` gets ``delta.tool_calls``
    tool_calls: int = (
        1  # tool calls per streamed choice (arguments ``{"call": i, "echo": <last user message>}``)
    )
    arguments_chunk: int = 5  # characters of a streamed tool call's (or function call's) arguments per chunk
    stream_choices: bool = (
        False  # a streamed request with ``n`` > 1 gets n choices, events interleaved by index
    )
    finish_reason: bool = True  # False: streams end ([DONE]) without any chunk carrying a finish_reason
    legacy_function_call: bool = False  # a request with ``functions`` gets ``function_call``, streamed or not

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model", "dev")
        reply = self.answer(body)
        message: dict[str, Any] = {"role": "assistant", "content": reply}
        finish = "stop"
        if _calls_tool(body):
            tool = body["tools"][0]["function"]["name"]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_dev_1",
                        "type": "function",
                        "function": {
                            "name": tool,
                            "arguments": orjson.dumps({"echo": _last_user(body)}).decode(),
                        },
                    }
                ],
            }
            finish = "tool_calls"
        function = self._legacy_function(body)
        if function is not None:
            message = {
                "role": "assistant",
                "content": None,
                "function_call": {"name": function, "arguments": _arguments(body)},
            }
            finish = "function_call"
        n = body.get("n") or 1
        prompt = _count(body)
        return {
            "id": "chatcmpl-dev",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": i, "message": message, "finish_reason": finish, "logprobs": None} for i in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": len(reply.split()),
                "total_tokens": prompt + len(reply.split()),
            },
        }

    def answer(self, body: dict[str, Any]) -> str:
        """The reply text: an instance of the requested JSON schema (``response_format``), the echo report, or
        the canned reply."""
        schema = json_schema(body)
        if schema is not None:
            return orjson.dumps(instance(schema, _last_user(body))).decode()
        return report(body) if self.echo else self.reply

    def _legacy_function(self, body: dict[str, Any]) -> str | None:
        functions = body.get("functions")
        if not self.legacy_function_call or not functions or not isinstance(functions[0], dict):
            return None
        return str(functions[0].get("name", "fn"))

    def stream_events(self, body: dict[str, Any]) -> list[bytes]:
        model = body.get("model", "dev")
        words = self.answer(body).split(" ")
        base = {
            "id": "chatcmpl-dev",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        n = max(1, int(body.get("n") or 1)) if self.stream_choices else 1
        function = self._legacy_function(body)
        tools = (
            [
                t["function"]["name"]
                for t in body.get("tools") or ()
                if isinstance(t, dict) and isinstance(t.get("function"), dict)
            ]
            if self.stream_tool_calls and _calls_tool(body)
            else []
        )
        per_choice: list[list[tuple[dict[str, Any], str | None]]] = []
        for index in range(n):
            if function is not None:
                deltas = self._function_deltas(body, function)
            elif tools:
                deltas = self._tool_deltas(body, tools)
            else:
                deltas = self._content_deltas(words, self.chunks + index)
            per_choice.append(deltas)
        events: list[dict[str, Any]] = []
        for step in range(max(len(d) for d in per_choice)):  # interleaved: index 0..n-1, then the next step
            for index, deltas in enumerate(per_choice):
                if step < len(deltas):
                    delta, finish = deltas[step]
                    if finish is not None and not self.finish_reason:
                        if not delta:
                            continue
                        finish = None
                    events.append(
                        {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
                    )
        if (body.get("stream_options") or {}).get("include_usage") and self.include_usage:
            prompt = _count(body)
            events.append(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": len(words),
                        "total_tokens": prompt + len(words),
                    },
                }
            )
        return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]

    @staticmethod
    def _content_deltas(words: list[str], chunks: int) -> list[tuple[dict[str, Any], str | None]]:
        per = max(1, -(-len(words) // max(1, chunks)))
        pieces = [
            " ".join(words[i : i + per]) + (" " if i + per < len(words) else "")
            for i in range(0, len(words), per)
        ]
        return [
            ({"role": "assistant", "content": ""}, None),
            *(({"content": p}, None) for p in pieces),
            ({}, "stop"),
        ]

    def _split(self, text: str) -> list[str]:
        size = max(1, self.arguments_chunk)
        return [text[i : i + size] for i in range(0, len(text), size)]

    def _tool_deltas(self, body: dict[str, Any], tools: list[str]) -> list[tuple[dict[str, Any], str | None]]:
        """OpenAI's shape: per call, a chunk with its index, id, type and name (arguments ""), then
        chunks carrying only ``index`` and a piece of ``function.arguments``."""
        out: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": None}, None)]
        for i in range(max(1, self.tool_calls)):
            out.append(
                (
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": f"call_dev_{i + 1}",
                                "type": "function",
                                "function": {"name": tools[i % len(tools)], "arguments": ""},
                            }
                        ]
                    },
                    None,
                )
            )
            out += [
                ({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, None)
                for piece in self._split(_arguments(body, i))
            ]
        out.append(({}, "tool_calls"))
        return out

    def _function_deltas(self, body: dict[str, Any], name: str) -> list[tuple[dict[str, Any], str | None]]:
        out: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "content": None, "function_call": {"name": name, "arguments": ""}}, None)
        ]
        out += [({"function_call": {"arguments": piece}}, None) for piece in self._split(_arguments(body))]
        out.append(({}, "function_call"))
        return out

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        vectors = [embed(str(x), self.embedding_dim) for x in items]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encoded(v, body.get("encoding_format")),
            }
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(str(x).split()) for x in items)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "dev"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def report(body: dict[str, Any]) -> str:
    """What the echo mode answers: what arrived, for a newcomer to see the gateway's work."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    roles = ", ".join(str(m.get("role")) for m in messages)
    last = _last_user(body)
    lines = [
        f"DEVELOPMENT upstream, not a model. It received {len(messages)} message(s) for "
        f"{body.get('model', '?')}: {roles}.",
        f"Last user message as it arrived here: {_shown(last)}",
        f"The same, echoed for the gateway to restore: {last}",
    ]
    for m in messages:
        if m.get("role") == "system" and isinstance(m.get("content"), str):
            content = " ".join(m["content"].split())
            cut = content if len(content) <= 160 else content[:157] + "..."
            lines.append(f"System message ({len(content)} chars): {_shown(cut)}")
    return "\n".join(lines)


def _shown(text: str) -> str:
    """Placeholders in a form the gateway does not restore, so the report shows what the model saw."""
    return _PLACEHOLDER.sub(lambda m: f"«{m.group(1)}»", text)


_PLACEHOLDER = re.compile(r"[<\[{]\s*([A-Za-z][A-Za-z_ -]*?[ _-]?\d+)\s*[>\]}]")


def _calls_tool(body: dict[str, Any]) -> bool:
    """A request with tools gets a tool call, unless it already carries the tools' results (the round trip's
    second request) or asks for no tool."""
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    return bool(body.get("tools")) and last.get("role") != "tool" and body.get("tool_choice") != "none"


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        content = m.get("content")
        if m.get("role") == "user" and isinstance(content, str):
            return content
        if m.get("role") == "user" and isinstance(content, list):  # content parts: the texts, joined
            return "".join(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return ""


def _arguments(body: dict[str, Any], call: int | None = None) -> str:
    """A tool or function call's arguments: the last user message, echoed for the gateway to restore."""
    args: dict[str, Any] = (
        {"echo": _last_user(body)} if call is None else {"call": call, "echo": _last_user(body)}
    )
    return orjson.dumps(args).decode()


def _count(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) + 4 for m in body.get("messages") or [])
