"""`gateway policy`: lint, show, test and explain the compliance team's policy bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from gateway.cli.common import (
    ConfigOpt,
    _config,
    _engine,
    _invalid,
    _pseudonymiser,
    err,
    out,
)
from gateway.yamlsrc import ConfigError

if TYPE_CHECKING:
    from gateway.bundle import Bundle
    from gateway.config import Config

policy_app = typer.Typer(
    help="Lint, test and explain the compliance team's policy bundle.", no_args_is_help=True
)


PathsArg = Annotated[
    list[Path] | None,
    typer.Argument(help="Policy files or directories. Default: server.policies_dir from the config."),
]


def _bundle(config: Config, paths: list[Path] | None) -> Bundle:
    from gateway.bundle import load_bundle

    try:
        return load_bundle(paths or [Path(config.server.policies_dir)])
    except ConfigError as exc:
        _invalid(exc)


@policy_app.command("check")
def policy_check(
    paths: PathsArg = None,
    config: ConfigOpt = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Exit 1 on any loosening of a default that has no `reason:` next to it."
        ),
    ] = False,
) -> None:
    """Lint the bundle: schema errors, unknown deployments or models, contradictions, and every loosening of a
    default. Exit 1 on errors (and, with --strict, on loosenings without a reason)."""
    from gateway.policytest import lint

    cfg = _config(config)
    bundle = _bundle(cfg, paths)
    problems = lint(cfg, bundle)
    errors = [p for p in problems if ": warning: " not in p]
    for problem in problems:
        label = "[yellow]warning[/yellow]" if problem not in errors else "[red]error[/red]"
        err.print(f"{label} {problem.replace(': warning: ', ': ')}", highlight=False)
    loosenings = bundle.loosenings()
    unexplained = [item for item in loosenings if not item.reason]
    for item in loosenings:
        label = "[red]loosening[/red]" if strict and not item.reason else "[yellow]loosening[/yellow]"
        err.print(f"{label} {item.line()}", highlight=False)
    if errors or (strict and unexplained):
        if strict and unexplained:
            err.print(f"{len(unexplained)} loosening(s) without a `reason:` (--strict)", highlight=False)
        raise typer.Exit(1)
    out.print(
        f"ok: policy bundle {bundle.hash}, {len(bundle.tenants)} tenants, {len(loosenings)} loosening(s)"
        f"{', each with a reason' if loosenings and not unexplained else ''}",
        highlight=False,
    )


@policy_app.command("show")
def policy_show(
    tenant: Annotated[
        str | None, typer.Option(help="Tenant (omit for the defaults every unlisted tenant gets).")
    ] = None,
    app_: Annotated[
        str | None, typer.Option("--app", help="App of the tenant (omit for the tenant layer).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    diff_defaults: Annotated[
        bool, typer.Option("--diff-defaults", help="Only the values this tenant or app changes.")
    ] = False,
    paths: PathsArg = None,
    config: ConfigOpt = None,
) -> None:
    """Print the effective merged policy of one app, each value with the file:line it came from."""
    import orjson

    from gateway.policyshow import UnknownScope, effective

    cfg = _config(config)
    bundle = _bundle(cfg, paths)
    try:
        shown = effective(bundle, tenant or "", app_ or "", diff_defaults=diff_defaults)
    except UnknownScope as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        return
    out.print(f"policy bundle {shown['bundle']}; effective policy for {shown['scope']}", highlight=False)
    width = min(
        max(
            (len(v["path"]) + len(_short(v["value"])) for s in shown["sections"] for v in s["values"]),
            default=0,
        )
        + 4,
        60,
    )
    for section in shown["sections"]:
        out.print(f"[bold]{section['title']}[/bold]", highlight=False)
        for v in section["values"]:
            text = f"  {v['path']}: {_short(v['value'])}"
            out.print(
                f"{text:<{width}}  {v['from']}"
                if len(text) <= width
                else f"{text}\n{'':<{width}}  {v['from']}",
                highlight=False,
            )
    for item in shown["loosenings"]:
        out.print(f"[yellow]loosening[/yellow] {item}", highlight=False)


def _short(value: object) -> str:
    import orjson

    return value if isinstance(value, str) else orjson.dumps(value).decode()


@policy_app.command("test")
def policy_test(
    paths: PathsArg = None,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("-v", help="Print PASS lines too.")] = True,
    show_coverage: Annotated[
        bool,
        typer.Option(
            "--coverage", help="Print, per tenant/app and policy, the decisions the cases exercised."
        ),
    ] = False,
    min_coverage: Annotated[
        float | None,
        typer.Option(
            help="Exit 1 when fewer than this percentage of (tenant/app, policy) pairs have a decision exercised."
        ),
    ] = None,
) -> None:
    """Run the `*_test.yaml` cases next to the policies, like `opa test`. Exit 1 when a case fails."""
    import asyncio

    from gateway.policytest import CaseResult, coverage, run_cases

    cfg = _config(config)
    roots = paths or [Path(cfg.server.policies_dir)]
    bundle = _bundle(cfg, [p for p in roots if p.is_dir() or not p.name.endswith("_test.yaml")] or roots)
    files = [
        f
        for r in roots
        for f in (sorted(r.glob("*_test.yaml")) if r.is_dir() else [r])
        if f.name.endswith("_test.yaml")
    ]
    passed = failed = 0
    everything: list[CaseResult] = []
    for path in files:
        try:
            results = asyncio.run(run_cases(cfg, bundle, path))
        except ConfigError as exc:
            _invalid(exc)
        everything += results
        for r in results:
            if r.failures:
                failed += 1
                out.print(f"[red]FAIL[/red] {r.where}: {r.name}", highlight=False)
                for f in r.failures:
                    out.print(f"     {f}", highlight=False)
            else:
                passed += 1
                if verbose:
                    out.print(f"[green]PASS[/green] {r.where}: {r.name}", highlight=False)
    out.print(f"{passed} passed, {failed} failed", highlight=False)
    low = False
    if show_coverage or min_coverage is not None:
        rows = coverage(bundle, everything)
        covered = [r for r in rows if r.actions]
        percent = 100.0 * len(covered) / len(rows) if rows else 100.0
        if show_coverage:
            table = Table("tenant/app", "policy", "decisions exercised", title="policy test coverage")
            for row in rows:
                table.add_row(row.scope, row.policy, ", ".join(row.actions) or "[red]none[/red]")
            out.print(table)
        untested = ", ".join(f"{r.scope} {r.policy}" for r in rows if not r.actions)
        out.print(
            f"coverage: {len(covered)}/{len(rows)} (tenant/app, policy) pairs, {percent:.0f}%"
            + (f"; untested: {untested}" if untested else ""),
            highlight=False,
        )
        low = min_coverage is not None and percent < min_coverage
        if low:
            out.print(
                f"[red]coverage {percent:.0f}% is under --min-coverage {min_coverage:g}[/red]",
                highlight=False,
            )
    if failed or not files or low:
        raise typer.Exit(1)


@policy_app.command("explain")
def policy_explain(
    tenant: Annotated[str, typer.Option(help="Tenant of the calling key.")],
    app_: Annotated[str, typer.Option("--app", help="App of the calling key.")],
    model: Annotated[str, typer.Option(help="Public model name.")],
    message: Annotated[str, typer.Option(help="The user message.")] = "Hello",
    subject: Annotated[str | None, typer.Option(help="Data subject id (OpenAI `user`).")] = None,
    consent: Annotated[
        list[str] | None,
        typer.Option(
            help="Treat the subject as having consented to this purpose (repeatable); overrides the registry."
        ),
    ] = None,
    no_consent: Annotated[
        bool,
        typer.Option(
            "--no-consent", help="Treat the subject as having no consent at all; overrides the registry."
        ),
    ] = False,
    fail: Annotated[
        list[str] | None, typer.Option(help="Simulate this deployment failing (repeatable).")
    ] = None,
    data_class: Annotated[str | None, typer.Option(help="The X-Data-Class header.")] = None,
    paths: PathsArg = None,
    config: ConfigOpt = None,
) -> None:
    """Dry-run one request: print each policy's decision and the route. Nothing is sent to a chat upstream;
    RAG retrieval embeds the query through the embeddings deployment, as the gateway would.

    Consent is read from the configured database's registry, as the gateway would, unless
    --consent or --no-consent says otherwise."""
    import asyncio

    from gateway.policytest import Outcome, Registry, SimRequest, simulate

    cfg = _config(config)
    bundle = _bundle(cfg, paths)
    if consent and no_consent:
        err.print("[red]error[/red] --consent and --no-consent contradict each other")
        raise typer.Exit(2)
    request = SimRequest(
        tenant=tenant, app=app_, model=model, message=message, subject=subject, data_class=data_class
    )
    registry = None
    if consent:
        source = f"--consent {', '.join(consent)} (command line)"
    elif no_consent:
        source = "none (--no-consent)"
    elif subject is None:
        source = "not looked up (no --subject)"
    else:
        from sqlalchemy import make_url

        from gateway.store.consent import ConsentRegistry

        registry = Registry(ConsentRegistry(_engine(config), ttl_s=0), _pseudonymiser(config))
        source = f"the registry in {make_url(cfg.storage.database_url).render_as_string(hide_password=True)}"

    async def run() -> Outcome:
        failing = dict.fromkeys(fail or [], "upstream_5xx")
        if "rag_context" not in bundle.sections_for(tenant, app_) or cfg.rag.embedder != "gateway":
            return await simulate(cfg, bundle, request, consent or [], failing, registry=registry)
        # Retrieval needs the query's embedding: through the gateway's own embeddings path, as it would be.
        from gateway.pipeline import embeddings_path

        async with embeddings_path(cfg) as embed:
            return await simulate(
                cfg, bundle, request, consent or [], failing, registry=registry, embed=embed
            )

    outcome = asyncio.run(run())
    chain = bundle.chain_for(tenant, app_)
    out.print(
        f"policy bundle {bundle.hash}; chain for {tenant}/{app_}: "
        f"{', '.join(p.name + (' (shadow)' if chain.is_shadow(p) else '') for p in chain.policies) or '(empty)'}",
        highlight=False,
    )
    out.print(f"consent: {source}", highlight=False)
    table = Table("policy", "decision", Column("facts", overflow="fold"))  # ids fold, never cut
    for policy, action, facts in outcome.decisions:
        table.add_row(policy, action, ", ".join(f"{k}={v}" for k, v in facts.items()))
    out.print(table)
    for name, result in outcome.attempts:
        out.print(f"  tried {name}: {result}", highlight=False)
    if outcome.denied:
        out.print(f"[red]denied[/red] {outcome.denied} (HTTP {outcome.status})", highlight=False)
    else:
        out.print(
            f"[green]routed[/green] to {outcome.deployment} "
            f"({cfg.deployments[outcome.deployment or ''].jurisdiction})",
            highlight=False,
        )
