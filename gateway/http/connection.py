"""What the server says and does on a connection before the app sees a request: canned refusals
(431, 408, 413, 503) and a lingering close, so a refused client reads its answer, not a reset.
Used by ``gateway.http.server``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import Server
from gateway.errors import GatewayError

log = logging.getLogger("gateway.http")

# After a 431 or 408 the connection is half-closed and what the client still sends is read and
# dropped for this long, so the client can read the answer instead of a reset; then it is aborted.
LINGER_S = 1.0
# One warning line per reason at most this often (a flood must not become a log flood).
_LOG_EVERY_S = 10.0
_LINGER_OFF = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Abort with a TCP reset. A plain ``abort`` closes the fd, but the kernel would keep the socket
    and its unsent bytes (up to the send buffer, megabytes on loopback) while it waits on a client that
    does not read; with SO_LINGER 0 they are dropped at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
    transport.abort()


def _response(status: int, phrase: str, code: str, message: str, extra: bytes = b"") -> bytes:
    body = GatewayError(status, code, message).body()
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"connection: close\r\n\r\n"
        + body
    )


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 2048

    @classmethod
    def of(cls, server: Server) -> Limits:
        return cls(
            server.max_header_bytes, server.header_timeout_s, server.body_timeout_s, server.max_connections
        )

    @functools.cached_property
    def too_large(self) -> bytes:
        return _response(
            431,
            "Request Header Fields Too Large",
            "request_header_too_large",
            f"The request head exceeds {self.max_header_bytes} bytes.",
        )

    @functools.cached_property
    def timed_out(self) -> bytes:
        return _response(
            408,
            "Request Timeout",
            "request_timeout",
            f"The request head was not received within {self.header_timeout_s:g} s.",
        )

    @functools.cached_property
    def too_large_app(self) -> Callable[..., Awaitable[None]]:
        body = GatewayError(
            431, "request_header_too_large", f"The request head exceeds {self.max_header_bytes} bytes."
        ).body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]

        async def app(_scope: Any, _receive: Any, send: Callable[[Any], Awaitable[None]]) -> None:
            await send({"type": "http.response.start", "status": 431, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return app

    @functools.cached_property
    def busy(self) -> bytes:
        return _response(
            503,
            "Service Unavailable",
            "server_busy",
            "The server has too many open connections; retry shortly.",
            b"retry-after: 1\r\n",
        )


class _Refusals:
    """Rate-limited warnings about refused connections, counted per reason."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.logged: dict[str, float] = {}

    def note(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self.logged.get(reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self.logged[reason] = now
            log.warning(
                "HTTP limit reached: %s (%d in this worker so far)",
                reason,
                self.counts[reason],
                extra={"reason": reason, "count": self.counts[reason]},
            )


refusals = _Refusals()


class Linger(asyncio.Protocol):
    """Owns a connection after the answer that closes it: drops what arrives, aborts after ``seconds``."""

    def __init__(self, transport: asyncio.Transport, connections: set[Any], seconds: float) -> None:
        self.transport = transport
        self.connections = connections
        connections.add(self)  # still an open fd: it counts against max_connections
        self.timer = asyncio.get_running_loop().call_later(seconds, reset, transport)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes once the answer is flushed (the timer still aborts it)

    def connection_lost(self, _exc: Exception | None) -> None:
        self.timer.cancel()
        self.connections.discard(self)

    def shutdown(self) -> None:  # called by uvicorn on server shutdown
        reset(self.transport)
