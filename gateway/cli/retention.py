"""`gateway retention`: delete what is past its retention period (config.yaml `retention:`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from gateway.cli.common import ConfigOpt, _config, _engine, err, out

retention_app = typer.Typer(help="Retention: delete data past its period.", no_args_is_help=True)


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run the purge once, now (a serving gateway also runs it every `retention.interval`)."""
    from gateway.retention import purge

    settings = _config(config)
    if not settings.retention.periods():
        err.print("no retention period is set in config.yaml (retention:); nothing to do")
        return
    counts = asyncio.run(purge(settings, _engine(config), dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    for name, n in counts.items():
        out.print(
            f"{name:16} {verb} {n}  (older than {settings.retention.model_dump()[name]})", highlight=False
        )
