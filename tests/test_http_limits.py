"""HTTP limits on every route, before the app reads anything (issue #12): head size, head and body
timeouts, keep-alive idle timeout, connection cap, and the transport's abort in the ASGI scope.

Raw sockets on 127.0.0.1 against a real gateway, with small limits so each test takes about a second.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


def start(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, **server: Any
) -> RunningGateway:
    return gateway_factory(make_config(upstream, server=server))


def connect(gw: RunningGateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def read_response(sock: socket.socket, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-cased headers, body by Content-Length); the connection may stay open."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection (EOF or reset), and the bytes received until then."""
    sock.settimeout(limit)
    started, received = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            pytest.fail(f"the connection was still open after {limit} s (received {received[:200]!r})")
        if not chunk:
            break
        received += chunk
    return time.monotonic() - started, received


def assert_openai_error(body: bytes, code: str) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] is None
    assert error["message"]
    assert error["type"] == ("server_error" if code == "server_busy" else "invalid_request_error")


# --- head size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "end"),
    [(100 * 1024, b"\r\n\r\n"), (4 * 1024 * 1024, b"")],
    ids=["100KiB-complete-head", "4MiB-head-that-never-ends"],
)
def test_a_head_over_max_header_bytes_gets_431_and_others_are_answered_meanwhile(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, size: int, end: bytes
) -> None:
    # A complete head of 100 KiB usually arrives in one read and is measured when it completes; a head
    # that never ends must be refused while it arrives (the memory bound: the limit plus one read).
    gw = start(gateway_factory, upstream, max_header_bytes=64 * 1024)
    big = connect(gw)

    def send_big_head() -> None:
        with contextlib.suppress(OSError):  # the server may stop reading once it has answered
            big.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * size + end)

    sender = threading.Thread(target=send_big_head)
    sender.start()
    started = time.monotonic()
    assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 2
    status, headers, body = read_response(big)
    sender.join(10)
    assert status == 431
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert_openai_error(body, "request_header_too_large")
    closed_after(big, 5)
    big.close()


# --- head timeout ---------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_header_timeout_s(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = start(gateway_factory, upstream, header_timeout_s=0.5)
    with connect(gw) as sock:
        elapsed, received = closed_after(sock, 5)
    assert 0.4 <= elapsed < 3
    assert received == b""  # it never sent a byte: closed without an answer


@pytest.mark.parametrize("keep_alive", [False, True], ids=["first-request", "after-a-keep-alive-request"])
def test_a_half_sent_head_gets_408_and_is_closed(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, keep_alive: bool
) -> None:
    gw = start(gateway_factory, upstream, header_timeout_s=0.5, keep_alive_s=30)
    with connect(gw) as sock:
        if keep_alive:
            sock.sendall(HEALTHZ)
            assert read_response(sock)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        elapsed, received = closed_after(sock, 5)
    assert 0.4 <= elapsed < 3
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    assert_openai_error(body, "request_timeout")


def test_blank_lines_after_a_response_do_not_keep_a_connection_open(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    # Bare CRLFs begin no request; uvicorn cancels its keep-alive timer on any byte and would not re-arm it.
    gw = start(gateway_factory, upstream, header_timeout_s=0.5, keep_alive_s=30)
    with connect(gw) as sock:
        sock.sendall(HEALTHZ)
        assert read_response(sock)[0] == 200
        sock.sendall(b"\r\n")
        elapsed, _ = closed_after(sock, 5)
    assert 0.4 <= elapsed < 3


# --- body timeout ---------------------------------------------------------------------------


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "one-byte-every-0.2s"])
def test_a_half_sent_body_is_closed_within_body_timeout_s(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, trickle: bool
) -> None:
    gw = start(gateway_factory, upstream, header_timeout_s=5, body_timeout_s=0.5)
    with connect(gw) as sock:
        sock.sendall(
            b"POST /admin/keys HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b"{" * 10
        )
        started = time.monotonic()
        if trickle:  # bytes keep arriving: the body deadline is not an idle timer
            for _ in range(25):
                try:
                    sock.sendall(b" ")
                except OSError:
                    break  # the server closed the connection
                time.sleep(0.2)
        _, received = closed_after(sock, 5)
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3
    assert not received.startswith(b"HTTP/1.1 2")


# --- keep-alive idle timeout ----------------------------------------------------------------


def test_a_kept_alive_connection_is_closed_after_keep_alive_s(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = start(gateway_factory, upstream, keep_alive_s=0.5, header_timeout_s=30)
    with connect(gw) as sock:
        sock.sendall(HEALTHZ)
        assert read_response(sock)[0] == 200
        elapsed, received = closed_after(sock, 5)
    assert elapsed < 3
    assert received == b""


# --- connection cap -------------------------------------------------------------------------


def test_a_connection_over_max_connections_gets_503_and_a_new_one_succeeds_once_others_close(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = start(gateway_factory, upstream, max_connections=3, keep_alive_s=30, header_timeout_s=30)
    held = [connect(gw) for _ in range(3)]
    for sock in held:  # each is accepted and served, then stays open (kept alive)
        sock.sendall(HEALTHZ)
        assert read_response(sock)[0] == 200
    with connect(gw) as extra:
        elapsed, received = closed_after(extra, 5)
    assert elapsed < 2
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1\r\n" in head.lower() + b"\r\n"
    assert b"connection: close" in head.lower()
    assert_openai_error(body, "server_busy")
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 5
    while True:
        with connect(gw) as sock:
            sock.sendall(HEALTHZ)
            status = read_response(sock)[0]
        if status == 200:
            break
        assert time.monotonic() < deadline, "no connection was accepted after the others closed"
        time.sleep(0.05)


# --- the transport's abort, for the app -----------------------------------------------------


def test_the_scope_carries_the_transports_abort(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    async def cut_off(scope: dict[str, Any], receive: Any, send: Any) -> None:
        abort = scope["extensions"]["gateway.abort"]
        seen.append(abort)
        abort()

    monkeypatch.setitem(gw.gateway._routes, ("GET", "/healthz"), cut_off)
    with connect(gw) as sock:
        sock.sendall(HEALTHZ)
        elapsed, received = closed_after(sock, 5)
    assert len(seen) == 1
    assert callable(seen[0])
    assert received == b""
    assert elapsed < 2
