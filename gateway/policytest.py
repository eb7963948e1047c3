"""Dry runs of the policy chain for ``gateway policy test | explain`` (cases: ``gateway.policycases``).

A simulated request runs through the real bundle, chain and router, but the upstreams are
in-process stand-ins that answer with canned text or fail as the case says; nothing is sent
anywhere. The consent registry is replaced by the case's list of consented purposes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.bundle import Bundle, BundleHolder
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.pipeline import Pipeline
from gateway.router import Router
from gateway.services import Embed, Services
from gateway.store.consent import ConsentRef
from gateway.upstreams import native
from gateway.upstreams.base import Api, Upstream, UpstreamFailure, UpstreamResponse

FailReason = Literal["connect_error", "timeout", "upstream_5xx", "rate_limited", "context_length"]
_FAILURES: dict[str, tuple[int, str]] = {
    "connect_error": (502, "unreachable"),
    "timeout": (504, "timed out"),
    "upstream_5xx": (502, "failed"),
    "rate_limited": (429, "rate limited"),
    "context_length": (400, "context length exceeded"),
}
SIMULATED_REPLY = "Simulated reply."


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimRequest(Strict):
    tenant: str = Field(..., description="Tenant of the calling key.")
    app: str = Field(..., description="App of the calling key.")
    model: str = Field(..., description="Public model name.")
    message: str = Field("Hello", description="The user message.")
    subject: str | None = Field(None, description="Data subject id (the OpenAI `user` field).")
    data_class: str | None = Field(None, description="The X-Data-Class header.")
    endpoint: Literal["chat", "embeddings"] = Field("chat", description="Which endpoint is called.")
    max_tokens: int | None = Field(None, ge=1, description="The request's `max_tokens`.")


@dataclass
class Outcome:
    decisions: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)
    deployment: str | None = None
    denied: str | None = None
    status: int = 0
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    reply: str | None = None

    def hop_types(self, hop: str, *actions: str) -> list[str]:
        """Entity types the PII policy handled with one of ``actions`` on one hop."""
        types: set[str] = set()
        for policy, action, facts in self.decisions:
            if policy == "pii_redaction" and action in actions and facts.get("hop") == hop:
                types.update(facts.get("entities") or {})
        return sorted(types)

    @property
    def redacted(self) -> list[str]:
        types: set[str] = set()
        for policy, action, facts in self.decisions:
            if policy == "pii_redaction" and action in ("redact", "mask", "hash", "floor_redact"):
                entities = facts.get("entities") or {}
                types.update(entities if isinstance(entities, dict | list) else [])
        return sorted(types)


class _Canned(UpstreamResponse):
    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.content_type = "application/json"
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        pass

    async def release(self) -> None:
        pass


class SimUpstream(Upstream):
    """Answers in-process; records what it would have been sent."""

    def __init__(self, name: str, deployment: Any, outcome: Outcome, fail: str | None) -> None:
        super().__init__(name, deployment)
        self.outcome = outcome
        self.fail = fail

    async def send(self, endpoint: Api, body: dict[str, Any], stream: bool) -> UpstreamResponse:  # noqa: ARG002 (Upstream.send)
        # What would go on the wire: a native hop's Responses request (or the field it cannot carry).
        wire = native.request(body, self.deployment.extra_fields) if endpoint == "responses" else body
        self.outcome.sent[self.name] = wire
        if self.fail:
            status, what = _FAILURES[self.fail]
            raise UpstreamFailure(self.fail, status, message=f"Simulated: upstream {what}.")
        if endpoint == "embeddings":
            return _Canned(orjson.dumps({"object": "list", "data": [{"index": 0, "embedding": [0.0]}]}))
        return _Canned(
            orjson.dumps(
                {
                    "id": "sim",
                    "object": "chat.completion",
                    "model": self.deployment.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": SIMULATED_REPLY},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        )


class _Consents:
    def __init__(self, purposes: list[str]) -> None:
        self.purposes = set(purposes)

    async def active(self, tenant: str, subject: str, purpose: str) -> ConsentRef | None:  # noqa: ARG002 (ConsentRegistry.active)
        return ConsentRef(f"sim-{purpose}", purpose, None) if purpose in self.purposes else None


def _pseudonym(subject: str) -> str:
    return hmac.new(b"policy-test", subject.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Registry:
    """A real consent registry for dry runs (``policy explain``), with the gateway's own pseudonyms."""

    consents: Any  # gateway.store.consent.ConsentRegistry
    pseudonym: Callable[[str], str]


async def simulate(
    config: Config,
    bundle: Bundle,
    request: SimRequest,
    consents: Sequence[str] = (),
    fail: dict[str, str] | None = None,
    *,
    registry: Registry | None = None,
    embed: Embed | None = None,
) -> Outcome:
    """Run one request through the bundle's chain and router against simulated upstreams.

    Consent comes from ``consents`` (the purposes the subject has granted) unless ``registry`` is given.
    RAG retrieval reads the configured vector store when ``embed`` (the real embeddings path) is given."""
    outcome = Outcome()
    fail = fail or {}
    pseudonym = registry.pseudonym if registry is not None else _pseudonym
    services = Services(
        config=config,
        pseudonym=pseudonym,
        embed=embed,
        consents=registry.consents if registry is not None else _Consents(list(consents)),
    )
    router = Router({n: SimUpstream(n, d, outcome, fail.get(n)) for n, d in config.deployments.items()})
    pipeline = Pipeline(config, BundleHolder(bundle.with_services(services)), router, pseudonym)
    principal = Principal(
        "sim", request.tenant, request.app, frozenset({"*"}), frozenset({"chat", "embeddings"})
    )
    body: dict[str, Any] = (
        {"model": request.model, "messages": [{"role": "user", "content": request.message}]}
        if request.endpoint == "chat"
        else {"model": request.model, "input": request.message}
    )
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    try:
        ctx = pipeline.context(
            principal, request.endpoint, body, subject=request.subject, data_class=request.data_class
        )
    except GatewayError as exc:
        outcome.denied, outcome.status = exc.code, exc.status
        return outcome
    chain = pipeline.start(ctx)
    try:
        raw = await pipeline.answer(ctx, chain, await pipeline.send(ctx, chain, body))
        outcome.deployment, outcome.status = ctx.target.name if ctx.target else None, 200
        if request.endpoint == "chat":
            outcome.reply = orjson.loads(raw)["choices"][0]["message"]["content"]
    except GatewayError as exc:
        outcome.denied, outcome.status = exc.code, exc.status
    ctx.status = outcome.status
    await pipeline.finish(ctx, chain)
    outcome.decisions = [(d.policy, d.action, d.facts) for d in ctx.decisions]
    outcome.attempts = list(ctx.attempts)
    return outcome
