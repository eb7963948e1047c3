"""Tries the request's candidate deployments in order until one answers.

A policy may veto a hop by raising ``PolicyDenied`` from ``on_attempt``; the router then
skips that deployment. If every hop was vetoed, the client gets the (first) veto. If every
other hop failed, the client gets that veto, or else a fallback a policy withheld
(``ctx.withheld``, e.g. no consent for the DPA fallback), with Retry-After, instead of an
upstream error that would hide why no fallback was tried.

Fallback happens only before the first byte reaches the client: on a connect error, a
timeout, a 5xx or 429, or a context-length overflow. For streams the router waits for the
upstream's first chunk before committing, so a stream that dies before producing anything
still falls back. Each deployment has a circuit breaker that skips it for ``cooldown_s``
after ``threshold`` consecutive failures.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.auth import Principal
from gateway.chain import Chain, Pass
from gateway.config import Config
from gateway.errors import GatewayError, PolicyDenied, UpstreamError
from gateway.policy import Context, Target
from gateway.upstreams.base import Api, Endpoint, Upstream, UpstreamFailure, UpstreamResponse
from gateway.upstreams.native import UNTRANSLATABLE

_KEY_BUSY = "concurrency.exceeded"
# Failures that say nothing about the deployment's health: its breaker does not count them.
_NOT_ITS_FAULT = frozenset({_KEY_BUSY, UNTRANSLATABLE})


class Breaker:
    def __init__(self, threshold: int = 5, cooldown_s: float = 10.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold and time.monotonic() < self.open_until

    def success(self) -> None:
        self.failures = 0

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown_s


class KeySlots:
    """Requests in flight per (deployment, API key), so one key cannot hold every slot of a deployment."""

    def __init__(self, caps: Mapping[str, int]) -> None:
        self.caps = caps
        self.held: dict[tuple[str, str], int] = {}

    def acquire(self, deployment: str, key_id: str) -> bool:
        k = (deployment, key_id)
        n = self.held.get(k, 0)
        if n >= self.caps[deployment]:
            return False
        self.held[k] = n + 1
        return True

    def release(self, deployment: str, key_id: str) -> None:
        k = (deployment, key_id)
        n = self.held.get(k, 0) - 1
        if n > 0:
            self.held[k] = n
        else:
            self.held.pop(k, None)


class _Slotted(UpstreamResponse):
    """An upstream response that gives its key slot back once, however it ends (read, close, release)."""

    def __init__(self, inner: UpstreamResponse, give_back: Callable[[], None]) -> None:
        self._inner = inner
        self._give_back: Callable[[], None] | None = give_back
        self.status = inner.status
        self.content_type = inner.content_type

    def _done(self) -> None:
        if self._give_back is not None:
            give_back, self._give_back = self._give_back, None
            give_back()

    async def read(self) -> bytes:
        try:
            return await self._inner.read()
        finally:
            self._done()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._inner.chunks()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._done()

    async def release(self) -> None:
        try:
            await self._inner.release()
        finally:
            self._done()


@dataclass
class Committed:
    """An upstream answer the gateway has committed to; nothing else will be tried."""

    target: Target
    response: UpstreamResponse
    chunks: AsyncIterator[bytes] | None = None  # streams only; starts with the peeked first chunk
    began: float = 0.0  # perf_counter when the committed hop was sent (its total_s runs from here)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


class Router:
    def __init__(self, upstreams: Mapping[str, Upstream]) -> None:
        self.upstreams = upstreams
        self.breakers = {name: Breaker() for name in upstreams}
        # Provider extensions go only to the deployments that list them.
        every = {f for u in upstreams.values() for f in u.deployment.extra_fields}
        self._foreign = {
            name: frozenset(every - set(u.deployment.extra_fields)) for name, u in upstreams.items()
        }
        self.slots = KeySlots(
            {
                name: u.deployment.max_concurrency_per_key or max(1, u.deployment.max_concurrency // 2)
                for name, u in upstreams.items()
            }
        )

    async def send(self, ctx: Context, chain: Pass, endpoint: Endpoint, request: dict[str, Any]) -> Committed:
        """Return the first usable answer; raise UpstreamError when every candidate failed."""
        if not ctx.candidates:
            raise UpstreamError(503, "no_deployment", "No deployment is available for this model.")
        # Open breakers are skipped while a closed one remains; if all are open, try them anyway.
        order = [t for t in ctx.candidates if not self.breakers[t.name].is_open] or list(ctx.candidates)
        last: UpstreamFailure | None = None
        vetoed: PolicyDenied | None = None
        for target in order:
            if last is not None and ctx.fallback_reason is None:
                ctx.fallback_reason = last.reason
            try:
                body = await chain.attempt(target, request)
            except PolicyDenied as denied:
                # A policy vetoed this hop (e.g. no consent for a DPA fallback): skip it, keep trying.
                ctx.attempts.append((target.name, denied.code))
                vetoed = vetoed or denied
                continue
            began = time.perf_counter()
            try:
                api = target.deployment.api(endpoint, ctx.route)
                committed = await self._try(target, api, body, ctx.stream, ctx.principal.key_id)
            except UpstreamFailure as failure:
                ctx.upstream_s += time.perf_counter() - began
                ctx.attempts.append((target.name, failure.reason))
                if failure.retryable and failure.reason not in _NOT_ITS_FAULT:
                    self.breakers[target.name].failure()
                last = failure
                if not failure.retryable:
                    break
                continue
            ctx.upstream_s += time.perf_counter() - began
            self.breakers[target.name].success()
            ctx.attempts.append((target.name, "ok"))
            ctx.target = target
            return committed
        if last is None:
            assert vetoed is not None
            raise vetoed
        refusal = vetoed or (ctx.withheld[0] if ctx.withheld else None)
        if last.retryable and refusal is not None and last.reason not in _NOT_ITS_FAULT:
            # A fallback existed but policy did not allow it: say so, rather than look like an upstream failure.
            raise PolicyDenied(
                refusal.status,
                refusal.code,
                refusal.message,
                headers={"Retry-After": str(int(last.retry_after or 1))},
            )
        headers = {"Retry-After": str(int(last.retry_after or 1))} if last.status == 429 else {}
        if last.reason == "timeout":
            raise UpstreamError(504, "upstream_timeout", last.message, headers=headers)
        if last.status < 500 and last.status != 429:
            raise GatewayError(last.status, last.reason, last.message)
        raise UpstreamError(last.status, last.reason, last.message, headers=headers)

    async def _try(
        self, target: Target, api: Api, body: dict[str, Any], stream: bool, key_id: str
    ) -> Committed:
        foreign = self._foreign.get(target.name)
        if foreign and not foreign.isdisjoint(body):
            body = {k: v for k, v in body.items() if k not in foreign}
        if not self.slots.acquire(target.name, key_id):
            raise UpstreamFailure(
                _KEY_BUSY,
                429,
                retry_after=1,
                message=(
                    "This API key has too many requests in flight on this deployment; retry when one finishes."
                ),
            )
        began = time.perf_counter()
        try:
            response = await self.upstreams[target.name].send(api, body, stream)
        except BaseException:
            self.slots.release(target.name, key_id)
            raise
        response = _Slotted(response, lambda: self.slots.release(target.name, key_id))
        if not stream:
            return Committed(target, response, began=began)
        chunks = response.chunks()
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        except (TimeoutError, aiohttp.ServerTimeoutError):
            response.close()
            raise UpstreamFailure("timeout", 504, message="The upstream model timed out.") from None
        except (aiohttp.ClientError, OSError):
            response.close()
            raise UpstreamFailure("upstream_5xx", 502, message="The upstream stream failed.") from None
        except BaseException:
            response.close()  # cancelled while waiting for the first chunk: the slot goes back
            raise
        return Committed(target, response, _prepend(first, chunks), began)


async def embed_via(
    config: Config, router: Router, model: str, texts: list[str], allowed: frozenset[str] | None
) -> list[list[float]]:
    """Embed texts through ``router`` to the deployments of the embeddings model ``model`` in ``allowed``
    jurisdictions, with no policy chain: the gateway's internal embeddings path (RAG queries, ingest,
    ``policy explain``)."""
    alias = config.models.get(model)
    if alias is None or alias.type != "embeddings":
        raise GatewayError(500, "embeddings_model_missing", "The configured embeddings model does not exist.")
    internal = Principal(
        key_id="internal",
        tenant="internal",
        app="internal",
        models=frozenset({model}),
        scopes=frozenset({"embeddings"}),
    )
    targets = [Target(n, config.deployments[n]) for n in alias.deployments]
    ctx = Context(
        principal=internal,
        endpoint="embeddings",
        model=model,
        candidates=[t for t in targets if allowed is None or t.jurisdiction in allowed],
    )
    committed = await router.send(ctx, Chain().start(ctx), "embeddings", {"model": model, "input": texts})
    data = orjson.loads(await committed.response.read())["data"]
    return [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]
