"""``gateway`` command line.

Exit codes: 0 success, 1 a check found problems or a command failed, 2 invalid usage or an
invalid configuration file.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from gateway.yamlsrc import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from sqlalchemy import Engine

    from gateway.bundle import Bundle
    from gateway.config import Config, Deployment
    from gateway.devupstream import DevUpstream
    from gateway.yamlsrc import Source

app = typer.Typer(help="ExecAI Gateway: an OpenAI-compatible LLM gateway with EU compliance policies.",
                  no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Issue, list and revoke virtual API keys.", no_args_is_help=True)
config_app = typer.Typer(help="Validate the operator configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
policy_app = typer.Typer(help="Lint, test and explain the compliance team's policy bundle.", no_args_is_help=True)
consent_app = typer.Typer(help="The consent registry: grant, withdraw, list.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(consent_app, name="consent")
app.add_typer(audit_app, name="audit")
rag_app = typer.Typer(help="RAG collections: ingest documents, count chunks, erase by subject.",
                      no_args_is_help=True)
app.add_typer(rag_app, name="rag")
usage_app = typer.Typer(help="The usage ledger: tokens and cost per tenant.", no_args_is_help=True)
app.add_typer(usage_app, name="usage")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Operator config file. Default: $GATEWAY_CONFIG or ./config.yaml."),
]


def _invalid(exc: ConfigError) -> NoReturn:
    """Print each problem as ``error file:line: dotted.path: reason`` and exit 2."""
    for problem in exc.problems:
        err.print(f"[red]error[/red] {escape(problem)}", highlight=False)
    raise typer.Exit(2) from None


def _config(path: Path | None) -> Config:
    from gateway.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _invalid(exc)


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
        "--dev", help="Also start the DEVELOPMENT upstream, send every deployment without an API key or an "
        "endpoint to it, and print the development API key (kept in .gateway/dev-key).")] = False,
    dev_upstream_port: Annotated[int, typer.Option(
        envvar="GATEWAY_DEV_UPSTREAM_PORT", help="With --dev: the development upstream's port on 127.0.0.1.")] = 9100,
) -> None:
    """Run the gateway (migrates the database first)."""
    import uvicorn

    from gateway.store.db import upgrade

    cfg = _config(config)
    if not dev and len(cfg.server.secret_key.encode()) < 32:
        err.print("[red]error[/red] server.secret_key (GATEWAY_SECRET) must be at least 32 bytes outside --dev: "
                  "subject pseudonyms are keyed with it. Set one, e.g. "
                  "GATEWAY_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(48))')", highlight=False)
        raise typer.Exit(2)
    upgrade(cfg.storage.database_url)
    if config is not None:
        os.environ["GATEWAY_CONFIG"] = str(config)
    n = workers or cfg.server.workers
    if n > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    if dev:
        _start_dev(config, cfg, dev_upstream_port, f"http://{host or cfg.server.host}:{port or cfg.server.port}/v1")
    from gateway import logs

    logs.setup(os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    from gateway.httpserver import server_options

    # The gateway's HTTP protocol (head size, head and body timeouts, connection cap) with uvloop,
    # no access log (the app writes its own), uvicorn's keep-alive set from server.keep_alive_s.
    uvicorn.run(
        "gateway.app:create_app", factory=True, host=host or cfg.server.host, port=port or cfg.server.port,
        workers=n, timeout_graceful_shutdown=30, **server_options(cfg.server),
    )


# --- development mode (`serve --dev`) -----------------------------------------------------------------

DEV_DIR = Path(".gateway")  # git-ignored; relative to the working directory, like ./gateway.db
DEV_KEY_FILE = DEV_DIR / "dev-key"
DEV_CONFIG_FILE = DEV_DIR / "dev-config.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _config_path(path: Path | None) -> Path:
    from gateway.config import DEFAULT_CONFIG

    return Path(path or os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))


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
    from gateway.devupstream import DevUpstream
    from gateway.store.db import make_engine

    path = _config_path(config)
    src = yamlsrc.load(path, expand_env=False)  # ${VAR} references stay references: no secret is written
    try:
        with socket.create_server(("127.0.0.1", upstream_port)):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        err.print(f"[red]error[/red] cannot start the development upstream on 127.0.0.1:{upstream_port}: {reason}. "
                  "Stop what holds the port, or pick another with --dev-upstream-port (GATEWAY_DEV_UPSTREAM_PORT).",
                  highlight=False)
        raise typer.Exit(1) from None
    upstream = DevUpstream(port=upstream_port, chunk_delay_s=0.05, record=False, echo=True,
                           embedding_dim=256).start()
    redirected = {name: why for name, d in cfg.deployments.items()
                  if (why := _dev_reason(d, _raw_deployment(src, name))) is not None}
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
        + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.environ["GATEWAY_CONFIG"] = str(DEV_CONFIG_FILE.resolve())
    _config(DEV_CONFIG_FILE)  # the workers will load it: fail here, with file:line, if it does not validate

    out.print(f"[yellow]DEVELOPMENT upstream on {upstream.url}: it answers with a report of what it received; "
              "it is not a model.[/yellow]", highlight=False)
    if redirected:
        out.print(f"Sent to it (configuration in effect: {DEV_CONFIG_FILE}):", highlight=False)
        width = max(map(len, redirected))
        for name, why in redirected.items():
            d = cfg.deployments[name]
            aliases = [alias for alias, spec in cfg.models.items() if name in spec.deployments]
            used = (f"model{'s' if len(aliases) > 1 else ''} {', '.join(aliases)}" if aliases
                    else "no model alias (a policy's fallback target?)")
            azure = (f"; Azure-style paths /openai/deployments/{d.model}/..." if d.kind == "azure_openai" else "")
            was = "already there" if d.base_url.rstrip("/") in (upstream.url, upstream.base) else \
                f"instead of {d.base_url or '(empty)'}"
            out.print(f"  {name:<{width}}  {why}, {was}; {used}{azure}", highlight=False)
    out.print(f"Gateway: {gateway_url}", highlight=False)
    key, reused = _dev_key(make_engine(cfg.storage.database_url))
    out.print("API key for tenant dev, app dev, with admin scope over every tenant (global_admin) — development "
              "only:", highlight=False)
    out.print(key, highlight=False, markup=False)
    kept = f"reused from {DEV_KEY_FILE}" if reused else f"new; kept in {DEV_KEY_FILE} and reused at the next start"
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
        if principal is not None and (principal.tenant, principal.app) == ("dev", "dev") and \
                "global_admin" in principal.scopes:
            return known, True
        if known.startswith(auth.PREFIX):
            auth.revoke_key(engine, known[len(auth.PREFIX):].partition("-")[0])
    key, _ = auth.create_key(engine, tenant="dev", app="dev", models=["*"],
                             scopes=["chat", "embeddings", "admin", "global_admin"], name="dev")
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
    from gateway.devupstream import main

    main(host, port, chunk_delay_ms / 1000)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    app_: Annotated[str, typer.Option("--app", help="Application the key belongs to.")],
    models: Annotated[str, typer.Option(help="Comma-separated public model names, or '*'.")] = "*",
    scopes: Annotated[str, typer.Option(help=(
        "Comma-separated scopes: chat, embeddings, models, admin (its own tenant), global_admin (every tenant; "
        "only this command issues it)."))] = (
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
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of objects.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List keys (ids and metadata, never the key itself)."""
    from gateway import auth

    rows = auth.list_keys(_engine(config), tenant)
    if as_json:
        _print_json([{"key_id": r.key_id, "tenant": r.tenant, "app": r.app, "models": _split(r.models),
                      "scopes": _split(r.scopes), "name": r.name, "created_at": r.created_at,
                      "revoked_at": r.revoked_at} for r in rows])
        return
    _print_columns(["key id", "tenant", "app", "models", "scopes", "name", "created", "revoked"],
                   [[r.key_id, r.tenant, r.app, r.models, r.scopes, r.name, _minute(r.created_at),
                     _minute(r.revoked_at)] for r in rows])


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`, or the key itself.")],
                config: ConfigOpt = None) -> None:
    """Revoke a key; every worker stops accepting it within server.key_refresh_s seconds."""
    from gateway import auth

    if key_id.startswith(auth.PREFIX):  # the key itself (sk-gw-<key id>-<secret>): revoke by its id
        key_id = key_id[len(auth.PREFIX):].partition("-")[0]
    if not auth.revoke_key(_engine(config), key_id):
        err.print(f"[red]error[/red] no active key {key_id!r}")
        raise typer.Exit(1)
    out.print(f"revoked {key_id}", highlight=False)


def _minute(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at else ""


def _print_columns(header: list[str], rows: list[list[str]]) -> None:
    """Aligned plain columns, the same in a terminal and in a pipe: nothing is cut or wrapped (a long line
    is the terminal's to wrap), an empty cell reads ``-``, so ids can be copied and ``awk`` can split."""
    table = [header, *([cell or "-" for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _print_json(rows: list[dict[str, Any]]) -> None:
    import orjson

    print(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())


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
            then = ("serve --dev sends it to the development upstream" if dev
                    else "serve --dev leaves it alone: its endpoint was set through the environment")
            err.print(f"[yellow]warning[/yellow] {src.where(('deployments', name, field))}: deployments.{name}."
                      f"{field} is empty{why}; {then}", highlight=False)
    out.print(f"ok: {len(cfg.deployments)} deployments, {len(cfg.models)} models, "
              f"policy bundle {holder.current.hash}", highlight=False)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None,
               revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply schema migrations (also done by `serve`)."""
    from gateway.store.db import upgrade

    cfg = _config(config)
    upgrade(cfg.storage.database_url, revision)
    out.print("database is at", revision)


@rag_app.command("ingest")
def rag_ingest(
    path: Annotated[Path, typer.Argument(help="A file or a folder (read recursively; hidden files skipped).")],
    tenant: Annotated[str, typer.Option(help="Tenant that owns the chunks.")],
    collection: Annotated[str, typer.Option(help="Collection (config.yaml rag.collections).")],
    subject_id: Annotated[str | None, typer.Option(
        help="Data subject the documents concern; only its HMAC pseudonym is stored.")] = None,
    meta: Annotated[list[str] | None, typer.Option(help="Metadata key=value stored on every chunk (repeatable).")] = None,
    chunk_tokens: Annotated[int, typer.Option(help="Tokens per chunk.")] = 400,
    overlap: Annotated[int, typer.Option(help="Tokens shared by consecutive chunks.")] = 50,
    batch: Annotated[int, typer.Option(help="Chunks per embeddings call and per write.")] = 64,
    config: ConfigOpt = None,
) -> None:
    """Chunk, embed and store documents; re-running writes only what changed."""
    from gateway.rag.cli import run_ingest

    run_ingest(_config(config), path, tenant, collection, subject_id, meta or [], chunk_tokens, overlap, batch)


@rag_app.command("count")
def rag_count(tenant: Annotated[str, typer.Option(help="Tenant.")],
              collection: Annotated[str, typer.Option(help="Collection.")], config: ConfigOpt = None) -> None:
    """Print how many chunks a tenant has in a collection."""
    from gateway.rag.cli import run_count

    run_count(_config(config), tenant, collection)


@rag_app.command("delete-subject")
def rag_delete_subject(subject_id: Annotated[str, typer.Option(help="The data subject's id (pseudonymised).")],
                       config: ConfigOpt = None) -> None:
    """Delete every chunk concerning a data subject, in every collection (right to erasure)."""
    from gateway.rag.cli import run_delete_subject

    run_delete_subject(_config(config), subject_id)


PathsArg = Annotated[list[Path] | None, typer.Argument(
    help="Policy files or directories. Default: server.policies_dir from the config.")]


def _bundle(config: Config, paths: list[Path] | None) -> Bundle:
    from gateway.bundle import load_bundle

    try:
        return load_bundle(paths or [Path(config.server.policies_dir)])
    except ConfigError as exc:
        _invalid(exc)


@policy_app.command("check")
def policy_check(
    paths: PathsArg = None, config: ConfigOpt = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 on any loosening of a default that has no `reason:` next to it.")] = False,
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
    out.print(f"ok: policy bundle {bundle.hash}, {len(bundle.tenants)} tenants, {len(loosenings)} loosening(s)"
              f"{', each with a reason' if loosenings and not unexplained else ''}", highlight=False)


@policy_app.command("show")
def policy_show(
    tenant: Annotated[str | None, typer.Option(help="Tenant (omit for the defaults every unlisted tenant gets).")] = None,
    app_: Annotated[str | None, typer.Option("--app", help="App of the tenant (omit for the tenant layer).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    diff_defaults: Annotated[bool, typer.Option(
        "--diff-defaults", help="Only the values this tenant or app changes.")] = False,
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
    width = min(max((len(v["path"]) + len(_short(v["value"])) for s in shown["sections"] for v in s["values"]),
                    default=0) + 4, 60)
    for section in shown["sections"]:
        out.print(f"[bold]{section['title']}[/bold]", highlight=False)
        for v in section["values"]:
            text = f"  {v['path']}: {_short(v['value'])}"
            out.print(f"{text:<{width}}  {v['from']}" if len(text) <= width else f"{text}\n{'':<{width}}  {v['from']}",
                      highlight=False)
    for item in shown["loosenings"]:
        out.print(f"[yellow]loosening[/yellow] {item}", highlight=False)


def _short(value: object) -> str:
    import orjson

    return value if isinstance(value, str) else orjson.dumps(value).decode()


@policy_app.command("test")
def policy_test(
    paths: PathsArg = None, config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("-v", help="Print PASS lines too.")] = True,
    show_coverage: Annotated[bool, typer.Option(
        "--coverage", help="Print, per tenant/app and policy, the decisions the cases exercised.")] = False,
    min_coverage: Annotated[float | None, typer.Option(
        help="Exit 1 when fewer than this percentage of (tenant/app, policy) pairs have a decision exercised.")
    ] = None,
) -> None:
    """Run the `*_test.yaml` cases next to the policies, like `opa test`. Exit 1 when a case fails."""
    import asyncio

    from gateway.policytest import CaseResult, coverage, run_cases

    cfg = _config(config)
    roots = paths or [Path(cfg.server.policies_dir)]
    bundle = _bundle(cfg, [p for p in roots if p.is_dir() or not p.name.endswith("_test.yaml")] or roots)
    files = [f for r in roots for f in (sorted(r.glob("*_test.yaml")) if r.is_dir() else [r])
             if f.name.endswith("_test.yaml")]
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
        out.print(f"coverage: {len(covered)}/{len(rows)} (tenant/app, policy) pairs, {percent:.0f}%"
                  + (f"; untested: {untested}" if untested else ""), highlight=False)
        low = min_coverage is not None and percent < min_coverage
        if low:
            out.print(f"[red]coverage {percent:.0f}% is under --min-coverage {min_coverage:g}[/red]", highlight=False)
    if failed or not files or low:
        raise typer.Exit(1)


@policy_app.command("explain")
def policy_explain(
    tenant: Annotated[str, typer.Option(help="Tenant of the calling key.")],
    app_: Annotated[str, typer.Option("--app", help="App of the calling key.")],
    model: Annotated[str, typer.Option(help="Public model name.")],
    message: Annotated[str, typer.Option(help="The user message.")] = "Hello",
    subject: Annotated[str | None, typer.Option(help="Data subject id (OpenAI `user`).")] = None,
    consent: Annotated[list[str] | None, typer.Option(
        help="Treat the subject as having consented to this purpose (repeatable); overrides the registry.")] = None,
    no_consent: Annotated[bool, typer.Option(
        "--no-consent", help="Treat the subject as having no consent at all; overrides the registry.")] = False,
    fail: Annotated[list[str] | None, typer.Option(help="Simulate this deployment failing (repeatable).")] = None,
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
    request = SimRequest(tenant=tenant, app=app_, model=model, message=message, subject=subject,
                         data_class=data_class)
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
        from gateway.router import Router, embed_via
        from gateway.upstreams import build

        names = {d for alias in cfg.models.values() if alias.type == "embeddings" for d in alias.deployments}
        router = Router({n: build(n, cfg.deployments[n]) for n in names})
        try:
            return await simulate(cfg, bundle, request, consent or [], failing, registry=registry,
                                  embed=lambda model, texts, allowed: embed_via(cfg, router, model, texts, allowed))
        finally:
            for upstream in router.upstreams.values():
                await upstream.close()

    outcome = asyncio.run(run())
    chain = bundle.chain_for(tenant, app_).policies
    out.print(f"policy bundle {bundle.hash}; chain for {tenant}/{app_}: "
              f"{', '.join(p.name + (' (shadow)' if p.mode == 'shadow' else '') for p in chain) or '(empty)'}",
              highlight=False)
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
        out.print(f"[green]routed[/green] to {outcome.deployment} "
                  f"({cfg.deployments[outcome.deployment or ''].jurisdiction})", highlight=False)


@consent_app.command("grant")
def consent_grant(
    tenant: Annotated[str, typer.Option(help="Tenant.")],
    subject: Annotated[str, typer.Option(help="Data subject id; only its pseudonym is stored.")],
    purpose: Annotated[str, typer.Option(help="Purpose, e.g. llm_fallback_gpt4.")],
    evidence: Annotated[str, typer.Option(help="Where the proof of consent is kept.")] = "",
    days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Record an explicit consent."""
    from datetime import timedelta

    from gateway.store import consent

    engine, pseudonym = _engine(config), _pseudonymiser(config)
    row = consent.grant(engine, tenant=tenant, subject=pseudonym(subject), purpose=purpose, evidence_ref=evidence,
                        expires_in=timedelta(days=days) if days else None)
    out.print(f"granted {row.id}", highlight=False)


@consent_app.command("withdraw")
def consent_withdraw(
    tenant: Annotated[str, typer.Option(help="Tenant.")],
    subject: Annotated[str, typer.Option(help="Data subject id.")],
    purpose: Annotated[str, typer.Option(help="Purpose.")],
    config: ConfigOpt = None,
) -> None:
    """Withdraw consent; new requests stop using it within 2 s in every worker."""
    from gateway.store import consent

    n = consent.withdraw(_engine(config), tenant=tenant, subject=_pseudonymiser(config)(subject), purpose=purpose)
    out.print(f"withdrew {n} consent(s)")
    if not n:
        raise typer.Exit(1)


@consent_app.command("list")
def consent_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    subject: Annotated[str | None, typer.Option(help="Only this data subject.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of objects.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List consents (subjects are shown as pseudonyms)."""
    from gateway.store import consent

    rows = consent.list_consents(_engine(config), tenant=tenant,
                                 subject=_pseudonymiser(config)(subject) if subject else None)
    if as_json:
        _print_json([{"id": r.id, "tenant": r.tenant, "subject": r.subject, "purpose": r.purpose,
                      "granted_at": r.granted_at, "expires_at": r.expires_at, "withdrawn_at": r.withdrawn_at,
                      "evidence_ref": r.evidence_ref} for r in rows])
        return
    _print_columns(["id", "tenant", "subject (pseudonym)", "purpose", "granted", "expires", "withdrawn", "evidence"],
                   [[r.id, r.tenant, r.subject, r.purpose, _minute(r.granted_at),
                     f"{r.expires_at:%Y-%m-%d}" if r.expires_at else "", _minute(r.withdrawn_at), r.evidence_ref]
                    for r in rows])


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None) -> None:
    """Recompute the audit hash chains; exit 1 if a record was modified, deleted or never written."""
    from gateway import audit

    engine = _engine(config)
    checked, problems = audit.verify(engine)
    for problem in problems:
        err.print(f"[red]problem[/red] {problem}", highlight=False)
    for chain, last in audit.open_chains(engine):
        err.print(f"[yellow]open[/yellow] chain {chain}: no end mark yet (its process is running, or was killed "
                  f"and no gateway has started since to recover its write-ahead file); records after seq {last} "
                  "cannot be checked yet", highlight=False)
    out.print(f"{checked} records checked, {len(problems)} problems")
    if problems:
        raise typer.Exit(1)


@audit_app.command("show")
def audit_show(request_id: str, config: ConfigOpt = None) -> None:
    """Print the decision record of one request as JSON (waits a moment for a record still being written)."""
    import time

    import orjson

    from gateway import audit

    cfg = _config(config)
    engine = _engine(config)
    # A running gateway writes records in batches (storage.writer_flush_interval_s): give a fresh one time.
    deadline = time.monotonic() + max(2.0, 4 * cfg.storage.writer_flush_interval_s)
    while (row := audit.fetch(engine, request_id)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if row is None:
        err.print("no such record")
        raise typer.Exit(1)
    record = row.model_dump()
    record = {name: record[name] for name in type(row).model_fields}  # the table's column order
    for field in ("decisions", "attempts"):  # stored as JSON text (hashed as such); shown as JSON
        record[field] = orjson.loads(record[field])
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2, default=str).decode())


def _pseudonymiser(path: Path | None) -> Callable[[str], str]:
    from gateway.identity import pseudonymiser

    return pseudonymiser(_config(path).server.secret_key)


@usage_app.command("report")
def usage_report(
    tenant: Annotated[str, typer.Option(help="Tenant to report on.")],
    since: Annotated[str, typer.Option(help="Window ending now: 30d, 12h, 2w.")] = "30d",
    by: Annotated[str, typer.Option(help="Group by model, app, deployment, jurisdiction or key.")] = "model",
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print a JSON array of objects (cost_eur as an exact decimal string, as in the ledger)."))] = False,
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
        _print_json([{by: ln.group, "requests": ln.requests, "prompt_tokens": ln.prompt_tokens,
                      "completion_tokens": ln.completion_tokens, "cost_eur": f"{ln.cost_eur:.6f}",
                      "estimated": ln.estimated} for ln in lines])
        return
    header = [by, "requests", "prompt_tokens", "completion_tokens", "cost_eur", "estimated"]
    rows = [[ln.group, str(ln.requests), str(ln.prompt_tokens), str(ln.completion_tokens),
             f"{ln.cost_eur:.6f}", str(ln.estimated)] for ln in lines]
    if csv_:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return
    total = sum((ln.cost_eur for ln in lines), start=Decimal(0))  # exact, as in the ledger
    out.print(f"usage of tenant {tenant!r}, last {since}", highlight=False)
    _print_columns(header, [*rows, ["total", *(str(sum(getattr(ln, f) for ln in lines)) for f in (
        "requests", "prompt_tokens", "completion_tokens")), f"{total:.6f}", str(sum(ln.estimated for ln in lines))]])


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
