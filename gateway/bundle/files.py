"""One bundle file's structure, checked by hand so that every problem is one line with its file and line.

``read(sources)`` merges the files' layers (defaults, tenants, apps), each section claimed by one file,
and returns them with every structural problem found; ``gateway.bundle.parse`` then validates each
policy section against its ``Config``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.bundle.model import CANONICAL_ORDER, MODES
from gateway.layering import Loc, mode_of
from gateway.policies import REGISTRY, load_all
from gateway.yamlsrc import Source, dotted


@dataclass
class Files:
    """The layers the files write, merged, and what is wrong with them."""

    sources: list[Source]
    digest: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    tenants: dict[str, Any] = field(default_factory=dict)
    order: tuple[str, ...] = CANONICAL_ORDER
    problems: list[str] = field(default_factory=list)


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


def read(sources: Iterable[Source]) -> Files:
    """The files' layers merged; every structural problem in ``Files.problems``."""
    load_all()
    digest = hashlib.sha256()
    claims: dict[Loc, Source] = {}
    order: tuple[str, ...] | None = None
    order_at: Source | None = None
    out = Files(list(sources))
    problems, defaults, tenants = out.problems, out.defaults, out.tenants
    srcs = out.sources
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
    out.digest = digest.hexdigest()[:16]
    out.order = order or CANONICAL_ORDER
    return out
