"""HTTP limits enforced by the server itself, on every route, before the app reads anything.

uvicorn's httptools protocol accepts request heads of any size (httptools accumulates a
header value in Python bytes, so memory and CPU grow with it), and it starts no timer on a
connection before its first response: idle connections, half-sent heads and half-sent bodies
stay open for ever. ``GatewayHttpProtocol`` adds, per connection:

- a head size limit (``server.max_header_bytes``): bytes received while the request head is
  incomplete are counted after each read; over the limit the client gets 431 and the
  connection closes. Memory is bounded by the limit plus one socket read;
- a head timeout (``server.header_timeout_s``) from connection open, and from the first byte
  of each later request on a keep-alive connection, until the head is complete: 408, then close
  (a connection that never sent a byte is closed without an answer);
- a body timeout (``server.body_timeout_s``) from the end of the head until the body is
  complete: the connection is closed, and the app's ``receive()`` returns ``http.disconnect``;
- a cap on open connections per worker (``server.max_connections``): one more gets 503 with
  ``retry-after: 1`` at once and is closed, without being counted;
- ``scope["extensions"]["gateway.abort"]``: aborts the connection with a TCP reset, so the app can
  drop a client that stopped reading (``close`` would wait for the write buffer to drain).

The keep-alive idle timeout is uvicorn's own ``timeout_keep_alive`` (``server.keep_alive_s``).

Cost on the request path: no timer for a request whose head (and body) arrives in one read
(a fresh connection arms one head timer); one small dict per request for the scope extension.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import Server
from gateway.http.connection import LINGER_S, Limits, Linger, refusals, reset

log = logging.getLogger("gateway.http")


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head size, head and body timeouts, and a connection cap."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = limits or Limits()
        self.limits = limits
        self._max_head = limits.max_header_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_open = False  # a request head has begun and is not complete
        self._body_open = False  # a request head is complete and its body is not
        self._head_bytes = 0  # bytes received while the current head was incomplete
        self._read_len = 0  # length of the current read, 0 once a message ended inside it

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Refused before anything is allocated; not counted in server_state.connections.
            transport.write(self.limits.busy)
            transport.close()
            refusals.note("max_connections")
            return
        super().connection_made(transport)
        self._abort = functools.partial(reset, transport)
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # refused in connection_made
            return
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._read_len = len(data)  # set to 0 when a message ends inside this read
        super().data_received(data)
        if self._head_open:
            self._head_bytes += (
                self._read_len
            )  # (0: the head began inside this read, after the previous message)
            if self._head_bytes > self._max_head:
                self._head_too_large()
                return
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        elif self._body_open:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        elif self._head_timer is None and self.cycle is not None and self.cycle.response_complete:
            # Bytes that began no request (bare CRLFs), or the rest of a body the app had already answered:
            # uvicorn has just cancelled its keep-alive timer and will not re-arm it. The head clock runs.
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        extensions: dict[str, Any] | None = self.scope.get("extensions")
        if extensions is None:
            self.scope["extensions"] = {"gateway.abort": self._abort}  # type: ignore[dict-item]
        else:
            extensions["gateway.abort"] = self._abort

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._body_open = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._head_bytes + self._read_len > self._max_head and self._head_size() > self._max_head:
            # A head over the limit that arrived complete in one read: answered 431 by a stand-in app.
            refusals.note("max_header_bytes")
            app, self.app = self.app, self.limits.too_large_app
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        self._head_bytes = 0

    def _head_size(self) -> int:
        # Request line (method, spaces, version, CRLF), headers with ": " and CRLF, final CRLF.
        return len(self.url) + 24 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        self._body_open = False
        self._read_len = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # --- limits ----------------------------------------------------------------------------

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _close(self) -> None:
        """Close now; reset if unsent bytes would make ``close`` wait for a client that does not read."""
        if self.transport.get_write_buffer_size():
            reset(self.transport)
        else:
            self.transport.close()

    def _answer_and_close(self, response: bytes) -> None:
        """Send ``response``, half-close, and hand the connection to a ``Linger`` that drops the rest."""
        transport = self.transport
        self._cancel_timers()
        self.connections.discard(self)
        self.parser = None  # type: ignore[assignment]  # frees the partial head
        transport.set_protocol(Linger(transport, self.connections, LINGER_S))
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def _head_too_large(self) -> None:
        refusals.note("max_header_bytes")
        if self.transport.is_closing():
            return
        if self._responding():  # a pipelined head while a response is being sent: no way to answer it
            self._cancel_timers()
            reset(self.transport)
            return
        self._answer_and_close(self.limits.too_large)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._responding():  # a pipelined head: finish the current response, then close
            self.cycle.keep_alive = False
            return
        if self._head_open or self._head_bytes:
            refusals.note("header_timeout_s")
            self._answer_and_close(self.limits.timed_out)
        else:  # nothing but (maybe) blank lines since the connection opened or the last response
            self._close()

    def _body_timeout(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing():
            refusals.note("body_timeout_s")
            self._close()


def server_options(server: Server) -> dict[str, Any]:
    """uvicorn settings for the gateway's HTTP server, shared by ``gateway serve`` and the tests."""
    # A partial of a module-level class pickles, so it reaches uvicorn's spawned worker processes.
    protocol = functools.partial(GatewayHttpProtocol, limits=Limits.of(server))
    return {
        "http": protocol,
        "loop": "uvloop",
        "ws": "none",
        "access_log": False,
        "log_config": None,
        "timeout_keep_alive": server.keep_alive_s,
    }


def uvicorn_config(app_or_factory: Any, server: Server, **kwargs: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` with the gateway's protocol and limits; ``kwargs`` add or override settings."""
    return uvicorn.Config(app_or_factory, **{**server_options(server), **kwargs})
