"""A bundle from its files: structure (``gateway.bundle.files``), then every app's merged sections
validated against their policies' ``Config``, loosenings and requirements between policies."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from gateway.bundle.files import read
from gateway.bundle.model import Bundle
from gateway.layering import Loc, Resolved, body, mode_of, written_at
from gateway.policies import REGISTRY
from gateway.yamlsrc import ConfigError, Source, dotted, error_items, load


def parse_bundle(sources: Iterable[Source]) -> Bundle:
    """Merge and validate policy files; raise ConfigError listing every problem found."""
    files = read(sources)
    problems = files.problems
    bundle = Bundle(
        hash=files.digest,
        defaults=files.defaults,
        tenants=files.tenants,
        sources=files.sources,
        order=files.order,
    )
    if not problems:
        _validate_merged(bundle, problems)
    if problems:
        raise ConfigError(problems)
    return bundle


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
