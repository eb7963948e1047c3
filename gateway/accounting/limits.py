"""Budget and rate-limit windows turned into counter keys, and refusal messages.

Windows are fixed and aligned to UTC: a calendar day, a calendar month, a clock minute. A
window's counter key carries its start, so a new window starts from zero and old keys expire.
Keys hash-tag the tenant (``{acme}``), so a Redis cluster keeps one request's keys together.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Literal

from gateway import metrics
from gateway.store.counters import Limit

if TYPE_CHECKING:
    from gateway.accounting.settings import Budget, RateLimit

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
        return (
            f"The {when} {what} of {self.scope} '{self.owner}' ({amount}) does not allow this request; "
            f"it resets at {self.resets_at:%Y-%m-%dT%H:%M:%SZ}."
        )


def check(
    kind: Literal["budget", "rate_limit"],
    scope: Scope,
    owner_: str,
    tenant: str,
    period: Period,
    unit: Literal["eur", "tokens", "requests"],
    limit: int,
    now: datetime,
) -> Check:
    """The check for the window containing ``now``; it stays valid until the next whole minute."""
    minute = now.replace(second=0, microsecond=0)
    wid, end = _window(period, minute)
    ttl = int((end - minute).total_seconds()) + 3600  # settles arriving after the window ends still land
    key = f"{{{tenant}}}:{kind}:{scope}:{owner_}:{period}:{wid}:{unit}"
    return Check(key, limit, ttl, kind, scope, owner_, period, unit, end)


def utcnow() -> datetime:
    return datetime.now(UTC)


def checks_of(
    budgets: list[Budget], rate_limits: list[RateLimit], tenant: str, app: str, key_id: str, now: datetime
) -> tuple[Check, ...]:
    """The checks one key's request must pass: each budget's EUR and token limits, each rate limit's."""
    out = []
    for b in budgets:
        who = owner(b.scope, tenant, app, key_id)
        if b.eur is not None:
            out.append(check("budget", b.scope, who, tenant, b.period, "eur", nano_eur(b.eur), now))
        if b.tokens is not None:
            out.append(check("budget", b.scope, who, tenant, b.period, "tokens", b.tokens, now))
    for r in rate_limits:
        who = owner(r.scope, tenant, app, key_id)
        if r.rpm is not None:
            out.append(check("rate_limit", r.scope, who, tenant, "minute", "requests", r.rpm, now))
        if r.tpm is not None:
            out.append(check("rate_limit", r.scope, who, tenant, "minute", "tokens", r.tpm, now))
    return tuple(out)


def publish_gauges(checks: tuple[Check, ...], values: list[int], last: dict[str, float]) -> None:
    """Set the budget gauges to the counters' ``values``; each at most once a second (``last``: when each was set),
    since budgets move with every request."""
    now = time.monotonic()
    for c, v in zip(checks, values, strict=False):
        if c.kind != "budget" or now - last.get(c.key, 0.0) < 1.0:
            continue
        last[c.key] = now
        who = c.owner
        if c.scope == "tenant":
            who = metrics.tenant_label(who)
        elif c.scope == "app":
            tenant, _, app = who.partition("/")
            who = f"{metrics.tenant_label(tenant)}/{metrics.app_label(app)}"
        scale = float(NANO) if c.unit == "eur" else 1.0
        metrics.BUDGET_LIMIT.labels(c.scope, who, c.period, c.unit).set(c.max / scale)
        metrics.BUDGET_USED.labels(c.scope, who, c.period, c.unit).set(v / scale)
