"""The compliance team's policy bundle: ``policies/*.yaml`` turned into one chain per app.

    version: 1
    defaults:            # every tenant inherits these sections, in this order
      residency: {...}
    tenants:
      hr:
        residency: {...}   # overrides the default section key by key
        apps:
          chatbot:
            pii_redaction: {...}

The chain runs the sections in the order they first appear: defaults, then tenant, then app.
Every section may set ``mode: enforce | shadow | off``. The bundle's content hash goes into
every decision record and into ``/readyz``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.chain import Chain
from gateway.config import Config
from gateway.policies import REGISTRY, load_all
from gateway.policy import Policy
from gateway.services import Services
from gateway.yamlsrc import ConfigError, Source, dotted, load

MODES = ("enforce", "shadow", "off")


def mode_of(section: dict[str, Any]) -> Any:
    """A section's mode; YAML reads a bare `off` as false, which means `off` here."""
    mode = section.get("mode", "enforce")
    return "off" if mode is False else mode
log = logging.getLogger("gateway.policy")


@dataclass
class Bundle:
    hash: str
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: Services | None = None  # set by the gateway before the first request
    sources: list[Source] = field(default_factory=list)
    _chains: dict[tuple[str, str], Chain] = field(default_factory=dict)

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``file:line`` of the most specific source that defines ``loc``."""
        for src in reversed(self.sources):
            if loc in src.lines:
                return src.where(loc)
        return self.sources[0].where(loc) if self.sources else "<bundle>"

    @classmethod
    def empty(cls) -> Bundle:
        return cls(hash=hashlib.sha256(b"").hexdigest()[:16])

    def sections_for(self, tenant: str, app: str) -> dict[str, dict[str, Any]]:
        """The merged policy sections for one app, in chain order."""
        merged = {name: dict(cfg) for name, cfg in self.defaults.items()}
        t = self.tenants.get(tenant, {})
        layers = [t.get("policies", {}), t.get("apps", {}).get(app, {})]
        for layer in layers:
            for name, cfg in layer.items():
                merged[name] = {**merged.get(name, {}), **cfg}
        return merged

    def chain_for(self, tenant: str, app: str) -> Chain:
        chain = self._chains.get((tenant, app))
        if chain is None:
            chain = Chain(_instantiate(self.sections_for(tenant, app), self.services))
            self._chains[(tenant, app)] = chain
        return chain


def _instantiate(sections: dict[str, dict[str, Any]], services: Services | None) -> list[Policy]:
    policies = []
    for name, raw in sections.items():
        cfg = {k: v for k, v in raw.items() if k != "mode"}
        mode = mode_of(raw)
        if mode == "off":
            continue
        cls = REGISTRY[name]
        policies.append(cls(cls.Config.model_validate(cfg), mode=mode, services=services))
    return policies


class BundleHolder:
    """Holds the current bundle; a reload swaps it atomically (one attribute assignment)."""

    def __init__(self, bundle: Bundle, services: Services | None = None) -> None:
        self.services = services
        bundle.services = services
        self.current = bundle

    def bind(self, services: Services) -> None:
        self.services = services
        self.current.services = services
        self.current._chains.clear()

    def swap(self, bundle: Bundle) -> None:
        bundle.services = self.services
        self.current = bundle


def _check_sections(src: Source, sections: Any, loc: tuple[str | int, ...], problems: list[str]) -> dict[str, Any]:
    if sections is None:
        return {}
    if not isinstance(sections, dict):
        problems.append(f"{src.where(loc)}: {dotted(loc)}: expected a mapping of policy sections")
        return {}
    out: dict[str, Any] = {}
    for name, raw in sections.items():
        here = (*loc, name)
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
            problems.append(f"{src.where((*here, 'mode'))}: {dotted((*here, 'mode'))}: must be one of {MODES}")
        out[name] = raw
    return out


def _validate_merged(srcs: list[Source], bundle: Bundle, problems: list[str]) -> None:
    """Validate every app's merged sections; report each error where the bad value is written."""
    scopes: list[tuple[str, str]] = [("", "")]
    for tenant, spec in bundle.tenants.items():
        scopes += [(tenant, ""), *((tenant, app) for app in spec.get("apps", {}))]
    for tenant, app in scopes:
        merged = bundle.defaults if not tenant else bundle.sections_for(tenant, app)
        layers: list[tuple[str | int, ...]] = [("defaults",)]
        if tenant:
            layers.insert(0, ("tenants", tenant))
        if app:
            layers.insert(0, ("tenants", tenant, "apps", app))
        for name, raw in merged.items():
            try:
                REGISTRY[name].Config.model_validate({k: v for k, v in raw.items() if k != "mode"})
            except ValidationError as exc:
                for err in exc.errors():
                    loc = tuple(err["loc"])
                    # The most specific layer that wrote the bad value, else (a missing key) the
                    # most specific layer that has the section at all.
                    layer = next((lay for lay in layers if _defined(srcs, (*lay, name, *loc[:1]))), None)
                    layer = layer or next((lay for lay in layers if _defined(srcs, (*lay, name))), layers[-1])
                    full = (*layer, name, *loc)
                    msg = err["msg"].removeprefix("Value error, ")
                    msg = "unknown key" if err["type"] == "extra_forbidden" else msg
                    line = f"{_where(srcs, full)}: {dotted(full)}: {msg}"
                    if line not in problems:
                        problems.append(line)


def _defined(srcs: list[Source], loc: tuple[str | int, ...]) -> bool:
    return any(loc in src.lines for src in srcs)


def _where(srcs: list[Source], loc: tuple[str | int, ...]) -> str:
    """``file:line`` of the longest prefix of ``loc`` that some source defines."""
    for i in range(len(loc), 0, -1):
        for src in reversed(srcs):
            if loc[:i] in src.lines:
                return src.where(loc[:i])
    return srcs[0].where(()) if srcs else "<bundle>"


def parse_bundle(sources: Iterable[Source]) -> Bundle:
    """Merge and validate policy files; raise ConfigError listing every problem found."""
    load_all()
    problems: list[str] = []
    digest = hashlib.sha256()
    defaults: dict[str, Any] = {}
    tenants: dict[str, Any] = {}
    srcs = list(sources)
    for src in srcs:
        digest.update(src.path.encode() + b"\0" + repr(src.data).encode())
        data = src.data
        if not isinstance(data, dict):
            problems.append(f"{src.path}:1: <root>: expected a mapping")
            continue
        for key in data:
            if key not in ("version", "defaults", "tenants"):
                problems.append(f"{src.where((key,))}: {key}: unknown key (expected version, defaults, tenants)")
        if data.get("version", 1) != 1:
            problems.append(f"{src.where(('version',))}: version: unsupported version {data.get('version')!r}")
        defaults.update(_check_sections(src, data.get("defaults"), ("defaults",), problems))
        for tenant, spec in (data.get("tenants") or {}).items():
            loc: tuple[str | int, ...] = ("tenants", tenant)
            spec = spec or {}
            if not isinstance(spec, dict):
                problems.append(f"{src.where(loc)}: {dotted(loc)}: expected a mapping")
                continue
            apps = {}
            for app, app_spec in (spec.get("apps") or {}).items():
                apps[app] = _check_sections(src, app_spec, (*loc, "apps", app), problems)
            policies = _check_sections(src, {k: v for k, v in spec.items() if k != "apps"}, loc, problems)
            tenants[tenant] = {"policies": policies, "apps": apps}
    if not problems:
        _validate_merged(srcs, Bundle("", defaults, tenants), problems)
    if problems:
        raise ConfigError(problems)
    return Bundle(hash=digest.hexdigest()[:16], defaults=defaults, tenants=tenants, sources=srcs)


def policy_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.glob("*.yaml") if not f.name.endswith("_test.yaml")))
        elif p.exists():
            files.append(p)
    return files


def load_bundle(paths: Iterable[str | Path], config: Config | None = None) -> Bundle:
    """Load a bundle from files or directories (``*_test.yaml`` files are test cases, not policy)."""
    return parse_bundle(load(f, expand_env=False) for f in policy_files(paths))


async def watch(holder: BundleHolder, directory: Path, config: Config, stop: asyncio.Event) -> None:
    """Reload the bundle when a file under ``directory`` changes; keep the last good one on error."""
    from watchfiles import awatch

    from gateway import metrics

    async for _changes in awatch(directory, stop_event=stop, debounce=200, step=50):
        try:
            bundle = await asyncio.to_thread(load_bundle, [directory], config)
        except ConfigError as exc:
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error("policy reload rejected; keeping bundle %s", holder.current.hash,
                      extra={"problems": exc.problems})
            continue
        except Exception as exc:
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error("policy reload failed; keeping bundle %s", holder.current.hash,
                      extra={"exc_type": type(exc).__name__})
            continue
        if bundle.hash != holder.current.hash:
            holder.swap(bundle)
            metrics.POLICY_RELOADS.inc()
            log.info("policy bundle reloaded", extra={"policy_hash": bundle.hash})


def load_holder(config: Config) -> BundleHolder:
    directory = Path(config.server.policies_dir)
    if not directory.exists():
        return BundleHolder(Bundle.empty())
    return BundleHolder(load_bundle([directory], config))
