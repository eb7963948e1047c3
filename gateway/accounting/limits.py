"""Budget and rate-limit windows turned into counter keys, and refusal messages.

Windows are fixed and aligned to UTC: a calendar day, a calendar month, a clock minute. A
window's counter key carries its start, so a new window starts from zero and old keys expire.
Keys hash-tag the tenant (``{acme}``), so a Redis cluster keeps one request's keys together.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Literal

from gateway.store.counters import Limit

NANO = Decimal(1_000_000_000)
Scope = Literal["tenant", "app", "key"]
Period = Literal["day", "month", "minute"]


def nano_eur(eur: Decimal) -> int:
    """Money in counters: whole nano-euros, rounded up so reservations never undercount."""
    return int((eur * NANO).to_integral_value(ROUND_CEILING))


def window(period: Period, now: datetime) -> tuple[str, datetime]:
    """(window id, when the window ends) for ``now`` (UTC)."""
    return _window(period, now.replace(second=0, microsecond=0))


@functools.lru_cache(maxsize=64)
def _window(period: Period, now: datetime) -> tuple[str, datetime]:
    # Every window boundary is a whole minute, so one computation serves a whole minute.
    if period == "minute":
        start = now.replace(second=0, microsecond=0)
        return start.strftime("%Y%m%d%H%M"), start + timedelta(minutes=1)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y%m%d"), start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start.strftime("%Y%m"), end


def owner(scope: Scope, tenant: str, app: str, key_id: str) -> str:
    if scope == "tenant":
        return tenant
    return f"{tenant}/{app}" if scope == "app" else key_id


@dataclass(slots=True)
class Check:
    """One limit applied to one request: the counter, and how to explain a refusal."""

    limit: Limit
    kind: Literal["budget", "rate_limit"]
    scope: Scope
    owner: str
    period: Period
    unit: Literal["eur", "tokens", "requests"]
    resets_at: datetime

    @property
    def name(self) -> str:
        """Bounded identifier for metrics and decision records, e.g. ``tenant:day:eur``."""
        return f"{self.scope}:{self.period}:{self.unit}"

    def retry_after(self, now: datetime) -> int:
        return max(1, int((self.resets_at - now).total_seconds() + 0.999))

    def message(self) -> str:
        if self.unit == "eur":
            amount = f"{Decimal(self.limit.limit) / NANO:.2f} EUR"
        else:
            amount = f"{self.limit.limit} {self.unit}"
        when = {"day": "daily", "month": "monthly", "minute": "per-minute"}[self.period]
        what = "budget" if self.kind == "budget" else "rate limit"
        return (f"The {when} {what} of {self.scope} '{self.owner}' ({amount}) does not allow this request; "
                f"it resets at {self.resets_at:%Y-%m-%dT%H:%M:%SZ}.")


def check(kind: Literal["budget", "rate_limit"], scope: Scope, owner_: str, tenant: str, period: Period,
          unit: Literal["eur", "tokens", "requests"], limit: int, amount: int, now: datetime) -> Check:
    key, ttl, end = _slot(kind, scope, owner_, tenant, period, unit, now.replace(second=0, microsecond=0))
    return Check(Limit(key, limit, amount, ttl), kind, scope, owner_, period, unit, end)


@functools.lru_cache(maxsize=4096)
def _slot(kind: str, scope: str, owner_: str, tenant: str, period: Period, unit: str,
          minute: datetime) -> tuple[str, int, datetime]:
    # Same counter for a whole minute at least: cached, the per-request cost is one dict lookup.
    wid, end = _window(period, minute)
    ttl = int((end - minute).total_seconds()) + 3600  # settles arriving after the window ends still land
    return f"{{{tenant}}}:{kind}:{scope}:{owner_}:{period}:{wid}:{unit}", ttl, end


def utcnow() -> datetime:
    return datetime.now(UTC)
