"""Relaying a streamed answer: SSE to the client under the deployment's total time and a write timeout.

The parsed path runs the chain's stream hooks (``Pass.stream``); when no policy reads the answer the
upstream's bytes go out untouched. Either way the records are queued just before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway import metrics
from gateway.chain import Pass
from gateway.errors import GatewayError, PolicyDenied, UpstreamError
from gateway.http.asgi import DisconnectWatcher, Send, error_event
from gateway.policy import Context
from gateway.responses import TERMINAL, Events
from gateway.router import Committed
from gateway.sse import parse

log = logging.getLogger("gateway")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]"


async def relay_stream(
    ctx: Context,
    chain: Pass,
    committed: Committed,
    send: Send,
    watcher: DisconnectWatcher,
    record: Callable[[], Awaitable[None]],
    abort: Callable[[], None] | None,
    headers: list[tuple[bytes, bytes]],
    write_timeout: float,
    bridge: Events | None = None,
) -> None:
    """Relay the upstream's events; bounded by the deployment's total_s and by a write timeout per send.

    ``bridge`` (the Responses API) translates the chat events, after the chain's stream hooks, into the
    Responses event sequence; its terminal event takes the place of ``[DONE]``, and failures are told in its
    ``error`` event.

    A client that stops reading makes ``send`` wait (uvicorn's flow control); after
    ``stream_write_timeout_s`` the client is disconnected (499), and the upstream connection and
    the key's concurrency slot are released. Past total_s the client gets an error event (504).
    """
    assert committed.chunks is not None
    assert ctx.target is not None

    def failure(exc: GatewayError) -> bytes:
        return bridge.error(exc) if bridge is not None else error_event(exc)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.target.deployment.timeouts.total_s - (time.perf_counter() - committed.began)
    finished = writing = False
    try:
        async with asyncio.timeout_at(deadline) as limit:

            async def out(data: bytes, more: bool = True) -> None:
                nonlocal writing
                writing = True
                limit.reschedule(min(deadline, loop.time() + write_timeout))
                await send({"type": "http.response.body", "body": data, "more_body": more})
                limit.reschedule(deadline)
                writing = False

            ctx.status = 200
            writing = True
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_SSE_HEADERS, *headers],
                }
            )
            writing = False
            try:
                # Once the client has the terminating [DONE], the answer is delivered: a hang-up after it is not
                # an abort (the status stays 200), so the watcher stops before the upstream's own end is awaited.
                # The records are queued just before [DONE] goes out.
                async for data, last in _frames(chain, committed.chunks, bridge):
                    if last:
                        await record()
                    first_byte(ctx)
                    await out(data)
                    if last:
                        watcher.stop()
                finished = True
            except PolicyDenied as exc:
                ctx.status = exc.status
                await record()
                await out(failure(exc))
            except TimeoutError:
                raise  # ours (total_s, write timeout) or the upstream's read timeout: handled below
            except Exception as exc:  # any upstream failure is the client's 502  # noqa: BLE001
                ctx.status = 502
                log.warning(
                    "upstream stream failed",
                    extra={"request_id": ctx.request_id, "exc_type": type(exc).__name__},
                )
                await record()
                await out(
                    failure(
                        UpstreamError(
                            502, "upstream_stream_error", "The upstream stream ended with an error."
                        )
                    )
                )
            watcher.stop()
            await record()
            await out(b"", more=False)
    except TimeoutError:
        if writing:
            # The client stopped reading: nothing more can reach it. Cut it off.
            log.warning("client stopped reading a stream", extra={"request_id": ctx.request_id})
            ctx.status = 499
            if abort is not None:
                abort()
                await asyncio.sleep(0)  # the server sees the connection lost before this request returns
        else:
            # The upstream ran past total_s (or its reads stalled): tell the client, then end the stream.
            ctx.status = 504
            log.warning("upstream stream exceeded total_s", extra={"request_id": ctx.request_id})
            await record()
            err = UpstreamError(504, "upstream_timeout", "The upstream model timed out.")
            try:
                async with asyncio.timeout(write_timeout):
                    await send({"type": "http.response.body", "body": failure(err), "more_body": False})
            except TimeoutError:
                if abort is not None:
                    abort()
    finally:
        watcher.stop()
        if finished:
            await committed.response.release()
        else:
            committed.response.close()


async def _frames(
    chain: Pass, chunks: AsyncIterator[bytes], bridge: Events | None
) -> AsyncIterator[tuple[bytes, bool]]:
    """What goes to the client, write by write, each with whether it ends the answer: the upstream's bytes
    untouched when no policy reads them, else the chain's events, or the bridge's (a batch per chat chunk)."""
    if bridge is not None:
        async for batch in bridge.translate(chain.stream(parse(chunks))):
            yield b"".join(e.encode() for e in batch), batch[-1].event in TERMINAL
    elif chain.reads_response():
        async for event in chain.stream(parse(chunks)):
            yield event.encode(), event.is_done
    else:
        async for chunk in chunks:
            yield chunk, _DONE in chunk


def first_byte(ctx: Context) -> None:
    """Time to first byte: observed once per request, when its first byte goes out."""
    if ctx.first_byte_at is None:
        ctx.first_byte_at = time.perf_counter()
        metrics.TTFT.labels(ctx.model).observe(ctx.first_byte_at - ctx.started)
