"""Providers whose wire format differs from OpenAI's, through litellm.

litellm is imported lazily, only when a ``kind: litellm`` deployment exists: the import costs
about 9 s and 200 MB here. Before importing, we pin it offline: the local price map instead
of GitHub, no telemetry, tokenizers from the wheel.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.upstreams.base import Api, Upstream, UpstreamFailure, UpstreamResponse, sanitize

OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "DISABLE_AIOHTTP_TRANSPORT": "False",
}


def import_litellm() -> Any:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    from gateway.tokens import configure_tiktoken_offline

    configure_tiktoken_offline()
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


class _Buffered(UpstreamResponse):
    def __init__(self, body: bytes | None = None, stream: AsyncIterator[Any] | None = None) -> None:
        self.status = 200
        self.content_type = "text/event-stream" if stream is not None else "application/json"
        self._body = body or b""
        self._stream = stream

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._stream is not None
        async for chunk in self._stream:
            yield b"data: " + orjson.dumps(chunk.model_dump(exclude_none=True)) + b"\n\n"
        yield b"data: [DONE]\n\n"

    def close(self) -> None:
        if self._stream is not None and hasattr(self._stream, "aclose"):
            self._closing = asyncio.ensure_future(self._stream.aclose())

    async def release(self) -> None:
        return None


class LiteLLM(Upstream):
    _litellm: Any = None

    async def start(self) -> None:
        self._litellm = import_litellm()

    async def send(self, endpoint: Api, body: dict[str, Any], stream: bool) -> UpstreamResponse:
        if self._litellm is None:
            await self.start()
        d = self.deployment
        args = {k: v for k, v in body.items() if k != "model"}
        common = {
            "model": d.litellm_model or d.model,
            "api_base": d.base_url or None,
            "api_key": d.api_key or None,
            "timeout": d.timeouts.total_s,
        }
        try:
            if endpoint == "embeddings":
                resp = await self._litellm.aembedding(**common, **args)
                return _Buffered(orjson.dumps(resp.model_dump(exclude_none=True)))
            resp = await self._litellm.acompletion(**common, **args)
        except Exception as exc:  # mapped to an upstream failure  # noqa: BLE001
            raise _failure(exc) from None
        if stream:
            return _Buffered(stream=resp)
        return _Buffered(orjson.dumps(resp.model_dump(exclude_none=True)))


def _failure(exc: Exception) -> UpstreamFailure:
    status = int(getattr(exc, "status_code", 0) or 0)
    name = type(exc).__name__
    if "Timeout" in name:
        return UpstreamFailure("timeout", 504, message="The upstream model timed out.")
    if "ContextWindow" in name:
        return UpstreamFailure("context_length", 400, message="Context length exceeded.")
    if status == 429:
        return UpstreamFailure("rate_limited", 429, message="The upstream model is rate limited.")
    if status >= 500 or "Connection" in name or status == 0:
        return UpstreamFailure("upstream_5xx", 502, message="The upstream model failed.")
    if status in (401, 403, 404):
        return UpstreamFailure(
            f"upstream_{status}", 502, message="The upstream model rejected the gateway's configuration."
        )
    return UpstreamFailure(
        "upstream_4xx", 400, retryable=False, message=sanitize(str(getattr(exc, "message", "")) or name)
    )
