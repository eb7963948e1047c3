"""`gateway keys`: issue, list and revoke virtual API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.common import (
    ConfigOpt,
    _engine,
    _minute,
    _print_columns,
    _print_json,
    _split,
    err,
    out,
)

keys_app = typer.Typer(help="Issue, list and revoke virtual API keys.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    app_: Annotated[str, typer.Option("--app", help="Application the key belongs to.")],
    models: Annotated[str, typer.Option(help="Comma-separated public model names, or '*'.")] = "*",
    scopes: Annotated[
        str,
        typer.Option(
            help=(
                "Comma-separated scopes: chat, embeddings, models, admin (its own tenant), global_admin (every tenant; "
                "only this command issues it)."
            )
        ),
    ] = ("chat,embeddings"),
    name: Annotated[str, typer.Option(help="Free-text label (no personal data).")] = "",
    config: ConfigOpt = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from gateway import auth

    engine = _engine(config)
    try:
        key, row = auth.create_key(
            engine, tenant=tenant, app=app_, models=_split(models), scopes=_split(scopes), name=name
        )
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
        _print_json(
            [
                {
                    "key_id": r.key_id,
                    "tenant": r.tenant,
                    "app": r.app,
                    "models": _split(r.models),
                    "scopes": _split(r.scopes),
                    "name": r.name,
                    "created_at": r.created_at,
                    "revoked_at": r.revoked_at,
                }
                for r in rows
            ]
        )
        return
    _print_columns(
        ["key id", "tenant", "app", "models", "scopes", "name", "created", "revoked"],
        [
            [
                r.key_id,
                r.tenant,
                r.app,
                r.models,
                r.scopes,
                r.name,
                _minute(r.created_at),
                _minute(r.revoked_at),
            ]
            for r in rows
        ],
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`, or the key itself.")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a key; every worker stops accepting it within server.key_refresh_s seconds."""
    from gateway import auth

    if key_id.startswith(auth.PREFIX):  # the key itself (sk-gw-<key id>-<secret>): revoke by its id
        key_id = key_id[len(auth.PREFIX) :].partition("-")[0]
    if not auth.revoke_key(_engine(config), key_id):
        err.print(f"[red]error[/red] no active key {key_id!r}")
        raise typer.Exit(1)
    out.print(f"revoked {key_id}", highlight=False)
