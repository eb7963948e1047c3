"""Azure OpenAI: deployment URLs, ``api-version`` and the ``api-key`` header."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from gateway.upstreams.base import PATHS, Api
from gateway.upstreams.openai_compatible import OpenAICompatible


class AzureOpenAI(OpenAICompatible):
    def url(self, api: Api) -> str:
        d = self.deployment
        if api == "responses":
            # Azure serves the Responses API only on its v1 surface, naming the deployment in the body.
            return f"{d.base_url.rstrip('/')}/openai/v1/{PATHS[api]}"
        return (
            f"{d.base_url.rstrip('/')}/openai/deployments/{quote(d.model, safe='')}/{PATHS[api]}"
            f"?api-version={quote(d.api_version, safe='')}"
        )

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.deployment.api_key:
            h["api-key"] = self.deployment.api_key
        return h

    def payload(self, api: Api, body: dict[str, Any]) -> dict[str, Any]:
        if api == "responses":
            return super().payload(api, body)
        # Deployment URLs route by name; the body's model is ignored, so drop it.
        return {k: v for k, v in body.items() if k != "model"}
