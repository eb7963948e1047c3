"""A minimal pipelined Redis client for the one command on the request path.

Every budget-checked request runs one EVALSHA. Through redis-py's asyncio client that costs
about 63 µs of CPU (45 µs for a bare PING) on this machine kind, a quarter of the gateway's
whole per-request budget; this client writes the command on one shared connection, lets
concurrent requests pipeline on it, and parses replies with hiredis (the parser redis-py uses
too): about 15 µs per call (docs/accounting.md). Everything else (scans, admin, tests) keeps
using redis-py.

Replies arrive in the order commands were sent, so each call is a future in a FIFO queue.
A lost connection fails the calls in flight with ``ConnectionError``; the next call reconnects.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from typing import Any

import hiredis


class RespError(Exception):
    """Redis answered with an error reply."""


def _encode(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else b"%d" % a if isinstance(a, int) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.reader = hiredis.Reader(replyError=RespError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.deadlines: deque[float] = deque()
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._out: list[bytes] = []
        self._sweeping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, fut: asyncio.Future[Any]) -> None:
        # Commands issued in one loop iteration leave in one write (one syscall), and one sweep
        # timer per connection enforces the timeout instead of a timer per call.
        loop = fut.get_loop()
        self.waiting.append(fut)
        self.deadlines.append(loop.time() + self.timeout_s)
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(data)
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self.timeout_s / 4, self._sweep, loop)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(out))

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.lost or not self.waiting:
            self._sweeping = False
            return
        if self.deadlines[0] < loop.time():
            # Replies are matched by position: after a timeout the stream cannot be trusted.
            for fut in self.waiting:
                if not fut.done():
                    fut.set_exception(TimeoutError("redis did not answer in time"))
            if self.transport is not None:
                self.transport.close()
            self._sweeping = False
            return
        loop.call_later(self.timeout_s / 4, self._sweep, loop)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiting.popleft()
            self.deadlines.popleft()
            if not fut.done():
                if isinstance(reply, RespError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)

    def connection_lost(self, _exc: Exception | None) -> None:
        self.lost = True
        self.deadlines.clear()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError("redis connection lost"))


class RespClient:
    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        from redis.connection import parse_url  # ~0.3 s to import: only when Redis is configured

        opts = parse_url(url)  # type: ignore[no-untyped-call]  # untyped in redis-py
        if opts.get("connection_class") is not None and "Unix" not in str(opts["connection_class"]):
            raise ValueError("only redis:// and unix:// URLs are supported")
        self._opts = opts
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._shas: dict[str, bytes] = {}

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._proto
            if current is not None and not current.lost:
                return current
            loop = asyncio.get_running_loop()
            path = self._opts.get("path")
            factory = functools.partial(_Protocol, self.timeout_s)
            connect = (
                loop.create_unix_connection(factory, path)
                if path
                else loop.create_connection(
                    factory, self._opts.get("host", "127.0.0.1"), self._opts.get("port", 6379)
                )
            )
            _, fresh = await asyncio.wait_for(connect, self.timeout_s)
            self._proto = fresh
            if self._opts.get("password"):
                user = self._opts.get("username")
                await self.call("AUTH", *([user] if user else []), self._opts["password"])
            if self._opts.get("db"):
                await self.call("SELECT", self._opts["db"])
            return fresh

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply; raise RespError, ConnectionError or TimeoutError."""
        proto = self._proto if self._proto is not None and not self._proto.lost else await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.send(_encode(args), fut)
        return await fut

    async def evalsha(self, script: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None

    aclose = close  # closed with the other shared extras at shutdown (Services.aclose)
