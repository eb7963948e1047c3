"""`gateway subject`: erase (Art. 17) or export (Art. 15) everything held about a data subject, and
check an erasure receipt."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import ConfigOpt, _config, _engine, err, out

subject_app = typer.Typer(
    help="Data subjects: erase or export what is held about one, check a receipt.", no_args_is_help=True
)

Tenant = Annotated[str, typer.Option(help="Tenant.", min=1)]
Subject = Annotated[str, typer.Option(help="The data subject's id (as sent in `user` or X-Subject-Id).")]


def _stores(config_path: Path | None) -> Any:
    from gateway.audit import Auditor
    from gateway.bundle import load_holder
    from gateway.store.rows import DirectWriter
    from gateway.subjects.erase import Stores

    config = _config(config_path)
    engine = _engine(config_path)
    return Stores(config, engine, Auditor(DirectWriter(engine)), load_holder(config).current.hash)


def _check(tenant: str, subject: str) -> None:
    if not tenant.strip() or not subject or len(subject) > 256 or "\x00" in subject:
        err.print(
            "[red]error[/red] --tenant and --subject must be non-empty (subject: at most 256 characters)"
        )
        raise typer.Exit(2)


@subject_app.command("erase")
def subject_erase(
    tenant: Tenant,
    subject: Subject,
    receipt: Annotated[Path | None, typer.Option(help="Also write the signed receipt to this file.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Erase the subject from every store of the tenant and print the signed receipt (JSON).

    Idempotent: run it again after an interruption and it finishes the job. Exit 1 when nothing is held
    about the subject (never seen, or already erased)."""
    from gateway.subjects.erase import erase

    _check(tenant, subject)
    stores = _stores(config)
    signed = asyncio.run(erase(stores, tenant=tenant, subject_id=subject, actor=("cli", "-")))
    if (
        signed is not None
    ):  # the job's record is this command's whole audit chain: mark where it starts and ends
        stores.auditor.start()
        stores.auditor.close()
    text = _answer(signed)
    if receipt is not None:
        receipt.write_text(text + "\n", encoding="utf-8")
    print(text)


@subject_app.command("export")
def subject_export(
    tenant: Tenant,
    subject: Subject,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print (or write) as JSON everything the tenant holds about the subject. Exit 1 when nothing is."""
    from gateway.subjects.export import export

    _check(tenant, subject)
    found = asyncio.run(export(_stores(config), tenant=tenant, subject_id=subject))
    text = _answer(found)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
        out.print(f"wrote {output}")
    else:
        print(text)


@subject_app.command("verify-receipt")
def subject_verify_receipt(
    path: Annotated[Path, typer.Argument(help="The receipt file (JSON); '-' reads stdin.")],
    config: ConfigOpt = None,
) -> None:
    """Check an erasure receipt's signature; exit 1 if it is malformed or was changed."""
    import sys

    from gateway.subjects.receipt import ReceiptError, verify

    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        err.print(f"[red]error[/red] cannot read {path}: {exc.strerror}")
        raise typer.Exit(2) from None
    try:
        checked = verify(raw, _config(config).server.secret_key)
    except ReceiptError as exc:
        err.print(f"[red]invalid[/red] receipt: {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(
        f"valid: erasure job {checked.get('job_id')} of tenant {checked.get('tenant')}", highlight=False
    )


def _answer(found: dict[str, Any] | None) -> str:
    """The answer as indented JSON; exit 1 when nothing is held about the subject."""
    import orjson

    if found is None:
        err.print("nothing is held about this subject in this tenant (never seen, or already erased)")
        raise typer.Exit(1)
    return orjson.dumps(found, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode()
