"""Dry runs of the policy chain for ``gateway policy check | test | explain``.

A simulated request runs through the real bundle, chain and router, but the upstreams are
in-process stand-ins that answer with canned text or fail as the case says; nothing is sent
anywhere. The consent registry is replaced by the case's list of consented purposes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.auth import Principal
from gateway.bundle import Bundle, BundleHolder, mode_of, order_warnings
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.pipeline import Pipeline
from gateway.router import Router
from gateway.services import Embed, Services
from gateway.store.consent import ConsentRef
from gateway.upstreams.base import Endpoint, Upstream, UpstreamFailure, UpstreamResponse
from gateway.yamlsrc import ConfigError, Source, dotted, load, problems_of

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


class HopExpect(Strict):
    redacted: list[str] | None = Field(
        None, description="Types redacted on this hop (by rule or DPA floor), exactly."
    )
    floor: list[str] | None = Field(
        None, description="Of those, the types only the DPA floor redacted, exactly."
    )
    clear: list[str] | None = Field(
        None, description="Types detected and sent to this hop in the clear, exactly."
    )
    never_sees: list[str] = Field([], description="Text that must not appear in what this hop was sent.")


class Expect(Strict):
    deployment: str | None = Field(None, description="The deployment that answers.")
    denied: str | None = Field(None, description="The denial code, when the request is refused.")
    redacted: list[str] | None = Field(None, description="Entity types redacted before sending.")
    decisions: list[dict[str, str]] = Field([], description="{policy, action} pairs that must be recorded.")
    hops: dict[str, HopExpect] = Field({}, description="Per deployment tried: what it was sent.")


class Case(Strict):
    name: str
    request: SimRequest
    consents: list[str] = Field([], description="Purposes the subject has consented to.")
    fail: dict[str, FailReason] | list[str] = Field(
        {}, description="Deployments that fail: a list (5xx) or a map deployment -> reason."
    )
    expect: Expect


class CaseFile(Strict):
    cases: list[Case]


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

    async def send(self, endpoint: Endpoint, body: dict[str, Any], stream: bool) -> UpstreamResponse:  # noqa: ARG002 (Upstream.send)
        self.outcome.sent[self.name] = body
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


# --- policy test -------------------------------------------------------------------------------


@dataclass
class CaseResult:
    where: str
    name: str
    failures: list[str]
    scope: tuple[str, str] = ("", "")
    outcome: Outcome | None = None


def load_cases(path: Path) -> tuple[Source, CaseFile]:
    src = load(path, expand_env=False)
    try:
        return src, CaseFile.model_validate(src.data)
    except ValidationError as exc:
        raise ConfigError(problems_of(exc, src)) from None


def check_case(case: Case, outcome: Outcome) -> list[str]:
    exp = case.expect
    problems = []
    if exp.denied is not None and outcome.denied != exp.denied:
        problems.append(f"expected denial {exp.denied!r}, got {outcome.denied or 'no denial'!r}")
    if exp.denied is None and outcome.denied is not None:
        problems.append(f"unexpected denial {outcome.denied!r} (status {outcome.status})")
    if exp.deployment is not None and outcome.deployment != exp.deployment:
        problems.append(f"expected deployment {exp.deployment!r}, got {outcome.deployment!r}")
    if exp.redacted is not None and sorted(exp.redacted) != outcome.redacted:
        problems.append(f"expected redacted {sorted(exp.redacted)}, got {outcome.redacted}")
    recorded = {(p, a) for p, a, _ in outcome.decisions}
    for d in exp.decisions:
        if (d.get("policy"), d.get("action")) not in recorded:
            problems.append(f"expected decision {d}, recorded {sorted(recorded)}")
    for hop, want in exp.hops.items():
        if hop not in outcome.sent:
            problems.append(f"expected a request to {hop!r}, but it was never sent anything")
            continue
        got = {
            "redacted": outcome.hop_types(hop, "redact", "mask", "hash", "floor_redact"),
            "floor": outcome.hop_types(hop, "floor_redact"),
            "clear": outcome.hop_types(hop, "allow"),
        }
        for what, types in got.items():
            expected = getattr(want, what)
            if expected is not None and sorted(expected) != types:
                problems.append(f"{hop}: expected {what} {sorted(expected)}, got {types}")
        sent = orjson.dumps(outcome.sent[hop]).decode()
        problems += [f"{hop}: was sent {text!r}" for text in want.never_sees if text in sent]
    return problems


async def run_cases(config: Config, bundle: Bundle, path: Path) -> list[CaseResult]:
    src, cases = load_cases(path)
    results = []
    for i, case in enumerate(cases.cases):
        fail = case.fail if isinstance(case.fail, dict) else {name: "upstream_5xx" for name in case.fail}
        outcome = await simulate(config, bundle, case.request, case.consents, dict(fail))
        results.append(
            CaseResult(
                src.where(("cases", i)),
                case.name,
                check_case(case, outcome),
                scope_of(bundle, case.request.tenant, case.request.app),
                outcome,
            )
        )
    return results


# --- policy test --coverage ------------------------------------------------------------------


def scope_of(bundle: Bundle, tenant: str, app: str) -> tuple[str, str]:
    """The bundle layer a request falls under: (tenant, app), (tenant, "") or the defaults ("", "")."""
    spec = bundle.tenants.get(tenant)
    if spec is None:
        return "", ""
    return (tenant, app) if app in spec.get("apps", {}) else (tenant, "")


@dataclass
class CoverageRow:
    scope: str
    policy: str
    actions: list[str]


def coverage(bundle: Bundle, results: list[CaseResult]) -> list[CoverageRow]:
    """Per layer of the bundle and per policy in its chain: the decisions the cases exercised."""
    rows = []
    for tenant, app in bundle.scopes():
        seen: dict[str, set[str]] = {}
        for r in results:
            if r.scope == (tenant, app) and r.outcome is not None:
                for policy, action, _ in r.outcome.decisions:
                    seen.setdefault(policy, set()).add(action)
        names = dict.fromkeys(p.name for p in bundle.chain_for(tenant, app).policies)
        rows += [
            CoverageRow(f"{tenant or '*'}/{app or '*'}", name, sorted(seen.get(name, ()))) for name in names
        ]
    return rows


# --- policy check (lint) ---------------------------------------------------------------------


def lint(config: Config, bundle: Bundle) -> list[str]:
    """Semantic problems: unknown deployments or models, contradictions between sections."""
    problems: list[str] = []
    scopes: list[tuple[str, str, tuple[str, ...]]] = [("", "", ("defaults",))]
    for tenant, spec in bundle.tenants.items():
        scopes.append((tenant, "", ("tenants", tenant)))
        scopes += [(tenant, app, ("tenants", tenant, "apps", app)) for app in spec.get("apps", {})]
    seen: set[str] = set()
    problems += [w.replace(": order: ", ": warning: order: ", 1) for w in order_warnings(bundle)]
    for tenant, app, loc in scopes:
        sections = bundle.sections_for(tenant, app)
        where = f"{bundle.where(loc)}: {dotted(loc)}"
        for problem in _lint_sections(config, sections):
            line = f"{where}: {problem}"
            if problem not in seen:
                seen.add(problem)
                problems.append(line)
    return problems


def _lint_sections(config: Config, sections: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    active = {name: cfg for name, cfg in sections.items() if mode_of(cfg) != "off"}
    residency = active.get("residency")
    allowed = set((residency or {}).get("allow", ["EU"]))
    fallback = active.get("consent_fallback")
    if fallback:
        target = fallback.get("target")
        deployment = config.deployments.get(str(target))
        if deployment is None:
            out.append(f"consent_fallback.target: unknown deployment {target!r}")
        for model in fallback.get("models", []):
            if model not in config.models:
                out.append(f"consent_fallback.models: unknown model {model!r}")
        strict = (residency or {}).get("strict", True)
        if (
            deployment is not None
            and residency
            and strict
            and deployment.jurisdiction not in allowed
            and fallback.get("require_consent", True) is False
        ):
            out.append(
                f"contradiction: consent_fallback.target {target!r} is in {deployment.jurisdiction}, outside "
                f"residency.allow {sorted(allowed)}, with require_consent: false under strict residency"
            )
    if residency:
        for name, alias in config.models.items():
            if not any(config.deployments[d].jurisdiction in allowed for d in alias.deployments):
                out.append(
                    f"warning: residency.allow {sorted(allowed)} leaves model {name!r} with no deployment"
                )
    return out
