"""``gateway policy show``: one app's effective policy, every value with the file:line it came from."""

from __future__ import annotations

from typing import Any

from gateway.bundle import Bundle
from gateway.layering import Loc, body, leaves, mode_of
from gateway.policies import REGISTRY
from gateway.yamlsrc import dotted

BUILT_IN = "built-in default"


class UnknownScope(ValueError):
    """The tenant or app is not in the bundle; the message names where the bundle lists them."""


def _check_scope(bundle: Bundle, tenant: str, app: str) -> None:
    if app and not tenant:
        raise UnknownScope("--app needs --tenant")
    if tenant and tenant not in bundle.tenants:
        known = ", ".join(sorted(bundle.tenants)) or "none"
        raise UnknownScope(
            f"{bundle.where(('tenants',))}: tenants: no tenant {tenant!r} (listed: {known}); "
            "unlisted tenants get the defaults, shown without --tenant"
        )
    if app and app not in bundle.tenants[tenant].get("apps", {}):
        known = ", ".join(sorted(bundle.tenants[tenant].get("apps", {}))) or "none"
        raise UnknownScope(
            f"{bundle.where(('tenants', tenant))}: tenants.{tenant}: no app {app!r} (listed: "
            f"{known}); unlisted apps get the tenant layer, shown without --app"
        )


def effective(bundle: Bundle, tenant: str, app: str, *, diff_defaults: bool = False) -> dict[str, Any]:
    """The effective policy as a JSON-ready dict: sections in chain order, values with their origin.

    Raises UnknownScope for a tenant or app the bundle does not list."""
    _check_scope(bundle, tenant, app)
    resolved = bundle.resolve(tenant, app)
    variants = [(name, name, raw) for name, raw in resolved.sections.items()]
    variants += [(name, f"{name}~trial", raw) for name, raw in resolved.trials.items()]
    sections = []
    for name, key, raw in variants:
        config = REGISTRY[name].Config.model_validate(body(raw))
        dumped = {"mode": mode_of(raw), **config.model_dump(mode="json", exclude_none=True)}
        values = []
        for path, value in leaves(dumped):
            origin = _origin(resolved.origin, key, path)
            if origin is None and value == {}:
                continue  # an empty built-in mapping says nothing
            written = bundle.where(origin) if origin is not None else BUILT_IN
            if diff_defaults and (origin is None or origin[0] == "defaults"):
                continue
            values.append(
                {
                    "path": dotted(path),
                    "value": value,
                    "from": written,
                    "layer": "built-in" if origin is None else _layer(origin),
                }
            )
        if values or not diff_defaults:
            title = f"{name} (shadow trial beside the enforced {name})" if key != name else name
            sections.append({"policy": name, "trial": key != name, "title": title, "values": values})
    return {
        "bundle": bundle.hash,
        "scope": f"{tenant or '*'}/{app or '*'}",
        "chain": [s["title"] for s in sections],
        "sections": sections,
        "loosenings": [item.line() for item in resolved.loosenings],
    }


def _origin(origin: dict[Loc, Loc], key: str, path: Loc) -> Loc | None:
    # A leaf's own origin, else a list or shorthand written above it (a shorthand sets only `action`).
    for i in range(len(path), 0, -1):
        at = origin.get((key, *path[:i]))
        if at is not None:
            return (*at, *path[i:]) if i == len(path) else None
    return None


def _layer(origin: Loc) -> str:
    if origin[0] == "defaults":
        return "defaults"
    return f"tenant {origin[1]}" if len(origin) < 4 or origin[2] != "apps" else f"app {origin[1]}/{origin[3]}"
