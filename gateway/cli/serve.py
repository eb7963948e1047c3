"""`gateway serve` (and `--dev`, which starts the development upstream) and `gateway dev-upstream`."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.common import (
    ConfigOpt,
    _config,
    _config_path,
    app,
    err,
    out,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.config import Config, Deployment
    from gateway.dev import DevUpstream
    from gateway.yamlsrc import Source


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides server.port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (overrides server.workers).")] = None,
    dev: Annotated[
        bool,
        typer.Option(
            "--dev",
            help="Also start the DEVELOPMENT upstream, send every deployment without an API key or an "
            "endpoint to it, and print the development API key (kept in .gateway/dev-key).",
        ),
    ] = False,
    dev_upstream_port: Annotated[
        int,
        typer.Option(
            envvar="GATEWAY_DEV_UPSTREAM_PORT",
            help="With --dev: the development upstream's port on 127.0.0.1.",
        ),
    ] = 9100,
    no_migrate: Annotated[
        bool,
        typer.Option(
            "--no-migrate",
            help="Do not migrate the database; wait (up to --schema-wait-s) until something else has "
            "(the Helm chart's migration Job).",
        ),
    ] = False,
    schema_wait_s: Annotated[float, typer.Option(help="With --no-migrate: how long to wait.")] = 300.0,
) -> None:
    """Run the gateway (migrates the database first, unless --no-migrate)."""
    import uvicorn

    from gateway.store.db import upgrade

    cfg = _config(config)
    if not dev and len(cfg.server.secret_key.encode()) < 32:
        err.print(
            "[red]error[/red] server.secret_key (GATEWAY_SECRET) must be at least 32 bytes outside --dev: "
            "subject pseudonyms are keyed with it. Set one, e.g. "
            "GATEWAY_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(48))')",
            highlight=False,
        )
        raise typer.Exit(2)
    if no_migrate:
        _wait_for_schema(cfg.storage.database_url, schema_wait_s)
    else:
        upgrade(cfg.storage.database_url)
    if config is not None:
        os.environ["GATEWAY_CONFIG"] = str(config)
    n = workers or cfg.server.workers
    if n > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    if dev:
        _start_dev(
            config, cfg, dev_upstream_port, f"http://{host or cfg.server.host}:{port or cfg.server.port}/v1"
        )
    from gateway import logs

    logs.setup(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    from gateway.http.server import server_options

    # The gateway's HTTP protocol (head size, head and body timeouts, connection cap) with uvloop,
    # no access log (the app writes its own), uvicorn's keep-alive set from server.keep_alive_s.
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host or cfg.server.host,
        port=port or cfg.server.port,
        workers=n,
        timeout_graceful_shutdown=30,
        **server_options(cfg.server),
    )


def _wait_for_schema(url: str, wait_s: float) -> None:
    import time

    from gateway.store.db import schema_is_current

    deadline = time.monotonic() + wait_s
    while not schema_is_current(url):
        if time.monotonic() >= deadline:
            err.print(
                f"[red]error[/red] the database schema is not at the newest migration after {wait_s:.0f} s "
                "(--no-migrate: run `gateway db upgrade`, or the chart's migration Job)",
                highlight=False,
            )
            raise typer.Exit(1)
        time.sleep(1.0)


# --- development mode (`serve --dev`) -----------------------------------------------------------------

DEV_DIR = Path(".gateway")  # git-ignored; relative to the working directory, like ./gateway.db
DEV_KEY_FILE = DEV_DIR / "dev-key"
DEV_CONFIG_FILE = DEV_DIR / "dev-config.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _raw_deployment(src: Source, name: str) -> dict[str, Any]:
    deployments = src.data.get("deployments") if isinstance(src.data, dict) else None
    raw = deployments.get(name) if isinstance(deployments, dict) else None
    return raw if isinstance(raw, dict) else {}


def _env_refs(raw: object) -> list[str]:
    return _ENV_REF.findall(raw) if isinstance(raw, str) else []


def _dev_reason(deployment: Deployment, raw: dict[str, Any]) -> str | None:
    """Why `serve --dev` sends this deployment to the development upstream, or None when it does not.

    An empty endpoint, or an empty API key, unless the endpoint was set through an environment variable
    (``MISTRAL_7B_URL=http://vllm:8000/v1``: the operator's own server, which may need no key). litellm
    deployments are left alone: their providers read credentials from their own environment variables."""
    if deployment.kind == "litellm":
        return None
    if not deployment.base_url.strip():
        return "no endpoint"
    if deployment.api_key:
        return None
    if any(os.environ.get(var) for var in _env_refs(raw.get("base_url"))):
        return None
    return "no API key"


def _start_dev(config: Path | None, cfg: Config, upstream_port: int, gateway_url: str) -> DevUpstream:
    """Start the development upstream, point keyless deployments at it (through a generated config the
    workers load via GATEWAY_CONFIG), and print the development API key."""
    import socket

    import yaml

    from gateway import yamlsrc
    from gateway.dev import DevUpstream
    from gateway.store.db import make_engine

    path = _config_path(config)
    src = yamlsrc.load(path, expand_env=False)  # ${VAR} references stay references: no secret is written
    try:
        with socket.create_server(("127.0.0.1", upstream_port)):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        err.print(
            f"[red]error[/red] cannot start the development upstream on 127.0.0.1:{upstream_port}: {reason}. "
            "Stop what holds the port, or pick another with --dev-upstream-port (GATEWAY_DEV_UPSTREAM_PORT).",
            highlight=False,
        )
        raise typer.Exit(1) from None
    upstream = DevUpstream(
        port=upstream_port, chunk_delay_s=0.05, record=False, echo=True, embedding_dim=256
    ).start()
    redirected = {
        name: why
        for name, d in cfg.deployments.items()
        if (why := _dev_reason(d, _raw_deployment(src, name))) is not None
    }
    data = dict(src.data)
    data["deployments"] = {name: dict(raw) for name, raw in (data.get("deployments") or {}).items()}
    for name in redirected:
        raw = data["deployments"][name]
        raw["base_url"] = upstream.base if cfg.deployments[name].kind == "azure_openai" else upstream.url
        raw["api_key"] = ""
    DEV_DIR.mkdir(mode=0o700, exist_ok=True)
    DEV_CONFIG_FILE.write_text(
        f"# Written by `gateway serve --dev` from {path} at every start; edit {path}, not this file.\n"
        "# Deployments without an API key or an endpoint point at the DEVELOPMENT upstream.\n"
        + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    os.environ["GATEWAY_CONFIG"] = str(DEV_CONFIG_FILE.resolve())
    _config(DEV_CONFIG_FILE)  # the workers will load it: fail here, with file:line, if it does not validate

    out.print(
        f"[yellow]DEVELOPMENT upstream on {upstream.url}: it answers with a report of what it received; "
        "it is not a model.[/yellow]",
        highlight=False,
    )
    if redirected:
        out.print(f"Sent to it (configuration in effect: {DEV_CONFIG_FILE}):", highlight=False)
        width = max(map(len, redirected))
        for name, why in redirected.items():
            d = cfg.deployments[name]
            aliases = [alias for alias, spec in cfg.models.items() if name in spec.deployments]
            used = (
                f"model{'s' if len(aliases) > 1 else ''} {', '.join(aliases)}"
                if aliases
                else "no model alias (a policy's fallback target?)"
            )
            azure = (
                f"; Azure-style paths /openai/deployments/{d.model}/..." if d.kind == "azure_openai" else ""
            )
            was = (
                "already there"
                if d.base_url.rstrip("/") in (upstream.url, upstream.base)
                else f"instead of {d.base_url or '(empty)'}"
            )
            out.print(f"  {name:<{width}}  {why}, {was}; {used}{azure}", highlight=False)
    out.print(f"Gateway: {gateway_url}", highlight=False)
    key, reused = _dev_key(make_engine(cfg.storage.database_url))
    out.print(
        "API key for tenant dev, app dev, with admin scope over every tenant (global_admin) — development "
        "only:",
        highlight=False,
    )
    out.print(key, highlight=False, markup=False)
    kept = (
        f"reused from {DEV_KEY_FILE}"
        if reused
        else f"new; kept in {DEV_KEY_FILE} and reused at the next start"
    )
    out.print(f"({kept}; in another shell: export KEY=$(cat {DEV_KEY_FILE}))", highlight=False, markup=False)
    return upstream


def _dev_key(engine: Engine) -> tuple[str, bool]:
    """The development key from DEV_KEY_FILE while it is valid in this database, else a new one (the
    previous one revoked). Returns ``(key, reused)``."""
    import asyncio

    from gateway import auth
    from gateway.errors import GatewayError

    known = DEV_KEY_FILE.read_text(encoding="utf-8").strip() if DEV_KEY_FILE.exists() else ""
    if known:
        try:
            principal = asyncio.run(auth.KeyStore(engine).authenticate(f"Bearer {known}"))
        except GatewayError:
            principal = None
        if (
            principal is not None
            and (principal.tenant, principal.app) == ("dev", "dev")
            and "global_admin" in principal.scopes
        ):
            return known, True
        if known.startswith(auth.PREFIX):
            auth.revoke_key(engine, known[len(auth.PREFIX) :].partition("-")[0])
    key, _ = auth.create_key(
        engine,
        tenant="dev",
        app="dev",
        models=["*"],
        scopes=["chat", "embeddings", "admin", "global_admin"],
        name="dev",
    )
    DEV_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(DEV_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    DEV_KEY_FILE.chmod(0o600)  # also when the file was there before with wider rights
    return key, False


@app.command("dev-upstream")
def dev_upstream(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 9100,
    chunk_delay_ms: Annotated[int, typer.Option(help="Pause between streamed chunks.")] = 50,
) -> None:
    """Run the DEVELOPMENT upstream: canned OpenAI-format answers, no model, no API key."""
    from gateway.dev import main

    main(host, port, chunk_delay_ms / 1000)
