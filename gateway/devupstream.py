"""A DEVELOPMENT upstream that speaks the OpenAI wire format. Not a model.

It answers ``/v1/chat/completions`` (JSON and SSE), ``/v1/embeddings`` and ``/v1/models``
with deterministic data, so the gateway can be tried without any API key, and tests and
benchmarks get a real HTTP server on loopback. With ``echo`` (what ``gateway serve --dev`` and
``gateway dev-upstream`` run) a chat answer is a short report of what arrived: the model, the
message roles, the last user message as received (placeholders shown as ``«EMAIL_ADDRESS_1»``,
which the gateway leaves alone, and once more as sent, which it restores) and any system
context, abbreviated. Embeddings hash words and character trigrams into buckets, so texts
that share words land near each other and retrieval over them means something. Azure-style paths
(``/openai/deployments/<name>/...``) are answered too.

Tests steer it through attributes (``fail_status``, ``delay_s``, ``chunk_delay_s``...) and
read what it received from ``received``. Stream shapes beyond the default one (a single choice of
content ending in ``finish_reason: stop``) are opt-in, so nothing changes unless a test asks:
``stream_tool_calls`` (tool-call deltas, arguments split across chunks), ``stream_choices`` (``n``
choices, their events interleaved), ``finish_reason=False`` (a stream that ends without one) and
``legacy_function_call`` (a request with ``functions`` answered with ``function_call``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class DevUpstream:
    """An OpenAI-compatible development server; ``start()`` runs it on a background thread."""

    host: str = "127.0.0.1"
    port: int = 0
    reply: str = "Hello from the ExecAI development upstream. This is canned text, not a model."
    echo: bool = False  # answer with a report of what arrived instead of ``reply``
    chunks: int = 5
    chunk_delay_s: float = 0.0
    delay_s: float = 0.0
    fail_status: int | None = None
    fail_body: bytes = b'{"error": {"message": "upstream failure at http://10.0.0.7:8000 key sk-internal-secret-123456789", "type": "server_error"}}'
    fail_times: int | None = None  # fail only the first N requests; None: always while fail_status is set
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
    record: bool = True
    received: list[Received] = field(default_factory=list)
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None
    _protocols: set[_Protocol] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- running -----------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._server = await loop.create_server(lambda: _Protocol(self), self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> DevUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="dev-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            loop, server = self._loop, self._server

            async def close() -> None:
                server.close()
                for proto in list(self._protocols):
                    if proto.transport is not None:
                        proto.transport.close()
                loop.stop()

            asyncio.run_coroutine_threadsafe(close(), loop)
            if self._thread is not None:
                self._thread.join(5)

    def reset(self) -> None:
        self.received.clear()
        self.fail_status = None
        self.fail_times = None
        self.delay_s = self.chunk_delay_s = 0.0
        self.stream_tool_calls = self.stream_choices = self.legacy_function_call = False
        self.finish_reason = True
        self.tool_calls, self.arguments_chunk = 1, 5
        self.streams_started = self.streams_completed = self.streams_aborted = 0

    # --- answers -----------------------------------------------------------------------------

    def _should_fail(self) -> bool:
        if self.fail_status is None:
            return False
        if self.fail_times is None:
            return True
        if self.fail_times > 0:
            self.fail_times -= 1
            return True
        return False

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model", "dev")
        reply = self.answer(body)
        message: dict[str, Any] = {"role": "assistant", "content": reply}
        finish = "stop"
        if body.get("tools"):
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
            if self.stream_tool_calls
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
        data = [
            {"object": "embedding", "index": i, "embedding": embed(str(x), self.embedding_dim)}
            for i, x in enumerate(items)
        ]
        tokens = sum(len(str(x).split()) for x in items)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "dev"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def embed(text: str, dim: int) -> list[float]:
    """A deterministic unit vector: each word, and each character trigram of a word, adds a signed unit to
    one of ``dim`` buckets, so texts that share words (or word stems) are near. Not a language model."""
    out = [0.0] * dim
    for word in _WORDS.findall(text.lower()):
        padded = f" {word} "
        for feature, weight in ((word, 1.0), *((padded[i : i + 3], 0.5) for i in range(len(padded) - 2))):
            h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            out[h % dim] += weight if (h >> 32) & 1 else -weight
    norm = sum(v * v for v in out) ** 0.5
    if not norm:
        return [1.0] + [0.0] * (dim - 1)
    return [round(v / norm, 6) for v in out]


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


_WORDS = re.compile(r"\w+")
_PLACEHOLDER = re.compile(r"[<\[{]\s*([A-Za-z][A-Za-z_ -]*?[ _-]?\d+)\s*[>\]}]")


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


def _arguments(body: dict[str, Any], call: int | None = None) -> str:
    """A tool or function call's arguments: the last user message, echoed for the gateway to restore."""
    args: dict[str, Any] = (
        {"echo": _last_user(body)} if call is None else {"call": call, "echo": _last_user(body)}
    )
    return orjson.dumps(args).decode()


def _count(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) + 4 for m in body.get("messages") or [])


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, _REASONS.get(status, b"Status"), content_type, len(body))
    ) + body


class _Protocol(asyncio.Protocol):
    def __init__(self, server: DevUpstream) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._protocols.add(self)

    def connection_lost(self, _exc: Exception | None) -> None:
        self.closed = True
        self.server._protocols.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_response(400, b'{"error": {"message": "bad request"}}'))
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0].decode()
        method = self.parser.get_method()
        raw = b"".join(self.body)
        assert self.transport is not None
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            self.transport.write(_response(400, b'{"error": {"message": "invalid json"}}'))
            return
        body = body if isinstance(body, dict) else {}
        if self.server.record and method == b"POST":
            self.server.received.append(Received(path, dict(self.headers), body))
        srv = self.server
        if srv.delay_s or srv.fail_status is not None or body.get("stream"):
            self.task = asyncio.ensure_future(self._handle(path, method, body))
        else:
            # Answer synchronously: keeps the benchmark baseline honest.
            self.transport.write(self._answer(path, method, body))

    def _answer(self, path: str, method: bytes, body: dict[str, Any]) -> bytes:
        srv = self.server
        if method == b"GET" and path.rstrip("/").endswith("/models"):
            return _response(
                200,
                orjson.dumps(
                    {
                        "object": "list",
                        "data": [{"id": "dev", "object": "model", "created": 0, "owned_by": "dev-upstream"}],
                    }
                ),
            )
        if path.endswith("/embeddings"):
            return _response(200, orjson.dumps(srv.embeddings(body)))
        if path.endswith("/chat/completions"):
            return _response(200, orjson.dumps(srv.completion(body)))
        return _response(404, b'{"error": {"message": "not found"}}')

    async def _handle(self, path: str, method: bytes, body: dict[str, Any]) -> None:
        srv = self.server
        transport = self.transport
        assert transport is not None
        if srv.delay_s:
            await asyncio.sleep(srv.delay_s)
        if srv._should_fail():
            assert srv.fail_status is not None
            transport.write(_response(srv.fail_status, srv.fail_body))
            return
        if not body.get("stream") or not path.endswith("/chat/completions"):
            transport.write(self._answer(path, method, body))
            return
        srv.streams_started += 1
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        try:
            for event in srv.stream_events(body):
                if self.closed:
                    raise asyncio.CancelledError
                transport.write(b"%x\r\n%s\r\n" % (len(event), event))
                if srv.chunk_delay_s:
                    await asyncio.sleep(srv.chunk_delay_s)
            transport.write(b"0\r\n\r\n")
            srv.streams_completed += 1
        except asyncio.CancelledError:
            srv.streams_aborted += 1


def main(host: str = "127.0.0.1", port: int = 9100, chunk_delay_s: float = 0.05, echo: bool = True) -> None:
    server = DevUpstream(
        host=host, port=port, chunk_delay_s=chunk_delay_s, record=False, echo=echo, embedding_dim=256
    )

    async def run() -> None:
        await server.serve()
        print(f"DEVELOPMENT upstream (reports what it received, not a model) on {server.url}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
