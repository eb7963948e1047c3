"""A DEVELOPMENT upstream that speaks the OpenAI wire format. Not a model.

It answers ``/v1/chat/completions`` and ``/v1/responses`` (JSON and SSE), ``/v1/embeddings`` and ``/v1/models``
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
import threading
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson

from gateway.dev import native
from gateway.dev.answers import Answers, report
from gateway.dev.vectors import embed

__all__ = ["DevUpstream", "Received", "embed", "main", "report"]

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
class DevUpstream(Answers):
    """An OpenAI-compatible development server; ``start()`` runs it on a background thread."""

    host: str = "127.0.0.1"
    port: int = 0
    chunk_delay_s: float = 0.0
    delay_s: float = 0.0
    fail_status: int | None = None
    fail_body: bytes = b'{"error": {"message": "upstream failure at http://10.0.0.7:8000 key sk-internal-secret-123456789", "type": "server_error"}}'
    fail_times: int | None = None  # fail only the first N requests; None: always while fail_status is set
    record: bool = True
    received: list[Received] = field(default_factory=list)
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None
    _protocols: set[_Protocol] = field(default_factory=set)
    _echo_at_start: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._echo_at_start = self.echo  # reset() returns to it: a test's echo does not leak into the next

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
        self.echo = self._echo_at_start
        self.stream_tool_calls = self.stream_choices = self.legacy_function_call = False
        self.finish_reason = True
        self.tool_calls, self.arguments_chunk = 1, 5
        self.streams_started = self.streams_completed = self.streams_aborted = 0


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
        if path.endswith("/responses"):
            refused = native.invalid(body)
            return _response(400, refused) if refused else _response(200, native.response(srv, body))
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
        responses = path.endswith("/responses")
        if (
            not body.get("stream")
            or not (responses or path.endswith("/chat/completions"))
            or (responses and native.invalid(body))
        ):
            transport.write(self._answer(path, method, body))
            return
        srv.streams_started += 1
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        try:
            for event in await native.events(srv, body) if responses else srv.stream_events(body):
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
