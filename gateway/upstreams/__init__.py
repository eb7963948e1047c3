"""Upstream adapters, one per wire protocol; ``build`` picks the adapter for a deployment."""

from __future__ import annotations

from gateway.config import Deployment
from gateway.upstreams.base import Upstream


def build(name: str, deployment: Deployment) -> Upstream:
    if deployment.kind == "azure_openai":
        from gateway.upstreams.azure import AzureOpenAI

        return AzureOpenAI(name, deployment)
    if deployment.kind == "litellm":
        from gateway.upstreams.litellm_adapter import LiteLLM

        return LiteLLM(name, deployment)
    from gateway.upstreams.openai_compatible import OpenAICompatible

    return OpenAICompatible(name, deployment)
