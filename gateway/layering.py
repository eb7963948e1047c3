"""How tenant and app layers combine with the defaults, and what they loosen.

    defaults ─► tenant ─► app          each layer is merged over the one before it

- Mappings merge key by key at every depth: an app that adds ``PERSON`` keeps every default
  entity. Lists and scalars replace.
- ``replace: true`` at the top of a section discards the inherited section (an explicit loosening).
- ``mode: shadow`` over an inherited *enforced* section does not replace it: the inherited section
  keeps enforcing and a shadow *trial* (inherited merged with the layer's keys) records what the
  stricter or different rule would do.
- Every loosening of an inherited value is reported with the ``file:line`` of both the inherited
  value and the override; a ``reason:`` string next to the override (in the same mapping or at the
  top of the section) documents it, and ``policy check --strict`` fails on those without one.

Nothing here knows a policy: each policy class says what loosening means for it (``loosened``)
and how its shorthands expand (``normalize``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]
META = ("mode", "replace", "reason")  # section keys the bundle reads itself; never passed to a policy


def mode_of(section: Mapping[str, Any]) -> Any:
    """A section's mode; YAML reads a bare `off` as false, which means `off` here."""
    mode = section.get("mode", "enforce")
    return "off" if mode is False else mode


def body(section: Mapping[str, Any]) -> dict[str, Any]:
    """The section without the keys the bundle itself reads."""
    return {k: v for k, v in section.items() if k not in META}


@dataclass(frozen=True)
class Layer:
    """One layer's sections and where they are written (``loc`` is the layer's path in the file)."""

    loc: Loc
    sections: Mapping[str, dict[str, Any]]


@dataclass(frozen=True)
class Loosening:
    """An override that weakens an inherited value."""

    scope: str  # tenant/app ("hr/chatbot", "hr/*")
    section: str
    path: Loc  # inside the section
    message: str
    inherited_at: str  # file:line of the weaker-made value ("built-in default" when no file set it)
    override_at: str
    reason: str | None  # the documented reason, if any

    def line(self) -> str:
        where = f"{self.section}.{'.'.join(map(str, self.path))}" if self.path else self.section
        why = f" (reason: {self.reason})" if self.reason else " (no reason given)"
        return (
            f"{self.override_at}: {self.scope}: {where}: {self.message}; inherited from {self.inherited_at}"
            f"{why}"
        )


@dataclass
class Resolved:
    """One app's effective policy: sections in chain order, shadow trials, and where values came from."""

    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (section, *path) -> the bundle location that set it; "trial:" sections are keyed "<name>~trial"
    origin: dict[Loc, Loc] = field(default_factory=dict)
    loosenings: list[Loosening] = field(default_factory=list)


Normalize = Callable[[str, dict[str, Any]], dict[str, Any]]
Validate = Callable[[str, dict[str, Any]], BaseModel | None]
Loosened = Callable[[str, BaseModel | None, BaseModel], list[tuple[Loc, str]]]
Where = Callable[[Loc], str]


def deep_merge(base: Any, over: Any) -> Any:
    """``over`` merged into ``base``: mappings key by key at every depth, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def leaves(value: Any, path: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    """Every (path, value) whose value is not a non-empty mapping; lists are leaves."""
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from leaves(sub, (*path, key))
    else:
        yield path, value


def _set_origins(origin: dict[Loc, Loc], key: str, raw: Mapping[str, Any], loc: Loc, replace: bool) -> None:
    if replace:
        for k in [k for k in origin if k[0] == key]:
            del origin[k]
        origin[(key,)] = loc
    origin.setdefault((key,), loc)  # the section itself: where it was first written
    for path, _ in leaves(dict(raw)):
        if not path:
            continue  # an empty section sets nothing
        for k in [
            k
            for k in origin
            if k[0] == key and len(k) > 1 and (k[1 : len(path) + 1] == path or path[: len(k) - 1] == k[1:])
        ]:
            del origin[k]  # the layer's value replaces anything at, under or above this leaf
        origin[(key, *path)] = (*loc, *path)


def find_reason(raw: Any, path: Loc) -> str | None:
    """A ``reason:`` string in the layer's own section: in the mapping of the loosened value or above it."""
    nodes = [raw]
    for part in path:
        node = nodes[-1]
        if not isinstance(node, dict) or part not in node:
            break
        nodes.append(node[part])
    for node in reversed(nodes):
        if isinstance(node, dict) and isinstance(node.get("reason"), str) and node["reason"].strip():
            return str(node["reason"]).strip()
    return None


def resolve(
    layers: list[Layer],
    scope: str,
    normalize: Normalize,
    validate: Validate,
    loosened: Loosened,
    where: Where,
) -> Resolved:
    """Merge ``layers`` in order; the first layer is the baseline and is never reported as loosening."""
    out = Resolved()
    last_on: dict[str, dict[str, Any]] = {}  # per section, the last merged state that was not off
    for depth, layer in enumerate(layers):
        for name, raw in layer.sections.items():
            raw = normalize(name, dict(raw or {}))
            loc = (*layer.loc, name)
            inherited = out.sections.get(name)
            if (
                inherited is not None
                and mode_of(raw) == "shadow"
                and mode_of(inherited) == "enforce"
                and raw.get("replace") is not True
            ):
                # A trial: the inherited rule keeps enforcing; the variant runs beside it in shadow.
                base = out.trials.get(name, inherited)
                out.trials[name] = {**deep_merge(body(base), body(raw)), "mode": "shadow"}
                _set_origins(out.origin, f"{name}~trial", body(raw), loc, replace=False)
                continue
            replace = raw.get("replace") is True
            merged = body(raw) if replace or inherited is None else deep_merge(body(inherited), body(raw))
            if "mode" in raw:
                merged["mode"] = raw["mode"]
            elif inherited is not None and not replace and "mode" in inherited:
                merged["mode"] = inherited["mode"]
            if depth:
                # A section switched off below is compared with what was last in force, so turning it off,
                # changing it and turning it back on cannot hide a loosening.
                compared: dict[str, Any] | None = inherited
                if inherited is not None and mode_of(inherited) == "off":
                    compared = last_on.get(name, inherited)
                out.loosenings += _loosenings(
                    name, compared, merged, raw, loc, scope, out.origin, validate, loosened, where
                )
            out.sections[name] = merged
            if mode_of(merged) != "off":
                last_on[name] = merged
            _set_origins(
                out.origin,
                name,
                {**body(raw), **({"mode": raw["mode"]} if "mode" in raw else {})},
                loc,
                replace,
            )
    return out


def _loosenings(
    name: str,
    inherited: dict[str, Any] | None,
    merged: dict[str, Any],
    raw: dict[str, Any],
    loc: Loc,
    scope: str,
    origin: dict[Loc, Loc],
    validate: Validate,
    loosened: Loosened,
    where: Where,
) -> list[Loosening]:
    found: list[tuple[Loc, str]] = []
    if raw.get("replace") is True and inherited is not None:
        found.append((("replace",), "replace: true discards the inherited section"))
    was, now = (mode_of(inherited) if inherited is not None else None), mode_of(merged)
    if was == "enforce" and now != "enforce":
        found.append((("mode",), f"turns enforcement {'off' if now == 'off' else 'into shadow mode'}"))
    if now != "off":
        try:
            after = validate(name, body(merged))
            before = validate(name, body(inherited)) if inherited is not None and was != "off" else None
        except ValidationError:
            after = None  # reported by schema validation
        if after is not None:
            found += loosened(name, before, after)
    out = []
    for path, message in found:
        at = written_at(origin, (name, *path))
        inherited_at = (
            "nothing (the section is new in this layer)"
            if inherited is None
            else where(at[0])
            if at is not None
            else "a built-in default"
        )
        override_loc = (*loc, *path)
        out.append(
            Loosening(scope, name, path, message, inherited_at, where(override_loc), find_reason(raw, path))
        )
    return out


def written_at(origin: dict[Loc, Loc], key: Loc) -> tuple[Loc, int] | None:
    """Where the value at ``key`` (section, *path), or the nearest mapping above it, was written: the
    bundle location and how many steps of ``key`` it covers; the latest layer when several wrote below it."""
    for i in range(len(key), 0, -1):
        hits = [k for k in origin if k[:i] == key[:i]]
        if hits:
            k = max(hits, key=lambda h: len(origin[h]) - len(h))
            written = origin[k]
            return written[: len(written) - (len(k) - i)], i
    return None
