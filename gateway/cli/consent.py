"""`gateway consent`: grant, withdraw and list consents."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.common import (
    ConfigOpt,
    _engine,
    _minute,
    _print_columns,
    _print_json,
    _pseudonymiser,
    out,
)

consent_app = typer.Typer(help="The consent registry: grant, withdraw, list.", no_args_is_help=True)


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
    row = consent.grant(
        engine,
        tenant=tenant,
        subject=pseudonym(subject),
        purpose=purpose,
        evidence_ref=evidence,
        expires_in=timedelta(days=days) if days else None,
    )
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

    n = consent.withdraw(
        _engine(config), tenant=tenant, subject=_pseudonymiser(config)(subject), purpose=purpose
    )
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

    rows = consent.list_consents(
        _engine(config), tenant=tenant, subject=_pseudonymiser(config)(subject) if subject else None
    )
    if as_json:
        _print_json(
            [
                {
                    "id": r.id,
                    "tenant": r.tenant,
                    "subject": r.subject,
                    "purpose": r.purpose,
                    "granted_at": r.granted_at,
                    "expires_at": r.expires_at,
                    "withdrawn_at": r.withdrawn_at,
                    "evidence_ref": r.evidence_ref,
                }
                for r in rows
            ]
        )
        return
    _print_columns(
        ["id", "tenant", "subject (pseudonym)", "purpose", "granted", "expires", "withdrawn", "evidence"],
        [
            [
                r.id,
                r.tenant,
                r.subject,
                r.purpose,
                _minute(r.granted_at),
                f"{r.expires_at:%Y-%m-%d}" if r.expires_at else "",
                _minute(r.withdrawn_at),
                r.evidence_ref,
            ]
            for r in rows
        ],
    )
