"""The bundle: its merged layers, each app's resolved policy and chain, and the holder a reload swaps."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from gateway.chain import Chain
from gateway.errors import GatewayError
from gateway.layering import Layer, Loc, Loosening, Resolved, body, mode_of, resolve
from gateway.policies import REGISTRY
from gateway.policy import Policy
from gateway.yamlsrc import Source

if TYPE_CHECKING:
    from gateway.services import Services

MODES = ("enforce", "shadow", "off")
# Where each policy reads what the one before it decided: residency narrows the candidates, consent may add
# the DPA hop, retrieved context is injected before PII redaction scans the prompt, and accounting prices
# the final prompt against every candidate hop.
CANONICAL_ORDER = ("residency", "consent_fallback", "rag_context", "pii_redaction", "token_accounting")


def _normalize(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    return REGISTRY[name].normalize(raw)


def _validate(name: str, raw: dict[str, Any]) -> BaseModel:
    return REGISTRY[name].Config.model_validate(raw)


def _loosened(name: str, before: BaseModel | None, after: BaseModel) -> list[tuple[Loc, str]]:
    return REGISTRY[name].loosened(before, after)


@dataclass
class Bundle:
    hash: str
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: Services | None = None  # set by the gateway before the first request
    sources: list[Source] = field(default_factory=list)
    _chains: dict[tuple[str, str], Chain] = field(default_factory=dict)
    _resolved: dict[tuple[str, str], Resolved] = field(default_factory=dict)
    _headers: dict[str, frozenset[str]] | None = None
    order: tuple[str, ...] = CANONICAL_ORDER

    def where(self, loc: Loc) -> str:
        """``file:line`` of the most specific source that defines ``loc`` (or its longest defined prefix)."""
        for i in range(len(loc), 0, -1):
            for src in reversed(self.sources):
                if loc[:i] in src.lines:
                    return src.where(loc[:i])
        return self.sources[0].where(loc) if self.sources else "<bundle>"

    @classmethod
    def empty(cls) -> Bundle:
        return cls(hash=hashlib.sha256(b"").hexdigest()[:16])

    def scopes(self) -> list[tuple[str, str]]:
        """Every layer combination the bundle names: ("", "") defaults, (t, "") tenant, (t, a) app."""
        out: list[tuple[str, str]] = [("", "")]
        for tenant, spec in self.tenants.items():
            out += [(tenant, ""), *((tenant, app) for app in spec.get("apps", {}))]
        return out

    def layers(self, tenant: str, app: str) -> list[Layer]:
        out = [Layer(("defaults",), self.defaults)]
        spec = self.tenants.get(tenant)
        if spec is not None:
            out.append(Layer(("tenants", tenant), spec.get("policies", {})))
            if app in spec.get("apps", {}):
                out.append(Layer(("tenants", tenant, "apps", app), spec["apps"][app]))
        return out

    def resolve(self, tenant: str, app: str) -> Resolved:
        """The app's effective policy: merged sections, shadow trials, origins and loosenings."""
        key = (tenant, app)
        resolved = self._resolved.get(key)
        if resolved is None:
            scope = f"{tenant or '*'}/{app or '*'}"
            resolved = resolve(self.layers(tenant, app), scope, _normalize, _validate, _loosened, self.where)
            rank = {name: i for i, name in enumerate(self.position())}
            resolved.sections = dict(sorted(resolved.sections.items(), key=lambda item: rank[item[0]]))
            self._resolved[key] = resolved
        return resolved

    def position(self) -> list[str]:
        """Every installed policy in chain order: the bundle's ``order:``, then the rest in canonical order."""
        rest = [n for n in CANONICAL_ORDER if n not in self.order]
        rest += sorted(n for n in REGISTRY if n not in self.order and n not in CANONICAL_ORDER)
        return [*self.order, *rest]

    def header_values(self) -> dict[str, frozenset[str]]:
        """Per request header some policy reads, every value the bundle names for it (any tenant or app)."""
        if self._headers is None:
            found: dict[str, set[str]] = {}
            for tenant, app in self.scopes():
                resolved = self.resolve(tenant, app)
                for name, section in [*resolved.sections.items(), *resolved.trials.items()]:
                    if mode_of(section) == "off":
                        continue
                    config = REGISTRY[name].Config.model_validate(body(section))
                    for header, values in REGISTRY[name].header_values(config).items():
                        found.setdefault(header, set()).update(values)
            self._headers = {h: frozenset(v) for h, v in found.items()}
        return self._headers

    def check_header(self, header: str, value: str | None) -> None:
        """Raise a 400 when a declared header carries a value no policy names (it would reach records)."""
        allowed = self.header_values().get(header)
        if value is not None and allowed is not None and value not in allowed:
            raise GatewayError(
                400,
                f"invalid_request.{header.removeprefix('x-').replace('-', '_')}",
                f"{header.title()} must be one of the configured values: {', '.join(sorted(allowed))}.",
            )

    def loosenings(self) -> list[Loosening]:
        """Every loosening of an inherited value, once each (a tenant's shows under each of its apps too)."""
        seen: dict[tuple[str, str, Loc, str], Loosening] = {}
        for tenant, app in self.scopes():
            for item in self.resolve(tenant, app).loosenings:
                seen.setdefault((item.override_at, item.section, item.path, item.message), item)
        return list(seen.values())

    def sections_for(self, tenant: str, app: str) -> dict[str, dict[str, Any]]:
        """The merged (enforced or off) policy sections for one app, in chain order."""
        return self.resolve(tenant, app).sections

    def chain_for(self, tenant: str, app: str) -> Chain:
        chain = self._chains.get((tenant, app))
        if chain is None:
            chain = _instantiate(self.resolve(tenant, app), self.services)
            self._chains[(tenant, app)] = chain
        return chain

    def with_services(self, services: Services) -> Bundle:
        """The same bundle bound to other services (dry runs); resolutions are shared, chains are not."""
        return Bundle(
            self.hash,
            self.defaults,
            self.tenants,
            services,
            self.sources,
            {},
            self._resolved,
            order=self.order,
        )


def _instantiate(resolved: Resolved, services: Services | None) -> Chain:
    """Policies in chain order; a shadow trial runs right after the enforced section it varies."""
    policies: list[Policy[Any]] = []
    shadow: list[Policy[Any]] = []
    for name, raw in resolved.sections.items():
        variants = [raw, *([resolved.trials[name]] if name in resolved.trials else [])]
        for section in variants:
            mode = mode_of(section)
            if mode == "off":
                continue
            cls = REGISTRY[name]
            policies.append(cls(cls.Config.model_validate(body(section)), services=services))
            if mode == "shadow":
                shadow.append(policies[-1])
    return Chain(policies, shadow)


class BundleHolder:
    """Holds the current bundle; a reload swaps it atomically (one attribute assignment)."""

    def __init__(self, bundle: Bundle) -> None:
        self.services: Services | None = None  # set by bind(), once the gateway's services exist
        self.current = bundle

    def bind(self, services: Services) -> None:
        self.services = services
        self.current.services = services
        self.current._chains.clear()

    def swap(self, bundle: Bundle) -> None:
        bundle.services = self.services
        self.current = bundle
