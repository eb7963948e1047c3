"""OpenAI wire format over HTTP: vLLM, llama.cpp, Ollama, the Mistral API, OpenAI.

One aiohttp connection pool per deployment. aiohttp, not httpx, on the hot path: at 32
concurrent requests httpx's pool served 281 req/s on this machine kind against 1,793 for
aiohttp (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.upstreams import native
from gateway.upstreams.base import PATHS, Api, Upstream, UpstreamFailure, UpstreamResponse, classify


class AiohttpResponse(UpstreamResponse):
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._resp.content.iter_any():
            yield chunk

    def close(self) -> None:
        self._resp.close()

    async def release(self) -> None:
        self._resp.release()


class OpenAICompatible(Upstream):
    session: aiohttp.ClientSession | None = None

    def url(self, api: Api) -> str:
        return f"{self.deployment.base_url.rstrip('/')}/{PATHS[api]}"

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.deployment.api_key:
            h["Authorization"] = f"Bearer {self.deployment.api_key}"
        return h

    def payload(self, api: Api, body: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002 (Azure's differs by api)
        return {**body, "model": self.deployment.model}

    async def start(self) -> None:
        t = self.deployment.timeouts
        self.timeout = aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s, sock_read=t.read_s)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.deployment.max_concurrency, ttl_dns_cache=300),
            timeout=self.timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        self._headers = self.headers()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def send(self, api: Api, body: dict[str, Any], stream: bool) -> UpstreamResponse:  # noqa: ARG002 (Upstream.send)
        if self.session is None:
            await self.start()
        assert self.session is not None
        if api == "responses":
            body = native.request(body, self.deployment.extra_fields)
        data = orjson.dumps(self.payload(api, body))
        try:
            resp = await self.session.post(self.url(api), data=data, headers=self._headers)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamFailure("timeout", 504, message="The upstream model timed out.") from None
        except (aiohttp.ClientError, OSError):
            raise UpstreamFailure(
                "connect_error", 502, message="The upstream model is unreachable."
            ) from None
        if resp.status >= 300:
            try:
                raw = await asyncio.wait_for(resp.read(), timeout=self.deployment.timeouts.read_s)
            except (TimeoutError, aiohttp.ClientError):
                raw = b""
            finally:
                resp.release()
            raise classify(resp.status, raw, resp.headers.get("Retry-After"))
        return native.NativeResponse(AiohttpResponse(resp)) if api == "responses" else AiohttpResponse(resp)
