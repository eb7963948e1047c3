"""Errors that reach the client, in OpenAI's error format.

    GatewayError            any error the gateway answers with itself
     ├── PolicyDenied       a policy refused the request (stable ``code``)
     └── UpstreamError      no upstream could answer (502, 503, 504)

Every error renders as ``{"error": {"message", "type", "param", "code"}}``. Messages are
written by the gateway, never copied from upstreams or from the request, so they carry no
secrets, internal URLs or prompt text.
"""

from __future__ import annotations

import orjson

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """An error answered to the client with ``status`` and a machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


class PolicyDenied(GatewayError):
    """Raised by a policy to refuse a request; ``code`` reads ``<policy>.<reason>``."""


class UpstreamError(GatewayError):
    """Raised when no candidate deployment produced a usable answer."""


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, code, message, param=param)
