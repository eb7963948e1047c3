"""``retention:`` in config.yaml: how long each class of data is kept (docs/compliance.md)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer

from gateway.config.deployments import Strict

_PERIOD = re.compile(r"^\s*(-?\d+)\s*([hdw])\s*$")
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def _period(value: object) -> timedelta:
    if isinstance(value, timedelta):
        parsed = value
    else:
        match = _PERIOD.match(str(value)) if isinstance(value, str) else None
        if match is None:
            raise ValueError("a period is a whole number of hours, days or weeks: '12h', '400d', '52w'")
        parsed = int(match.group(1)) * _UNIT[match.group(2)]
    if parsed <= timedelta(0):
        raise ValueError("a retention period must be longer than 0 (leave the key out to keep the data)")
    return parsed


def _text(value: timedelta) -> str:
    hours = int(value.total_seconds()) // 3600
    return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"


Period = Annotated[timedelta, BeforeValidator(_period), PlainSerializer(_text, return_type=str)]


class Retention(Strict):
    ledger: Period | None = Field(
        None, description="Delete usage ledger rows older than this (e.g. '400d'). Unset: kept."
    )
    audit: Period | None = Field(
        None,
        description="Delete audit records older than this; a signed checkpoint keeps each chain verifiable. "
        "Unset: kept.",
    )
    consent_history: Period | None = Field(
        None, description="Delete consents withdrawn or expired longer ago than this. Active ones are kept."
    )
    rag_chunks: Period | None = Field(None, description="Delete RAG chunks ingested longer ago than this.")
    spool: Period | None = Field(
        None,
        description="Delete the writer's spooled and quarantined row files (never a live write-ahead file) "
        "older than this.",
    )
    interval: Period = Field(
        timedelta(hours=1), description="How often one elected worker runs the purge (e.g. '1h')."
    )
    batch_size: int = Field(5000, ge=1, le=100_000, description="Rows per delete statement.")

    def periods(self) -> dict[str, timedelta]:
        """The data classes with a period set."""
        names = ("ledger", "audit", "consent_history", "rag_chunks", "spool")
        return {n: p for n in names if (p := getattr(self, n)) is not None}
