"""ASGI plumbing shared by the routes: types, headers, bounded bodies, OpenAI-format errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson

from gateway.errors import GatewayError
from gateway.sse import Event

log = logging.getLogger("gateway")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


class Disconnected(Exception):
    """The client went away; the request's work was cancelled."""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return cast(bytes, value).decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, limit: int, too_large: GatewayError) -> bytes:
    """The whole request body, refused with ``too_large`` past ``limit`` bytes (by Content-Length before
    any of it is read); raises ``Disconnected`` when the client goes away first."""
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def run(handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """Run a handler, answer GatewayErrors in OpenAI format, and never let one escape."""
    sent = [False]

    async def tracking_send(message: Message) -> None:
        sent[0] = True
        await send(message)

    try:
        await handler(scope, receive, tracking_send)
    except Disconnected:
        pass
    except GatewayError as exc:
        if not sent[0]:
            await send_error(send, exc)
    except Exception:
        log.exception("unhandled error", extra={"path": scope["path"]})
        if not sent[0]:
            await send_error(send, GatewayError(500, "internal_error", "Internal gateway error."))


class DisconnectWatcher:
    """Cancels the request's task when the client disconnects, which aborts the upstream call."""

    def __init__(self, receive: Receive) -> None:
        self.fired = False
        self._owner = asyncio.current_task()
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._task is not None and self._owner is not None:
            self.fired = True
            self._owner.cancel()

    def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()


def abort_of(scope: Scope) -> Callable[[], None] | None:
    """The server's way to drop the connection at once (gateway/http/server.py puts it in the scope)."""
    extensions = scope.get("extensions")
    return extensions.get("gateway.abort") if extensions else None


def error_event(exc: GatewayError) -> bytes:
    return Event(exc.body()).encode()


async def send_json(
    send: Send, status: int, obj: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_body(send, status, orjson.dumps(obj), extra)


async def send_error(send: Send, exc: GatewayError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send_body(send, exc.status, exc.body(), [*headers, *(extra or [])])


async def send_body(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
