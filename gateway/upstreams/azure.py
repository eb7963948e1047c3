"""Azure OpenAI: deployment URLs, ``api-version`` and the ``api-key`` header."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from gateway.upstreams.base import PATHS, Endpoint
from gateway.upstreams.openai_compatible import OpenAICompatible


class AzureOpenAI(OpenAICompatible):
    def url(self, endpoint: Endpoint) -> str:
        d = self.deployment
        return (
            f"{d.base_url.rstrip('/')}/openai/deployments/{quote(d.model, safe='')}/{PATHS[endpoint]}"
            f"?api-version={quote(d.api_version, safe='')}"
        )

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.deployment.api_key:
            h["api-key"] = self.deployment.api_key
        return h

    def payload(self, body: dict[str, Any]) -> dict[str, Any]:
        # Azure routes by the URL's deployment name; the body's model is ignored, so drop it.
        return {k: v for k, v in body.items() if k != "model"}
