"""`gateway audit`: verify and show the hash-chained audit trail."""

from __future__ import annotations

import typer

from gateway.cli.common import (
    ConfigOpt,
    _config,
    _engine,
    err,
    out,
)

audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None) -> None:
    """Recompute the audit hash chains; exit 1 if a record was modified, deleted or never written."""
    from gateway import audit

    engine = _engine(config)
    checked, problems = audit.verify(engine, _config(config).server.secret_key)
    for problem in problems:
        err.print(f"[red]problem[/red] {problem}", highlight=False)
    for chain, last in audit.open_chains(engine):
        err.print(
            f"[yellow]open[/yellow] chain {chain}: no end mark yet (its process is running, or was killed "
            f"and no gateway has started since to recover its write-ahead file); records after seq {last} "
            "cannot be checked yet",
            highlight=False,
        )
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
