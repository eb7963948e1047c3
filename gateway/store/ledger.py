"""The usage ledger: one row per proxied request, written by the batched writer.

No prompt or completion text is ever stored; the subject is the keyed pseudonym. ``cost_eur``
is an exact decimal; ``fx_rate`` is the EUR-per-USD rate used when the price was in USD (1 when
it was in EUR).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Column, DateTime, Index, Numeric
from sqlmodel import Field, SQLModel

from gateway.store.db import utcnow

COST = Numeric(20, 10)
RATE = Numeric(12, 6)


class UsageRecord(SQLModel, table=True):
    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_tenant_at", "tenant", "at"),
        Index("ix_usage_ledger_key_at", "key_id", "at"),
        Index("ix_usage_ledger_subject", "subject"),  # erasure by pseudonym
    )

    request_id: str = Field(primary_key=True, max_length=32)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    tenant: str = Field(max_length=128)
    app: str = Field(max_length=128)
    key_id: str = Field(max_length=32)
    subject: str | None = Field(default=None, max_length=64, description="keyed pseudonym, never the raw id")
    endpoint: str = Field(default="chat", max_length=16)
    model: str = Field(max_length=128, description="public model name")
    deployment: str = Field(default="none", max_length=128)
    jurisdiction: str = Field(default="none", max_length=8)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_eur: Decimal = Field(default=Decimal(0), sa_column=Column(COST, nullable=False))
    estimated: bool = False
    fx_rate: Decimal = Field(default=Decimal(1), sa_column=Column(RATE, nullable=False))
    price_source: str = Field(default="none", max_length=16, description="config, litellm or none")
    status: int = 0
    latency_ms: float = 0.0
