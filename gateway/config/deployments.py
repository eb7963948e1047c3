"""The deployments (upstream models) and public model aliases of ``config.yaml``."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Api = Literal["chat", "embeddings", "responses"]  # the upstream API a request takes (Deployment.api)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(Strict):
    connect_s: float = Field(
        5.0, gt=0, le=600, description="Seconds to open a TCP/TLS connection to the upstream."
    )
    read_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest silence between two chunks of the upstream response, in seconds.",
    )
    total_s: float = Field(
        600.0, gt=0, le=7200, description="Upper bound for a whole upstream exchange, streaming included."
    )


class Price(Strict):
    input_per_1m: Decimal = Field(..., ge=0, description="Price per one million prompt tokens.")
    output_per_1m: Decimal = Field(..., ge=0, description="Price per one million completion tokens.")
    currency: Literal["EUR", "USD"] = Field("EUR", description="Currency of the two prices above.")


class Deployment(Strict):
    kind: Literal["openai_compatible", "azure_openai", "litellm"] = Field(
        ...,
        description=(
            "Wire protocol. `openai_compatible`: vLLM, llama.cpp, Ollama, Mistral API, OpenAI. "
            "`azure_openai`: Azure OpenAI deployment URLs with `api-key`. `litellm`: any provider "
            "litellm speaks (imported lazily, only when such a deployment exists)."
        ),
    )
    base_url: str = Field(
        ...,
        description=(
            "Upstream base URL. For openai_compatible it includes the version prefix (`https://api.mistral.ai/v1`); "
            "for azure_openai it is the resource endpoint (`https://NAME.openai.azure.com`)."
        ),
    )
    model: str = Field(..., description="Model id sent upstream (for Azure, the deployment name).")
    api_key: str = Field(
        "", description="Credential, normally an `${ENV_VAR}` reference; never logged.", repr=False
    )
    api_version: str = Field(
        "2024-10-21", description="Azure OpenAI `api-version` query parameter (azure_openai only)."
    )
    jurisdiction: str = Field(
        ..., pattern=r"^[A-Z]{2,3}$", description="Legal jurisdiction of the upstream, e.g. `EU`, `US`, `CH`."
    )
    region: str = Field(
        ..., min_length=1, description="Hosting region, e.g. `westeurope`, `fr-par`, `on-prem-fra`."
    )
    dpa: bool = Field(False, description="True when a data processing agreement covers this upstream.")
    extra_fields: list[str] = Field(
        [],
        description=(
            "Provider extensions (top-level request fields outside the OpenAI API, e.g. vLLM's `top_k`) this "
            "deployment accepts. Requests may carry them; their strings are scanned like text, and they are "
            "sent to this deployment only."
        ),
    )
    timeouts: Timeouts = Field(Timeouts(), description="Connect, read and total timeouts.")
    max_concurrency: int = Field(
        256, ge=1, le=100_000, description="Concurrent requests this gateway worker sends to the deployment."
    )
    max_concurrency_per_key: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description=(
            "Concurrent requests one API key may have in flight on this deployment, per gateway worker; a key at "
            "its cap is refused here (the next deployment is tried, else 429 `concurrency.exceeded`), so one key "
            "cannot take every slot. Unset: half of `max_concurrency` (at least 1)."
        ),
    )
    price: Price | None = Field(
        None, description="Price override; otherwise litellm's offline price map is used."
    )
    litellm_model: str | None = Field(
        None, description="litellm model string, e.g. `bedrock/...` (litellm kind only; defaults to `model`)."
    )
    supports: list[Literal["chat", "responses"]] = Field(
        ["chat"],
        min_length=1,
        description=(
            "The upstream APIs that carry chat requests here: `chat` (`/chat/completions`) and `responses` "
            "(`/responses`, as OpenAI and Azure OpenAI serve it; not for the litellm kind). A request to "
            "`/v1/responses` goes natively where `responses` is listed and is bridged to chat otherwise; a "
            "chat request goes to `/chat/completions` where `chat` is listed, else to `/responses` (a "
            "Responses-only model). Either way the policies see the same request (docs/api.md)."
        ),
    )

    @model_validator(mode="after")
    def _native_needs_http(self) -> Deployment:
        if self.kind == "litellm" and "responses" in self.supports:
            raise ValueError("supports: the litellm kind speaks chat completions only")
        return self

    def api(self, endpoint: Literal["chat", "embeddings"], route: str) -> Api:
        """The upstream API a request takes here: its own (``route``) if listed, else the other one."""
        if endpoint != "chat":
            return endpoint
        if route == "responses" and "responses" in self.supports:
            return "responses"
        return "chat" if "chat" in self.supports else "responses"


class Alias(Strict):
    deployments: list[str] = Field(
        ..., min_length=1, description="Deployments tried in this order; the first healthy one answers."
    )
    type: Literal["chat", "embeddings"] = Field("chat", description="Which endpoint the public model serves.")
