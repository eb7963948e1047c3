"""The Responses API as an upstream's wire protocol, for a deployment that lists it in ``supports``.

The request the policies left for this hop is a chat completion; it goes out as a Responses
request (``gateway.responses.native_request``), and the answer comes back as chat
(``gateway.responses.native_answer``), so the router, the chain's hooks and the relay see what
they see from any chat upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any

from gateway.errors import UpstreamError
from gateway.responses.native_answer import Chunks, NativeFailed, completion
from gateway.responses.native_request import Untranslatable, to_responses
from gateway.upstreams.base import UpstreamFailure, UpstreamResponse

UNTRANSLATABLE = "deployment.unsupported_field"


def request(body: dict[str, Any], extensions: Collection[str]) -> dict[str, Any]:
    """The Responses request for a chat body; a field it cannot carry fails this hop (another may serve it)."""
    try:
        return to_responses(body, extensions)
    except Untranslatable as exc:
        raise UpstreamFailure(
            UNTRANSLATABLE,
            400,
            message=(
                f"'{exc.field}' cannot be sent to this model's upstream, which speaks the Responses API; "
                "remove it or use another model."
            ),
        ) from None


def _failed(exc: NativeFailed) -> UpstreamFailure:
    return UpstreamFailure("upstream_5xx", 502, message=str(exc))


class NativeResponse(UpstreamResponse):
    """A Responses answer read as a chat answer: a completion's bytes, or chat chunks ending in [DONE]."""

    def __init__(self, inner: UpstreamResponse) -> None:
        self._inner = inner
        self.status = inner.status
        self.content_type = inner.content_type

    async def read(self) -> bytes:
        try:
            return completion(await self._inner.read())
        except NativeFailed as exc:  # read after the router committed: no other hop now
            raise UpstreamError(502, "upstream_invalid_response", str(exc)) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        translate = Chunks()
        try:
            async for data in self._inner.chunks():
                if out := translate.feed(data):
                    yield out
            if out := translate.close():
                yield out
        except NativeFailed as exc:
            raise _failed(exc) from None

    def close(self) -> None:
        self._inner.close()

    async def release(self) -> None:
        await self._inner.release()
