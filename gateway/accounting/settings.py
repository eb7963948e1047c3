"""The ``token_accounting`` policy's settings: budgets, rate limits, leases, backend failure and ledger.

Pydantic models only; how they are applied: docs/accounting.md.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Literal["tenant", "app", "key"] = Field(
        ..., description="Whose spending: the tenant, the app or the key."
    )
    period: Literal["day", "month"] = Field(..., description="UTC calendar day or month.")
    eur: Decimal | None = Field(None, gt=0, description="Most EUR this scope may spend per period.")
    tokens: int | None = Field(None, gt=0, description="Most tokens (prompt + completion) per period.")

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.eur is None and self.tokens is None:
            raise ValueError("a budget needs `eur`, `tokens` or both")
        return self


class Lease(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(
        0.01, ge=0, le=0.1, description="Most of a limit one worker may hold as a lease; 0 turns leases off."
    )
    requests: int = Field(64, ge=1, description="Most requests' worth of a counter one lease may hold.")
    seconds: float = Field(1.0, gt=0, le=60, description="An unused lease is given back after this long.")


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Literal["key", "app"] = Field(..., description="Counted per API key or per app.")
    rpm: int | None = Field(None, gt=0, description="Requests per clock minute.")
    tpm: int | None = Field(None, gt=0, description="Tokens (prompt + reserved completion) per clock minute.")


class AccountingSettings(BaseModel):
    """Budgets, rate limits, what happens when Redis is down, the ledger, and leases."""

    model_config = ConfigDict(extra="forbid")
    budgets: list[Budget] = Field(
        [], description="Spending limits; each applies to every tenant/app/key in scope."
    )
    rate_limits: list[RateLimit] = Field([], description="Request and token rates per key or app.")
    default_max_tokens: int = Field(
        1024, ge=0, description="Completion tokens reserved when a request sets no `max_tokens`."
    )
    on_backend_error: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed",
        description="Redis unreachable: `fail_closed` answers 503; `fail_open` counts in-process.",
    )
    ledger: bool = Field(True, description="Write one usage-ledger row per request.")
    key_prefix: str = Field("gw:acct", min_length=1, description="Prefix of the counter keys in Redis.")
    lease: Lease = Field(
        default_factory=Lease,
        description=(
            "Per-worker leases on Redis counters, so most requests reserve without a round trip "
            "(see docs/accounting.md)."
        ),
    )


def loosened(
    before: AccountingSettings | None, after: AccountingSettings
) -> list[tuple[tuple[str | int, ...], str]]:
    """What ``after`` weakens compared with ``before``: limits raised or dropped, fail-open, no ledger."""
    if before is None:
        return []
    out: list[tuple[tuple[str | int, ...], str]] = []
    for key, fields in (("budgets", ("eur", "tokens")), ("rate_limits", ("rpm", "tpm"))):
        for old in getattr(before, key):
            ident = (old.scope, getattr(old, "period", None))
            same = [new for new in getattr(after, key) if (new.scope, getattr(new, "period", None)) == ident]
            label = "/".join(str(p) for p in ident if p)
            for f in fields:
                limit = getattr(old, f)
                kept = [getattr(new, f) for new in same if getattr(new, f) is not None]
                if limit is not None and (not kept or min(kept) > limit):
                    what = f"raised to {min(kept)}" if kept else "dropped"
                    out.append(((key,), f"{key[:-1].replace('_', ' ')} {label} {f} {limit} {what}"))
    if before.on_backend_error == "fail_closed" and after.on_backend_error == "fail_open":
        out.append((("on_backend_error",), "limits are no longer enforced while Redis is down"))
    if before.ledger and not after.ledger:
        out.append((("ledger",), "requests are no longer written to the usage ledger"))
    return out
