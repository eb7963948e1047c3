"""What every upstream adapter provides.

``Upstream.send`` either returns an ``UpstreamResponse`` with a 2xx status, or raises
``UpstreamFailure`` before anything reached the client. A failure says whether another
deployment may be tried (``retryable``) and which status the client gets if none can.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson

from gateway.config import Deployment
from gateway.config.deployments import Api as Api  # re-exported for the adapters

Endpoint = Literal["chat", "embeddings"]
PATHS: dict[str, str] = {"chat": "chat/completions", "embeddings": "embeddings", "responses": "responses"}

_URL = re.compile(r"\b(?:https?|wss?|grpc)://\S+", re.I)
_SECRETish = re.compile(r"\b(?:sk|pk|rk|key|api[-_]?key|bearer)[-_: =]*[A-Za-z0-9._\-]{12,}", re.I)
_LONG_TOKEN = re.compile(r"\b[A-Za-z0-9_\-]{32,}\b")


def sanitize(message: str, limit: int = 300) -> str:
    """Strip URLs and anything that looks like a credential from an upstream message."""
    message = _URL.sub("[url]", message)
    message = _SECRETish.sub("[redacted]", message)
    message = _LONG_TOKEN.sub("[redacted]", message)
    return message[:limit]


class UpstreamFailure(Exception):
    """The deployment did not produce a usable answer; nothing was sent to the client yet."""

    def __init__(
        self,
        reason: str,
        status: int,
        *,
        retryable: bool = True,
        message: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason  # connect_error | timeout | upstream_5xx | rate_limited | context_length | ...
        self.status = status  # what the client gets if this is the last failure
        self.retryable = retryable
        self.message = message
        self.retry_after = retry_after


class UpstreamResponse(ABC):
    status: int
    content_type: str

    @abstractmethod
    async def read(self) -> bytes: ...

    @abstractmethod
    def chunks(self) -> AsyncIterator[bytes]: ...

    @abstractmethod
    def close(self) -> None:
        """Abort: drop the connection so the upstream stops generating."""

    @abstractmethod
    async def release(self) -> None:
        """Finish normally: return the connection to the pool."""


class Upstream(ABC):
    def __init__(self, name: str, deployment: Deployment) -> None:
        self.name = name
        self.deployment = deployment

    async def start(self) -> None:
        """Open pools; called once the event loop runs."""

    async def close(self) -> None:
        """Close pools."""

    @abstractmethod
    async def send(self, api: Api, body: dict[str, Any], stream: bool) -> UpstreamResponse:
        """Send ``body`` (chat- or embeddings-shaped, as the policies left it) over ``api``."""
        ...


def classify(status: int, body: bytes, retry_after: str | None) -> UpstreamFailure:
    """Map a non-2xx upstream answer to a failure the router understands."""
    message, code = "", ""
    try:
        err = orjson.loads(body).get("error") or {}
        if isinstance(err, dict):
            message, code = str(err.get("message") or ""), str(err.get("code") or "")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    try:
        wait = float(retry_after) if retry_after else None
    except ValueError:
        wait = None
    if status == 429:
        return UpstreamFailure(
            "rate_limited", 429, message="The upstream model is rate limited.", retry_after=wait
        )
    if status >= 500:
        return UpstreamFailure(
            "upstream_5xx", 502, message=f"The upstream model failed with status {status}."
        )
    if code == "context_length_exceeded" or "maximum context length" in message.lower():
        return UpstreamFailure("context_length", 400, message=sanitize(message) or "Context length exceeded.")
    if status in (401, 403, 404):
        # Our credentials or deployment name are wrong: an operator problem, not the caller's.
        return UpstreamFailure(
            f"upstream_{status}", 502, message="The upstream model rejected the gateway's configuration."
        )
    return UpstreamFailure(
        "upstream_4xx",
        status if status in (400, 409, 413, 422) else 400,
        retryable=False,
        message=sanitize(message) or f"The upstream model rejected the request (status {status}).",
    )
