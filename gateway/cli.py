"""``gateway`` command line.

Exit codes: 0 success, 1 a check found problems or a command failed, 2 invalid usage or an
invalid configuration file.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from gateway.yamlsrc import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.config import Config

app = typer.Typer(help="ExecAI Gateway: an OpenAI-compatible LLM gateway with EU compliance policies.",
                  no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Issue, list and revoke virtual API keys.", no_args_is_help=True)
config_app = typer.Typer(help="Validate the operator configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Operator config file. Default: $GATEWAY_CONFIG or ./config.yaml."),
]


def _config(path: Path | None) -> Config:
    from gateway.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem}", highlight=False, markup=True)
        raise typer.Exit(2) from None


def _engine(path: Path | None) -> Engine:
    from gateway.store.db import make_engine, upgrade

    config = _config(path)
    upgrade(config.storage.database_url)
    return make_engine(config.storage.database_url)


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides server.port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (overrides server.workers).")] = None,
    dev: Annotated[bool, typer.Option(
        "--dev", help="Also start the DEVELOPMENT upstream on 127.0.0.1:9100 and print a fresh API key.")] = False,
) -> None:
    """Run the gateway (migrates the database first)."""
    import uvicorn

    from gateway.store.db import upgrade

    cfg = _config(config)
    upgrade(cfg.storage.database_url)
    if config is not None:
        os.environ["GATEWAY_CONFIG"] = str(config)
    n = workers or cfg.server.workers
    if n > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    if dev:
        from gateway import auth
        from gateway.devupstream import DevUpstream
        from gateway.store.db import make_engine

        DevUpstream(port=9100, chunk_delay_s=0.05, record=False).start()
        key, _ = auth.create_key(make_engine(cfg.storage.database_url), tenant="dev", app="dev",
                                 models=["*"], scopes=["chat", "embeddings", "admin"], name="dev")
        bind = f"http://{host or cfg.server.host}:{port or cfg.server.port}/v1"
        out.print("[yellow]DEVELOPMENT upstream on http://127.0.0.1:9100/v1 (canned answers, not a model)[/yellow]")
        out.print(f"Gateway: {bind}\nAPI key (shown once): [bold]{key}[/bold]", highlight=False)
    from gateway import logs

    logs.setup(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    uvicorn.run(
        "gateway.app:create_app", factory=True, host=host or cfg.server.host, port=port or cfg.server.port,
        workers=n, loop="uvloop", http="httptools", access_log=False, log_config=None,
        timeout_graceful_shutdown=30,
    )


@app.command("dev-upstream")
def dev_upstream(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 9100,
    chunk_delay_ms: Annotated[int, typer.Option(help="Pause between streamed chunks.")] = 50,
) -> None:
    """Run the DEVELOPMENT upstream: canned OpenAI-format answers, no model, no API key."""
    from gateway.devupstream import main

    main(host, port, chunk_delay_ms / 1000)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    app_: Annotated[str, typer.Option("--app", help="Application the key belongs to.")],
    models: Annotated[str, typer.Option(help="Comma-separated public model names, or '*'.")] = "*",
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes: chat, embeddings, models, admin.")] = (
        "chat,embeddings"),
    name: Annotated[str, typer.Option(help="Free-text label (no personal data).")] = "",
    config: ConfigOpt = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from gateway import auth

    engine = _engine(config)
    try:
        key, row = auth.create_key(engine, tenant=tenant, app=app_, models=_split(models),
                                   scopes=_split(scopes), name=name)
    except ValueError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"key id {row.key_id} for {tenant}/{app_}; store the key now, it is not shown again:")
    print(key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None, config: ConfigOpt = None
) -> None:
    """List keys (ids and metadata, never the key itself)."""
    from gateway import auth

    table = Table("key id", "tenant", "app", "models", "scopes", "created", "revoked")
    for row in auth.list_keys(_engine(config), tenant):
        table.add_row(row.key_id, row.tenant, row.app, row.models, row.scopes, f"{row.created_at:%Y-%m-%d %H:%M}",
                      f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "")
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`.")],
                config: ConfigOpt = None) -> None:
    """Revoke a key; every worker stops accepting it within server.key_refresh_s seconds."""
    from gateway import auth

    if not auth.revoke_key(_engine(config), key_id):
        err.print(f"[red]error[/red] no active key {key_id!r}")
        raise typer.Exit(1)
    out.print(f"revoked {key_id}")


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate config.yaml and the policy bundle it points to; exit 2 on errors."""
    from gateway.bundle import load_holder

    cfg = _config(config)
    try:
        holder = load_holder(cfg)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem}", highlight=False)
        raise typer.Exit(2) from None
    out.print(f"ok: {len(cfg.deployments)} deployments, {len(cfg.models)} models, "
              f"policy bundle {holder.current.hash}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None,
               revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply schema migrations (also done by `serve`)."""
    from gateway.store.db import upgrade

    cfg = _config(config)
    upgrade(cfg.storage.database_url, revision)
    out.print("database is at", revision)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
