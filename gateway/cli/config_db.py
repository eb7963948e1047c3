"""`gateway config check` and `gateway db upgrade`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from gateway.cli.common import (
    ConfigOpt,
    _config,
    _config_path,
    _invalid,
    err,
    out,
)
from gateway.cli.serve import _dev_reason, _env_refs, _raw_deployment
from gateway.yamlsrc import ConfigError

config_app = typer.Typer(help="Validate the operator configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate config.yaml and the policy bundle it points to; exit 2 on errors. Warns (exit 0) about
    deployments without an API key or an endpoint."""
    from gateway import yamlsrc
    from gateway.bundle import load_holder

    cfg = _config(config)
    try:
        holder = load_holder(cfg)
    except ConfigError as exc:
        _invalid(exc)
    src = yamlsrc.load(_config_path(config), expand_env=False)
    for name, d in cfg.deployments.items():
        raw = _raw_deployment(src, name)
        dev = _dev_reason(d, raw) is not None
        for field, value in (("base_url", d.base_url), ("api_key", d.api_key)):
            if value.strip() or (field == "api_key" and d.kind == "litellm"):
                continue
            unset = [var for var in _env_refs(raw.get(field)) if not os.environ.get(var)]
            why = f" ({', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set)" if unset else ""
            then = (
                "serve --dev sends it to the development upstream"
                if dev
                else "serve --dev leaves it alone: its endpoint was set through the environment"
            )
            err.print(
                f"[yellow]warning[/yellow] {src.where(('deployments', name, field))}: deployments.{name}."
                f"{field} is empty{why}; {then}",
                highlight=False,
            )
    out.print(
        f"ok: {len(cfg.deployments)} deployments, {len(cfg.models)} models, "
        f"policy bundle {holder.current.hash}",
        highlight=False,
    )


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOpt = None, revision: Annotated[str, typer.Argument(help="Target revision.")] = "head"
) -> None:
    """Apply schema migrations (also done by `serve`)."""
    from gateway.store.db import upgrade

    cfg = _config(config)
    upgrade(cfg.storage.database_url, revision)
    out.print("database is at", revision)
