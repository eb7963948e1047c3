"""`gateway policy test` and `gateway policy explain`: dry runs of the bundle (``gateway.policytest``)."""

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
from gateway.cli.policy import PathsArg, _bundle, policy_app
from gateway.yamlsrc import ConfigError

if TYPE_CHECKING:
    pass


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

    from gateway.policycases import CaseResult, coverage, run_cases

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
