"""``gateway`` command line.

Exit codes: 0 success, 1 a check found problems or a command failed, 2 invalid usage or an
invalid configuration file.
"""

from __future__ import annotations

import sys

from gateway.cli import (  # noqa: F401  (serve: root commands; policy_run: policy test/explain)
    audit,
    config_db,
    consent,
    keys,
    policy,
    policy_run,
    rag,
    retention,
    serve,
    subject,
    usage,
)
from gateway.cli.common import app

# One module per command group, listed by `gateway --help` in this order.
app.add_typer(keys.keys_app, name="keys")
app.add_typer(config_db.config_app, name="config")
app.add_typer(config_db.db_app, name="db")
app.add_typer(policy.policy_app, name="policy")
app.add_typer(consent.consent_app, name="consent")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(subject.subject_app, name="subject")
app.add_typer(rag.rag_app, name="rag")
app.add_typer(retention.retention_app, name="retention")
app.add_typer(usage.usage_app, name="usage")

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
