"""`gateway usage report`: tokens and cost per tenant from the usage ledger."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gateway.cli.common import (
    ConfigOpt,
    _engine,
    _print_columns,
    _print_json,
    err,
    out,
)

usage_app = typer.Typer(help="The usage ledger: tokens and cost per tenant.", no_args_is_help=True)


@usage_app.command("report")
def usage_report(
    tenant: Annotated[str, typer.Option(help="Tenant to report on.")],
    since: Annotated[str, typer.Option(help="Window ending now: 30d, 12h, 2w.")] = "30d",
    by: Annotated[str, typer.Option(help="Group by model, app, deployment, jurisdiction or key.")] = "model",
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help=("Print a JSON array of objects (cost_eur as an exact decimal string, as in the ledger)."),
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Requests, tokens and cost (EUR) from the usage ledger, grouped and sorted by cost."""
    import csv
    from decimal import Decimal

    from gateway.accounting.report import parse_since, report

    if by not in ("model", "app", "deployment", "jurisdiction", "key"):
        err.print(f"[red]error[/red] --by must be model, app, deployment, jurisdiction or key, not {by!r}")
        raise typer.Exit(2)
    try:
        window = parse_since(since)
    except ValueError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    lines = report(_engine(config), tenant, window, by)  # type: ignore[arg-type]
    if as_json:
        _print_json(
            [
                {
                    by: ln.group,
                    "requests": ln.requests,
                    "prompt_tokens": ln.prompt_tokens,
                    "completion_tokens": ln.completion_tokens,
                    "cost_eur": f"{ln.cost_eur:.6f}",
                    "estimated": ln.estimated,
                }
                for ln in lines
            ]
        )
        return
    header = [by, "requests", "prompt_tokens", "completion_tokens", "cost_eur", "estimated"]
    rows = [
        [
            ln.group,
            str(ln.requests),
            str(ln.prompt_tokens),
            str(ln.completion_tokens),
            f"{ln.cost_eur:.6f}",
            str(ln.estimated),
        ]
        for ln in lines
    ]
    if csv_:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return
    total = sum((ln.cost_eur for ln in lines), start=Decimal(0))  # exact, as in the ledger
    out.print(f"usage of tenant {tenant!r}, last {since}", highlight=False)
    _print_columns(
        header,
        [
            *rows,
            [
                "total",
                *(
                    str(sum(getattr(ln, f) for ln in lines))
                    for f in ("requests", "prompt_tokens", "completion_tokens")
                ),
                f"{total:.6f}",
                str(sum(ln.estimated for ln in lines)),
            ],
        ],
    )
