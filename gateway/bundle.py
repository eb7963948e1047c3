"""The compliance team's policy bundle: ``policies/*.yaml`` turned into one chain per app.

    version: 1
    defaults:            # every tenant inherits these sections, in this order
      residency: {...}
    tenants:
      hr:
        residency: {...}   # merged over the default section, key by key at every depth
        apps:
          chatbot:
            pii_redaction: {...}

The chain runs the sections in the canonical order (``CANONICAL_ORDER``: residency,
consent_fallback, rag_context, pii_redaction, token_accounting), whatever layer each comes
from. A bundle that wants another order says so with a top-level ``order:`` list, written in
one file; policies it does not name run after those it names, in canonical order.
Every section may set ``mode: enforce | shadow | off``, ``replace: true`` (tenant and app layers)
and ``reason:``. How layers merge and what counts as loosening: ``gateway.layering``. The
bundle's content hash goes into every decision record and into ``/readyz``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from gateway.chain import Chain
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.layering import Layer, Loc, Loosening, Resolved, body, mode_of, resolve, written_at
from gateway.policies import REGISTRY, load_all
from gateway.policy import Policy
from gateway.yamlsrc import ConfigError, Source, dotted, error_items, load

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = ["MODES", "Bundle", "BundleHolder", "load_bundle", "mode_of", "parse_bundle"]

MODES = ("enforce", "shadow", "off")
# Where each policy reads what the one before it decided: residency narrows the candidates, consent may add
# the DPA hop, retrieved context is injected before PII redaction scans the prompt, and accounting prices
# the final prompt against every candidate hop.
CANONICAL_ORDER = ("residency", "consent_fallback", "rag_context", "pii_redaction", "token_accounting")
log = logging.getLogger("gateway.policy")


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


def _nested_meta(raw: Any, loc: Loc, depth: int = 0) -> list[Loc]:
    """``replace`` keys below the top of a section, where they mean nothing."""
    found: list[Loc] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            if depth and key == "replace":
                found.append((*loc, key))
            found += _nested_meta(value, (*loc, key), depth + 1)
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            found += _nested_meta(value, (*loc, i), depth + 1)
    return found


def _check_sections(src: Source, sections: Any, loc: Loc, problems: list[str]) -> dict[str, Any]:
    if sections is None:
        return {}
    if not isinstance(sections, dict):
        problems.append(f"{src.where(loc)}: {dotted(loc)}: expected a mapping of policy sections")
        return {}
    out: dict[str, Any] = {}
    for name, raw in sections.items():
        here = (*loc, name)
        if name == "replace":
            problems.append(
                f"{src.where(here)}: {dotted(here)}: `replace` belongs at the top of a policy "
                "section, not here"
            )
            continue
        if name not in REGISTRY:
            known = ", ".join(sorted(REGISTRY)) or "none installed"
            problems.append(f"{src.where(here)}: {dotted(here)}: unknown policy {name!r} (known: {known})")
            continue
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            problems.append(f"{src.where(here)}: {dotted(here)}: expected a mapping")
            continue
        mode = mode_of(raw)
        if mode not in MODES:
            problems.append(
                f"{src.where((*here, 'mode'))}: {dotted((*here, 'mode'))}: must be one of {MODES}"
            )
        if "replace" in raw:
            at = (*here, "replace")
            if not isinstance(raw["replace"], bool):
                problems.append(f"{src.where(at)}: {dotted(at)}: must be true or false")
            elif loc == ("defaults",):
                problems.append(
                    f"{src.where(at)}: {dotted(at)}: defaults have nothing to replace; "
                    "`replace` belongs in a tenant or app layer"
                )
        if "reason" in raw and not (isinstance(raw["reason"], str) and raw["reason"].strip()):
            problems.append(
                f"{src.where((*here, 'reason'))}: {dotted((*here, 'reason'))}: must be a non-empty string"
            )
        for at in _nested_meta(raw, here):
            problems.append(
                f"{src.where(at)}: {dotted(at)}: `replace` belongs at the top of a policy section, not here"
            )
        out[name] = raw
    return out


def _check_order(src: Source, raw: Any, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        problems.append(f"{src.where(('order',))}: order: expected a list of policy names")
        return CANONICAL_ORDER
    for i, name in enumerate(raw):
        if name not in REGISTRY:
            problems.append(
                f"{src.where(('order', i))}: order[{i}]: unknown policy {name!r} "
                f"(known: {', '.join(sorted(REGISTRY))})"
            )
        elif name in raw[:i]:
            problems.append(f"{src.where(('order', i))}: order[{i}]: {name!r} is listed twice")
    return tuple(raw)


def order_warnings(bundle: Bundle) -> list[str]:
    """Orders that defeat a promise: retrieved context that PII redaction would not scan."""
    position = bundle.position()
    used = {name for t, a in bundle.scopes() for name in bundle.sections_for(t, a)}
    if {"rag_context", "pii_redaction"} <= used and position.index("rag_context") > position.index(
        "pii_redaction"
    ):
        where = next((s.where(("order",)) for s in bundle.sources if ("order",) in s.lines), "<bundle>")
        return [
            f"{where}: order: rag_context runs after pii_redaction, so retrieved context reaches the model "
            "without PII redaction; put rag_context first"
        ]
    return []


def _claim(
    claims: dict[Loc, Source], src: Source, sections: dict[str, Any], loc: Loc, problems: list[str]
) -> None:
    """A section may be written once per layer; two files writing it would make the result depend on file order."""
    for name in sections:
        here = (*loc, name)
        first = claims.setdefault(here, src)
        if first is not src:
            problems.append(
                f"{src.where(here)}: {dotted(here)}: already defined at {first.where(here)}; "
                "write each section once per layer"
            )


def _validate_merged(bundle: Bundle, problems: list[str]) -> None:
    """Validate every app's merged sections and trials; report each error where the bad value is written."""
    seen: set[tuple[str, Loc, str]] = set()
    for tenant, app in bundle.scopes():
        resolved = bundle.resolve(tenant, app)
        sections = [(n, n, s) for n, s in resolved.sections.items()]
        sections += [(n, f"{n}~trial", s) for n, s in resolved.trials.items()]
        for name, key, raw in sections:
            if key != name and not REGISTRY[name].repeatable:
                at = (*resolved.origin[(key,)], "mode")
                problems.append(
                    f"{bundle.where(at)}: {dotted(at)}: a shadow {name} beside the inherited enforced "
                    "one would run twice (charging twice); add `replace: true` to run only the shadow "
                    "variant"
                )
                continue
            try:
                REGISTRY[name].Config.model_validate(body(raw))
            except ValidationError as exc:
                for loc, msg in error_items(exc):
                    if (name, loc, msg) in seen:
                        continue  # inherited from a layer already reported
                    seen.add((name, loc, msg))
                    full = _written_at(resolved, key, loc)
                    problems.append(f"{bundle.where(full)}: {dotted(full)}: {msg}")
        problems += _unmet_requirements(bundle, resolved, f"{tenant or '*'}/{app or '*'}", seen)


def _unmet_requirements(
    bundle: Bundle, resolved: Resolved, scope: str, seen: set[tuple[str, Loc, str]]
) -> list[str]:
    """An enforced section whose ``requires`` are not enforced in the same chain (reported once per place)."""
    enforced = {name for name, raw in resolved.sections.items() if mode_of(raw) == "enforce"}
    out = []
    for name in sorted(enforced):
        for needed in REGISTRY[name].requires:
            if needed in enforced:
                continue
            if needed in resolved.sections:  # there, but in shadow or off mode: point at the mode
                at = _written_at(resolved, needed, ("mode",))
                state = f"in {mode_of(resolved.sections[needed])} mode"
            else:
                at, state = resolved.origin[(name,)], "not in the chain"
            if (needed, at, name) not in seen:
                seen.add((needed, at, name))
                out.append(
                    f"{bundle.where(at)}: {dotted(at)}: {name} requires {needed} enforced for the same "
                    f"apps ({scope}), but it is {state}"
                )
    return out


def _written_at(resolved: Resolved, key: str, loc: Loc) -> Loc:
    """The bundle location of the most specific layer that wrote ``loc`` (or the nearest thing above it)."""
    at = written_at(resolved.origin, (key, *loc))
    return () if at is None else (*at[0], *loc[at[1] - 1 :])


def parse_bundle(sources: Iterable[Source]) -> Bundle:
    """Merge and validate policy files; raise ConfigError listing every problem found."""
    load_all()
    problems: list[str] = []
    digest = hashlib.sha256()
    defaults: dict[str, Any] = {}
    tenants: dict[str, Any] = {}
    claims: dict[Loc, Source] = {}
    order: tuple[str, ...] | None = None
    order_at: Source | None = None
    srcs = list(sources)
    for src in srcs:
        digest.update(src.path.encode() + b"\0" + repr(src.data).encode())
        data = src.data
        if not isinstance(data, dict):
            problems.append(f"{src.path}:1: <root>: expected a mapping")
            continue
        for key in data:
            if key not in ("version", "order", "defaults", "tenants"):
                problems.append(
                    f"{src.where((key,))}: {key}: unknown key (expected version, order, defaults, tenants)"
                )
        if "order" in data:
            if order_at is not None:
                problems.append(
                    f"{src.where(('order',))}: order: already set at {order_at.where(('order',))}; "
                    "write it in one file"
                )
            order_at = src
            order = _check_order(src, data["order"], problems)
        if data.get("version", 1) != 1:
            problems.append(
                f"{src.where(('version',))}: version: unsupported version {data.get('version')!r}"
            )
        sections = _check_sections(src, data.get("defaults"), ("defaults",), problems)
        _claim(claims, src, sections, ("defaults",), problems)
        defaults.update(sections)
        raw_tenants = data.get("tenants") or {}
        if not isinstance(raw_tenants, dict):
            problems.append(f"{src.where(('tenants',))}: tenants: expected a mapping of tenants")
            continue
        for tenant, spec in raw_tenants.items():
            loc: Loc = ("tenants", tenant)
            spec = spec or {}
            if not isinstance(spec, dict):
                problems.append(f"{src.where(loc)}: {dotted(loc)}: expected a mapping")
                continue
            entry = tenants.setdefault(tenant, {"policies": {}, "apps": {}})
            raw_apps = spec.get("apps") or {}
            if not isinstance(raw_apps, dict):
                problems.append(
                    f"{src.where((*loc, 'apps'))}: {dotted((*loc, 'apps'))}: expected a mapping of apps"
                )
                raw_apps = {}
            for app, app_spec in raw_apps.items():
                app_loc = (*loc, "apps", app)
                sections = _check_sections(src, app_spec, app_loc, problems)
                _claim(claims, src, sections, app_loc, problems)
                entry["apps"].setdefault(app, {}).update(sections)
            sections = _check_sections(src, {k: v for k, v in spec.items() if k != "apps"}, loc, problems)
            _claim(claims, src, sections, loc, problems)
            entry["policies"].update(sections)
    bundle = Bundle(
        hash=digest.hexdigest()[:16],
        defaults=defaults,
        tenants=tenants,
        sources=srcs,
        order=order or CANONICAL_ORDER,
    )
    if not problems:
        _validate_merged(bundle, problems)
    if problems:
        raise ConfigError(problems)
    return bundle


def policy_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.glob("*.yaml") if not f.name.endswith("_test.yaml")))
        elif p.exists():
            files.append(p)
    return files


def load_bundle(paths: Iterable[str | Path]) -> Bundle:
    """Load a bundle from files or directories (``*_test.yaml`` files are test cases, not policy)."""
    return parse_bundle(load(f, expand_env=False) for f in policy_files(paths))


async def watch(holder: BundleHolder, directory: Path, stop: asyncio.Event) -> None:
    """Reload the bundle when a file under ``directory`` changes; keep the last good one on error."""
    from watchfiles import awatch

    from gateway import metrics

    async for _changes in awatch(directory, stop_event=stop, debounce=200, step=50):
        try:
            bundle = await asyncio.to_thread(load_bundle, [directory])
        except ConfigError as exc:
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error(
                "policy reload rejected; keeping bundle %s",
                holder.current.hash,
                extra={"problems": exc.problems},
            )
            continue
        except Exception as exc:  # a failed reload keeps the last good bundle  # noqa: BLE001
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error(
                "policy reload failed; keeping bundle %s",
                holder.current.hash,
                extra={"exc_type": type(exc).__name__},
            )
            continue
        if bundle.hash != holder.current.hash:
            holder.swap(bundle)
            metrics.POLICY_RELOADS.inc()
            log.info("policy bundle reloaded", extra={"policy_hash": bundle.hash})


def load_holder(config: Config) -> BundleHolder:
    directory = Path(config.server.policies_dir)
    if not directory.exists():
        return BundleHolder(Bundle.empty())
    return BundleHolder(load_bundle([directory]))
