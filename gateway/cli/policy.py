"""`gateway policy`: lint, show, test and explain the compliance team's policy bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.common import (
    ConfigOpt,
    _config,
    _invalid,
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
    from gateway.policycases import lint

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
