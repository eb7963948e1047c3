"""``gateway policy test`` and ``policy check``: the compliance team's cases run as dry runs
(``gateway.policytest.simulate``), their coverage of each app's chain, and each section's own findings
(``Policy.check``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, ValidationError

from gateway.bundle import Bundle, mode_of, order_warnings
from gateway.config import Config
from gateway.layering import body
from gateway.policies import REGISTRY
from gateway.policytest import FailReason, Outcome, SimRequest, Strict, simulate
from gateway.yamlsrc import ConfigError, Source, dotted, load, problems_of


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
    """Each active section's own findings (``Policy.check``), given what the app's sections restrict hops to."""
    active = [
        (REGISTRY[name], REGISTRY[name].Config.model_validate(body(raw)))
        for name, raw in sections.items()
        if mode_of(raw) != "off"
    ]
    allowed: frozenset[str] | None = None
    for cls, cfg in active:
        limit = cls.strictly_allows(cfg)
        if limit is not None:
            allowed = limit if allowed is None else allowed & limit
    return [problem for cls, cfg in active for problem in cls.check(config, cfg, allowed)]
