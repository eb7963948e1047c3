"""The plugin contract every policy implements.

A policy is one class with a ``name`` (its key in the policy YAML) and a ``Config`` model,
and names that model as its type parameter so ``self.config`` is typed::

    class Residency(Policy["Residency.Config"]):
        name = "residency"
        class Config(BaseModel): ...

One instance serves every request of an app's chain, so it holds only its config and shared
resources. ``start(ctx)`` gives the ``Run`` for one request: the object whose hooks the chain
calls and which holds that request's state. A stateless policy is its own run (the default);
a policy with per-request state returns a small ``Run`` of its own. A run overrides only the
hooks it needs:

    on_request(ctx, request)            -> request   once, before routing; may narrow ctx.candidates
    on_attempt(ctx, target, request)    -> request   once per deployment tried (per-hop changes)
    on_response(ctx, response)          -> response  non-streamed answer
    on_stream(ctx, events)              -> events    async iterator of parsed SSE events
    on_complete(ctx)                    -> None      after the last byte; accounting and audit

Raising ``PolicyDenied`` rejects the request: before the first byte it becomes an OpenAI error,
mid-stream a final SSE error event. Policies never talk to each other except through typed
fields on ``Context``. Shadow mode is the chain's business (``gateway.chain``): a policy is
written once, as if it enforced.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from gateway.auth import Principal
from gateway.config import Config as OperatorConfig
from gateway.config import Deployment
from gateway.errors import PolicyDenied
from gateway.sse import Event

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = ["Context", "Decision", "Policy", "PolicyDenied", "Run", "Target"]

_ids = random.Random()  # seeded from os.urandom; reseeded in forked workers
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """128 random bits as 32 hex digits, like ``uuid4().hex``, but without a syscall per request:
    os.urandom releases the GIL, and a busy worker then waits for the writer thread to give it back.
    Request ids are unique, not secret."""
    return f"{_ids.getrandbits(128):032x}"


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment the request may be sent to."""

    name: str
    deployment: Deployment

    @property
    def jurisdiction(self) -> str:
        return self.deployment.jurisdiction


@dataclass(frozen=True, slots=True)
class Decision:
    policy: str
    action: str
    facts: dict[str, Any]


@dataclass(slots=True)
class Context:
    """Everything known about one request; policies read and narrow typed fields only."""

    principal: Principal
    endpoint: Literal["chat", "embeddings"]  # the body's shape, as the policies and the upstream see it
    model: str
    candidates: list[Target]
    stream: bool = False
    subject: str | None = None  # keyed pseudonym, never the raw id
    # What the ledger and the audit trail store for the subject: a link under a per-subject key that
    # erasure deletes (gateway.store.subject_keys). None when the request names no subject.
    subject_link: str | None = None
    data_class: str | None = None  # from the X-Data-Class header; residency rules may depend on it
    # The request's `gateway_rag` extension (read by rag_context); removed from the body before routing.
    rag_hints: Any = None
    # Set by the residency policy; later policies (RAG, PII) read it. None: unrestricted.
    allowed_jurisdictions: frozenset[str] | None = None
    # Set by consent_fallback: deployment name -> consent reference, for hops allowed only by consent.
    consents: dict[str, str] = field(default_factory=dict)
    # Hops a policy could have added but did not (a DPA fallback without consent), each as the refusal
    # the client gets instead of an upstream error when every candidate that was allowed fails.
    withheld: list[PolicyDenied] = field(default_factory=list)
    bundle_hash: str = ""
    # The API the client called, as recorded (ledger, audit, metrics): "responses" is bridged to "chat".
    route: str = ""
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    decisions: list[Decision] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (deployment, outcome)
    target: Target | None = None  # the deployment that answered
    fallback_reason: str | None = None
    status: int = 0
    usage: dict[str, Any] | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    first_byte_at: float | None = None
    upstream_s: float = 0.0

    def __post_init__(self) -> None:
        self.route = self.route or self.endpoint

    def record(self, policy: str, action: str, **facts: Any) -> None:
        """Record a decision. Facts hold counts and identifiers, never prompt text or PII."""
        self.decisions.append(Decision(policy, action, facts))


C = TypeVar("C", bound=BaseModel)


class Run:
    """One request's pass through one policy: the hooks the chain calls, and any state they share.

    Every hook passes through; see the module docstring. The chain makes one run per policy per
    request (``Policy.start``) and drops it when the request is recorded.
    """

    __slots__ = ()

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        return request

    async def on_attempt(self, ctx: Context, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        return request

    async def on_response(self, ctx: Context, response: dict[str, Any]) -> dict[str, Any]:
        return response

    def on_stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        return events

    async def on_complete(self, ctx: Context) -> None:
        return None

    def reads_response(self, ctx: Context) -> bool:
        """Whether this request's response must be parsed for this run.

        Default: the run overrides ``on_response`` or ``on_stream``. When no run reads the
        response, the gateway relays upstream bytes untouched (the fast path).
        """
        cls = type(self)
        return cls.on_response is not Run.on_response or cls.on_stream is not Run.on_stream


class Policy(Run, Generic[C]):
    """A configured policy; see the module docstring.

    Generic over its config model, so ``self.config`` is typed: ``class Residency(Policy["Residency.Config"])``.
    """

    name: ClassVar[str] = "policy"
    # Whether a second instance (a layer's trial variant) may run beside the enforced section: False when
    # running twice would have effects twice, e.g. two ledger rows for one request.
    repeatable: ClassVar[bool] = True
    # Policies that must be enforced in every chain that enforces this one; a bundle that breaks this
    # does not load (the fallback hop's PII floor, for one, is pii_redaction's work).
    requires: ClassVar[tuple[str, ...]] = ()

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    @classmethod
    def normalize(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The section's YAML with shorthands expanded, so that layers merge key by key."""
        return raw

    @classmethod
    def header_values(cls, config: Any) -> dict[str, frozenset[str]]:
        """Request headers this config reads, each with the values it names (lower-case header names).
        A header some policy declares must carry one of the values any policy in the bundle names."""
        return {}

    @classmethod
    def loosened(cls, before: Any, after: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """What the validated config ``after`` weakens compared with the inherited ``before`` (None when
        the layer adds the section): ``(path inside the section, message)`` pairs; empty when nothing."""
        return []

    @classmethod
    def strictly_allows(cls, config: Any) -> frozenset[str] | None:
        """The jurisdictions this config restricts every hop to under strict rules (residency's `allow`
        with `strict: true`); None when it restricts nothing. `policy check` compares other sections with it."""
        return None

    @classmethod
    def check(cls, operator: OperatorConfig, config: Any, allowed: frozenset[str] | None) -> list[str]:
        """`gateway policy check`'s findings for this section: ``"key: message"`` lines (``"warning: ..."``
        for advice), against the operator config and ``allowed`` (what the app's other sections restrict
        every hop to, see ``strictly_allows``). Empty when nothing is wrong."""
        return []

    def __init__(self, config: C | None = None, services: Services | None = None) -> None:
        self.config: C = config if config is not None else cast(C, self.Config())
        self.services = services

    def start(self, ctx: Context) -> Run:
        """The run for one request. It must not change ``ctx``: the chain may start runs it never calls."""
        return self
