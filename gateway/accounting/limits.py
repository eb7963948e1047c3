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


@dataclass(frozen=True, slots=True)
class Check:
    """One limit of one principal in the current window: the counter, and how to explain a refusal.

    Nothing in it depends on the request, so a principal's checks are built once per minute;
    ``limit(amount)`` makes the per-request reservation.
    """

    key: str  # the counter, without the store's prefix
    max: int
    ttl_s: int
    kind: Literal["budget", "rate_limit"]
    scope: Scope
    owner: str
    period: Period
    unit: Literal["eur", "tokens", "requests"]
    resets_at: datetime

    def limit(self, amount: int) -> Limit:
        return Limit(self.key, self.max, amount, self.ttl_s)

    @property
    def name(self) -> str:
        """Bounded identifier for metrics and decision records, e.g. ``tenant:day:eur``."""
        return f"{self.scope}:{self.period}:{self.unit}"

    def retry_after(self, now: datetime) -> int:
        return max(1, int((self.resets_at - now).total_seconds() + 0.999))

    def message(self) -> str:
        amount = f"{Decimal(self.max) / NANO:.2f} EUR" if self.unit == "eur" else f"{self.max} {self.unit}"
        when = {"day": "daily", "month": "monthly", "minute": "per-minute"}[self.period]
        what = "budget" if self.kind == "budget" else "rate limit"
        return (f"The {when} {what} of {self.scope} '{self.owner}' ({amount}) does not allow this request; "
                f"it resets at {self.resets_at:%Y-%m-%dT%H:%M:%SZ}.")


def check(kind: Literal["budget", "rate_limit"], scope: Scope, owner_: str, tenant: str, period: Period,
          unit: Literal["eur", "tokens", "requests"], limit: int, now: datetime) -> Check:
    """The check for the window containing ``now``; it stays valid until the next whole minute."""
    minute = now.replace(second=0, microsecond=0)
    wid, end = _window(period, minute)
    ttl = int((end - minute).total_seconds()) + 3600  # settles arriving after the window ends still land
    key = f"{{{tenant}}}:{kind}:{scope}:{owner_}:{period}:{wid}:{unit}"
    return Check(key, limit, ttl, kind, scope, owner_, period, unit, end)


def utcnow() -> datetime:
    return datetime.now(UTC)
