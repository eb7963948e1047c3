"""Budget and rate-limit windows, counter keys and refusal messages (gateway/accounting/limits.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.accounting.limits import _window, check, nano_eur, owner, utcnow, window
from gateway.store.counters import Limit


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def test_money_is_counted_in_whole_nano_euros_rounded_up() -> None:
    assert nano_eur(Decimal("1")) == 1_000_000_000
    assert nano_eur(Decimal("0.0000000001")) == 1  # a tenth of a nano-euro still counts as one
    assert nano_eur(Decimal("0.0000123456")) == 12346
    assert nano_eur(Decimal("0.000000002")) == 2
    assert nano_eur(Decimal("0")) == 0


@pytest.mark.parametrize(
    ("period", "now", "wid", "end"),
    [
        ("minute", at(2026, 11, 30, 23, 59, 59, 999999), "202611302359", at(2026, 12, 1, 0, 0)),
        ("minute", at(2026, 11, 30, 10, 5), "202611301005", at(2026, 11, 30, 10, 6)),
        ("day", at(2026, 11, 30, 23, 59, 30), "20261130", at(2026, 12, 1)),
        ("day", at(2026, 12, 1, 0, 0), "20261201", at(2026, 12, 2)),
        ("month", at(2026, 12, 31, 23, 59), "202612", at(2027, 1, 1)),
        ("month", at(2026, 2, 1, 0, 0, 1), "202602", at(2026, 3, 1)),
        ("month", at(2026, 1, 31, 12), "202601", at(2026, 2, 1)),
    ],
)
def test_windows_are_utc_calendar_periods(period: str, now: datetime, wid: str, end: datetime) -> None:
    assert window(period, now) == (wid, end)  # type: ignore[arg-type]


def test_one_window_computation_serves_a_whole_minute() -> None:
    # window() drops seconds and microseconds before its cache, so every request of a minute hits it.
    _window.cache_clear()
    for second, micro in [(0, 0), (7, 3), (59, 999999)]:
        assert window("day", at(2026, 11, 30, 10, 5, second, micro)) == ("20261130", at(2026, 12, 1))
    assert _window.cache_info().misses == 1
    assert _window.cache_info().hits == 2


def test_each_scope_has_its_owner() -> None:
    assert owner("tenant", "acme", "chat", "k1") == "acme"
    assert owner("app", "acme", "chat", "k1") == "acme/chat"
    assert owner("key", "acme", "chat", "k1") == "k1"


def test_a_check_names_its_counter_window_and_lifetime() -> None:
    now = at(2026, 11, 30, 22, 10, 42, 5)
    c = check("budget", "app", "acme/chat", "acme", "day", "eur", 5_000_000_000, now)
    assert c.key == "{acme}:budget:app:acme/chat:day:20261130:eur"
    assert c.resets_at == at(2026, 12, 1)
    assert c.ttl_s == int(timedelta(hours=1, minutes=50).total_seconds()) + 3600  # from the whole minute
    assert (c.kind, c.scope, c.owner, c.period, c.unit, c.max) == (
        "budget",
        "app",
        "acme/chat",
        "day",
        "eur",
        5_000_000_000,
    )
    assert c.name == "app:day:eur"
    assert c.limit(7) == Limit(c.key, 5_000_000_000, 7, c.ttl_s)
    rate = check("rate_limit", "key", "k1", "acme", "minute", "requests", 600, now)
    assert rate.key == "{acme}:rate_limit:key:k1:minute:202611302210:requests"
    assert rate.ttl_s == 60 + 3600
    assert rate.resets_at == at(2026, 11, 30, 22, 11)


def test_retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() -> None:
    c = check("rate_limit", "key", "k1", "acme", "minute", "requests", 10, at(2026, 11, 30, 10, 0, 5))
    assert c.retry_after(at(2026, 11, 30, 10, 0, 30)) == 30
    assert c.retry_after(at(2026, 11, 30, 10, 0, 30, 500_000)) == 30  # 29.5 s -> 30
    assert c.retry_after(at(2026, 11, 30, 10, 0, 59, 999_000)) == 1
    assert c.retry_after(at(2026, 11, 30, 10, 1, 5)) == 1  # already past: still at least 1


def test_refusal_messages_say_which_limit_of_whom_and_when_it_resets() -> None:
    now = at(2026, 11, 30, 10, 0)
    assert check(
        "budget", "tenant", "acme", "acme", "month", "eur", nano_eur(Decimal("5000")), now
    ).message() == (
        "The monthly budget of tenant 'acme' (5000.00 EUR) does not allow this request; "
        "it resets at 2026-12-01T00:00:00Z."
    )
    assert check("budget", "key", "k1", "acme", "day", "tokens", 2_000_000, now).message() == (
        "The daily budget of key 'k1' (2000000 tokens) does not allow this request; "
        "it resets at 2026-12-01T00:00:00Z."
    )
    assert check("rate_limit", "app", "acme/chat", "acme", "minute", "requests", 600, now).message() == (
        "The per-minute rate limit of app 'acme/chat' (600 requests) does not allow this request; "
        "it resets at 2026-11-30T10:01:00Z."
    )


def test_utcnow_is_aware_utc() -> None:
    assert utcnow().tzinfo is UTC
