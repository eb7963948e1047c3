"""Per-worker leases: requests served from a lease, top-ups, expiry, and no overspend across workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from gateway.accounting.lease import Leases
from gateway.accounting.settle import Settler
from gateway.store.counters import Limit, MemoryCounters, RedisCounters
from gateway.store.resp import RespClient
from tests.conftest import REDIS_URL


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(amount: int = 10) -> list[Limit]:
    return [Limit("eur", 10_000, amount, 60), Limit("rpm", 1_000, 1, 60)]


async def test_requests_are_taken_from_the_lease_until_it_runs_out() -> None:
    store, clock = MemoryCounters(), Clock()
    leases = Leases(Settler(store), clock)
    first = limits()
    assert not leases.take(first)  # nothing held yet
    topup = leases.ask(first, fraction=0.01, requests=4)
    assert [lim.lease for lim in first] == [40, 4]  # min(1% of the limit, 4 requests' worth)
    res = await store.reserve(first)
    leases.granted(first, res.leased, seconds=1, topup=topup)
    assert await store.values(["eur", "rpm"]) == [50, 5]
    assert [leases.take(limits()) for _ in range(5)] == [True, True, True, True, False]
    top_up = limits()
    pending = leases.ask(top_up, fraction=0.01, requests=4)
    assert [lim.lease for lim in top_up] == [40, 4]  # the eur lease is empty, the rpm lease too
    again = limits()
    assert leases.ask(again, fraction=0.01, requests=4) is None
    assert [lim.lease for lim in again] == [0, 0]  # the top-up in flight already asks for it
    leases.cancel(top_up, pending)
    leases.ask(again, fraction=0.01, requests=4)
    assert [lim.lease for lim in again] == [40, 4]


async def test_an_unused_lease_is_given_back_after_it_expires() -> None:
    store, clock = MemoryCounters(), Clock()
    settler = Settler(store, max_delay_s=0.01)
    leases = Leases(settler, clock)
    lims = limits()
    topup = leases.ask(lims, fraction=0.01, requests=4)
    leases.granted(lims, (await store.reserve(lims)).leased, seconds=0.05, topup=topup)
    assert leases.take(limits())
    clock.now += 1
    assert not leases.take(limits())  # expired: the rest is no longer usable
    await asyncio.sleep(0.15)  # the sweep gives it back, the settler sends it
    # What stays counted: the first request's 10 and the 10 taken from the lease before it expired.
    assert await store.values(["eur", "rpm"]) == [20, 2]


async def test_a_lease_smaller_than_one_request_is_not_asked_for() -> None:
    leases = Leases(Settler(MemoryCounters()), Clock())
    lims = [Limit("tiny", 50, 10, 60)]
    leases.ask(lims, fraction=0.01, requests=64)  # 1% of 50 is less than one request
    assert lims[0].lease == 0


async def test_workers_with_leases_never_pass_the_limit_and_give_back_what_they_did_not_use() -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    client = aioredis.from_url(REDIS_URL)
    stores = [RedisCounters(client, prefix, RespClient(REDIS_URL)) for _ in range(4)]
    settlers = [Settler(s, max_delay_s=0.01) for s in stores]
    workers = [Leases(settler) for settler in settlers]
    served = 0

    async def request(i: int) -> None:
        nonlocal served
        store, leases = stores[i % 4], workers[i % 4]
        lims = [Limit("budget", 1_000, 7, 60)]
        if leases.take(lims) or await leases.wait(lims):
            served += 1
            return
        topup = leases.ask(lims, fraction=0.1, requests=8)
        res = await store.reserve(lims, settlers[i % 4].take())
        if res.refused == -1:
            served += 1
            leases.granted(lims, res.leased, seconds=0.05, topup=topup)
        else:
            leases.cancel(lims, topup)

    try:
        for wave in range(40):  # ten requests at a time, spread over the four workers
            await asyncio.gather(*(request(wave * 10 + i) for i in range(10)))
            assert int(cast(bytes, await client.get(f"{prefix}:budget"))) <= 1_000
        # At most one lease per worker (8 requests' worth) was held back from use at the end.
        assert 1_000 // 7 - 4 * 8 <= served <= 1_000 // 7
        await asyncio.sleep(0.3)  # leases expire and are given back
        assert int(cast(bytes, await client.get(f"{prefix}:budget"))) == served * 7
    finally:
        keys = [k async for k in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_requests_arriving_during_a_top_up_wait_for_it_instead_of_calling_redis() -> None:
    calls = 0

    class Counting(MemoryCounters):
        async def reserve(self, limits, settle=()):
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)  # a round trip
            return await super().reserve(limits, settle)

    store = Counting()
    leases = Leases(Settler(store))

    async def request() -> None:
        lims = [Limit("eur", 1_000_000, 10, 60), Limit("rpm", 100_000, 1, 60)]
        if leases.take(lims) or await leases.wait(lims):
            return
        topup = leases.ask(lims, fraction=0.01, requests=64)
        res = await store.reserve(lims)
        assert res.refused == -1
        leases.granted(lims, res.leased, seconds=1, topup=topup)

    await asyncio.gather(*(request() for _ in range(32)))
    # One request went to Redis and asked for the lease; 31 more requests would have, one by one.
    assert calls == 1
    assert await store.values(["eur", "rpm"]) == [10 + 640, 1 + 64]  # 64 requests' worth of each


async def test_a_request_cancelled_during_its_top_up_does_not_leave_the_others_waiting() -> None:
    from gateway.auth import Principal
    from gateway.config import Config
    from gateway.policies.token_accounting import TokenAccounting
    from gateway.policy import Context, Target
    from gateway.services import Services

    config = Config.model_validate(
        {
            "deployments": {
                "eu": {
                    "kind": "openai_compatible",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "mistral-7b-instruct",
                    "jurisdiction": "EU",
                    "region": "fr-par",
                }
            },
            "models": {"m": {"deployments": ["eu"]}},
            "storage": {"redis_url": REDIS_URL},
        }
    )
    services = Services(config=config)
    services.redis = aioredis.from_url(REDIS_URL)
    prefix = f"test:{uuid.uuid4().hex}"
    policy = TokenAccounting(
        TokenAccounting.Config.model_validate(
            {"key_prefix": prefix, "rate_limits": [{"scope": "key", "rpm": 1_000_000}]}
        ),
        services=services,
    )
    principal = Principal("k1", "t", "a", frozenset({"*"}), frozenset({"chat"}))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    stuck = asyncio.Event()
    original = RedisCounters.reserve

    async def first_call_hangs(self, limits, settle=()):
        if not stuck.is_set():
            stuck.set()
            await asyncio.sleep(3600)
        return await original(self, limits, settle)

    def request() -> Any:
        """A new request's reservation (its own run of the policy)."""
        c = Context(principal, "chat", "m", [Target("eu", config.deployments["eu"])])
        return policy.start(c).on_request(c, body)

    RedisCounters.reserve = first_call_hangs  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(request())
        await stuck.wait()  # it asked for the lease and waits for Redis
        second = asyncio.create_task(request())  # waits for that top-up
        await asyncio.sleep(0.05)
        assert not second.done()
        first.cancel()
        await asyncio.wait_for(second, 5)  # goes to Redis itself instead of waiting forever
        await asyncio.wait_for(request(), 5)
    finally:
        RedisCounters.reserve = original  # type: ignore[method-assign]
        keys = [k async for k in services.redis.scan_iter(f"{prefix}:*")]
        if keys:
            await services.redis.delete(*keys)
        await services.redis.aclose()


# --- Leases hook by hook, with a fixed clock and a settler that records what is given back -----------


class Recorder(Settler):
    def __init__(self) -> None:
        super().__init__(MemoryCounters())
        self.given: list[tuple[str, int]] = []
        self.flushes = 0

    def add(self, deltas: Iterable[tuple[str, int]]) -> None:
        self.given.extend(deltas)

    async def flush(self) -> None:
        self.flushes += 1


def held(amount: int, key: str = "eur", limit: int = 10_000) -> Limit:
    return Limit(key, limit, amount, 60)


async def leases_holding(*grants: tuple[str, int], seconds: float = 10) -> tuple[Leases, Recorder, Clock]:
    settler, clock = Recorder(), Clock()
    leases = Leases(settler, clock)
    lims = [held(1, key) for key, _ in grants]
    topup = leases.ask(lims, fraction=1.0, requests=1_000_000)
    leases.granted(lims, [amount for _, amount in grants], seconds=seconds, topup=topup)
    return leases, settler, clock


async def test_take_uses_a_lease_down_to_exactly_nothing_and_not_past_its_expiry() -> None:
    leases, _, clock = await leases_holding(("eur", 30))
    assert not leases.take([held(31)])
    assert leases.take([held(20)])
    assert not leases.take([held(11)])  # 10 left
    assert leases.take([held(10)])  # exactly what is left
    assert not leases.take([held(1)])
    leases, _, clock = await leases_holding(("eur", 30))
    clock.now += 10  # expires at exactly now
    assert not leases.take([held(1)])
    assert not leases.take([held(1, "other")])  # never leased


async def test_take_is_all_or_nothing_across_counters() -> None:
    leases, _, _ = await leases_holding(("eur", 30), ("rpm", 1))
    assert not leases.take([held(10, "eur"), held(2, "rpm")])
    assert leases.take([held(30, "eur"), held(1, "rpm")])  # the refused take used nothing
    assert not leases.take([held(1, "eur")])


async def test_wait_takes_at_once_when_every_lease_suffices_and_refuses_without_a_top_up_coming() -> None:
    leases, _, clock = await leases_holding(("eur", 30), ("rpm", 2))
    assert await asyncio.wait_for(leases.wait([held(30, "eur"), held(2, "rpm")]), 1)
    assert not await asyncio.wait_for(leases.wait([held(1, "eur")]), 1)  # empty, and no top-up on its way
    leases, _, clock = await leases_holding(("eur", 30))
    clock.now += 10
    assert not await asyncio.wait_for(leases.wait([held(1, "eur")]), 1)  # expired, nothing coming


async def test_wait_waits_for_the_top_up_on_its_way_and_then_takes() -> None:
    leases, _, _ = await leases_holding(("eur", 5), ("rpm", 50))
    asking = [held(10, "eur"), held(1, "rpm")]
    topup = leases.ask(asking, fraction=1.0, requests=4)
    assert topup is not None
    waiter = asyncio.create_task(leases.wait([held(10, "eur"), held(1, "rpm")]))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    leases.granted(asking, [35, 0], seconds=10, topup=topup)
    assert await asyncio.wait_for(waiter, 1)
    assert leases.take([held(30, "eur")])  # 5 + 35 - 10 left
    assert not leases.take([held(1, "eur")])


async def test_ask_sizes_the_lease_by_the_limit_the_request_and_what_is_held_or_asked_for() -> None:
    leases = Leases(Recorder(), Clock())
    lims = [Limit("a", 1_000, 10, 60), Limit("b", 1_000, 10, 60), Limit("c", 100, 10, 60)]
    topup = leases.ask(lims, fraction=0.5, requests=8)
    # a, b: min(500, 80); c: min(50, 80)
    assert [lim.lease for lim in lims] == [80, 80, 50]
    assert topup is not None
    again = [Limit("a", 1_000, 10, 60), Limit("c", 100, 10, 60)]
    assert leases.ask(again, fraction=0.5, requests=9) is not None
    assert [lim.lease for lim in again] == [90 - 80, 0]  # what is asked already counts; c is at its 50


async def test_ask_counts_what_is_held_and_what_is_in_flight() -> None:
    leases, _, clock = await leases_holding(("a", 30))
    lims = [Limit("a", 1_000, 10, 60)]
    topup = leases.ask(lims, fraction=1.0, requests=8)
    assert lims[0].lease == 80 - 30  # topped up to 8 requests' worth
    more = [Limit("a", 1_000, 10, 60)]
    newer = leases.ask(more, fraction=1.0, requests=10)
    assert topup is not None
    assert newer is not None
    assert newer is not topup
    assert more[0].lease == 100 - 30 - 50
    clock.now += 10  # the held 30 expire: they no longer count
    late = [Limit("a", 1_000, 10, 60)]
    leases.ask(late, fraction=1.0, requests=12)
    assert late[0].lease == 120 - 50 - 20


async def test_a_lease_of_exactly_one_request_is_asked_for_and_one_below_is_not() -> None:
    leases = Leases(Recorder(), Clock())
    exact = [Limit("x", 100, 10, 60)]
    assert leases.ask(exact, fraction=0.1, requests=64) is not None
    assert exact[0].lease == 10
    below = [Limit("y", 99, 10, 60)]
    assert leases.ask(below, fraction=0.1, requests=64) is None
    assert below[0].lease == 0


async def test_one_top_up_serves_every_counter_of_one_ask_and_a_later_ask_replaces_it() -> None:
    leases = Leases(Recorder(), Clock())
    first = [Limit("a", 1_000, 10, 60), Limit("b", 1_000, 10, 60)]
    topup = leases.ask(first, fraction=1.0, requests=2)
    assert topup is not None
    assert leases._topups == {"a": topup, "b": topup}
    second = [Limit("a", 1_000, 10, 60)]
    newer = leases.ask(second, fraction=1.0, requests=3)
    assert newer is not None
    assert newer is not topup
    assert leases._topups == {"a": newer, "b": topup}
    assert leases._asked == {"a": 30, "b": 20}
    leases.cancel(first, topup)  # the older top-up failed: a's newer one is still on its way
    assert topup.is_set()
    assert not newer.is_set()
    assert leases._topups == {"a": newer}
    assert leases._asked == {"a": 10}
    assert [lim.lease for lim in first] == [0, 0]
    leases.cancel(second, newer)
    assert leases._topups == {}
    assert leases._asked == {}
    leases.cancel(second, None)  # nothing asked: nothing to undo
    assert leases._asked == {}


async def test_granted_adds_to_a_live_lease_and_replaces_an_expired_one_giving_its_rest_back() -> None:
    leases, settler, clock = await leases_holding(("a", 30), ("b", 20))
    assert leases.take([held(5, "a"), held(20, "b")])
    clock.now += 5
    lims = [held(1, "a"), held(1, "b")]
    topup = leases.ask(lims, fraction=1.0, requests=1_000)
    leases.granted(lims, [10, 0], seconds=10, topup=topup)
    assert leases._held["a"] == [35, 1015]  # 25 left + 10, and it lives 10 s from now
    assert leases._held["b"] == [0, 1010]  # nothing granted: unchanged
    clock.now += 10
    lims = [held(1, "a"), held(1, "b")]
    topup = leases.ask(lims, fraction=1.0, requests=1_000)
    leases.granted(lims, [7, 3], seconds=4, topup=topup)
    assert leases._held == {"a": [7, 1019], "b": [3, 1019]}
    assert settler.given == [("a", -35)]  # b's expired lease was empty: nothing to give back
    assert leases._asked == {}
    assert leases._topups == {}


async def test_expired_leases_are_swept_back_and_the_sweep_repeats_while_leases_are_held() -> None:
    leases, settler, clock = await leases_holding(("a", 30), seconds=0.02)
    later = [held(1, "b")]
    topup = leases.ask(later, fraction=1.0, requests=1_000)
    clock.now += 0.01
    leases.granted(later, [9], seconds=0.02, topup=topup)
    assert leases._sweep is not None
    await asyncio.sleep(0.03)
    # The first sweep ran before the clock moved: nothing had expired, so it was rescheduled.
    assert settler.given == []
    assert leases._sweep is not None
    clock.now += 0.015  # a expired at 1000.02, b lives until 1000.03
    await asyncio.sleep(0.03)
    assert settler.given == [("a", -30)]
    assert set(leases._held) == {"b"}
    clock.now += 1
    await asyncio.sleep(0.03)
    assert settler.given == [("a", -30), ("b", -9)]
    assert leases._held == {}
    assert leases._sweep is None


async def test_closing_gives_every_lease_back_cancels_the_sweep_and_flushes() -> None:
    leases, settler, _ = await leases_holding(("a", 30), ("b", 4), ("c", 2))
    assert leases.take([held(2, "c")])
    sweep = leases._sweep
    assert sweep is not None
    await leases.aclose()
    assert sorted(settler.given) == [("a", -30), ("b", -4)]  # c is used up: nothing to give back
    assert leases._held == {}
    assert leases._sweep is None
    assert sweep.cancelled()
    assert settler.flushes == 1


async def test_wait_checks_every_counter_and_waits_for_a_top_up_of_a_lease_that_just_expired() -> None:
    leases, _, clock = await leases_holding(("rpm", 50), ("eur", 30), seconds=10)
    asking = [held(10, "eur")]
    topup = leases.ask(asking, fraction=1.0, requests=4)
    # rpm's lease suffices, eur's is short: the first counter being fine must not end the check.
    waiter = asyncio.create_task(leases.wait([held(1, "rpm"), held(35, "eur")]))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    leases.granted(asking, [10], seconds=10, topup=topup)
    assert await asyncio.wait_for(waiter, 1)
    clock.now += 10  # every lease expires at exactly now: a top-up on its way is what to wait for
    asking = [held(10, "eur")]
    topup = leases.ask(asking, fraction=1.0, requests=4)
    waiter = asyncio.create_task(leases.wait([held(5, "eur")]))  # eur still has 5 left, but expired
    await asyncio.sleep(0.01)
    assert not waiter.done()
    leases.granted(asking, [40], seconds=10, topup=topup)
    assert await asyncio.wait_for(waiter, 1)


async def test_cancel_keeps_what_other_reservations_still_ask_for_down_to_one() -> None:
    leases = Leases(Recorder(), Clock())
    first = [Limit("a", 1_000, 10, 60)]
    topup = leases.ask(first, fraction=1.0, requests=1)
    second = [Limit("a", 1_000, 1, 60)]
    assert leases.ask(second, fraction=1.0, requests=11) is not None
    assert [first[0].lease, second[0].lease] == [10, 1]
    leases.cancel(first, topup)
    assert leases._asked == {"a": 1}


async def test_granted_needs_one_amount_per_counter_and_a_zero_grant_skips_only_its_own() -> None:
    leases, _, _ = await leases_holding(("a", 1))
    sweep = leases._sweep
    lims = [held(1, "a"), held(1, "b")]
    topup = leases.ask(lims, fraction=1.0, requests=1_000)
    leases.granted(lims, [0, 5], seconds=10, topup=topup)
    assert leases._held == {"a": [1, 1010], "b": [5, 1010]}
    assert leases._sweep is sweep  # one sweep timer at a time
    with pytest.raises(ValueError, match="zip"):
        leases.granted([held(1, "a"), held(1, "b")], [5], seconds=10, topup=None)


async def test_a_lease_expiring_at_exactly_now_is_swept_and_a_last_unit_is_given_back() -> None:
    leases, settler, clock = await leases_holding(("a", 1), ("b", 3), seconds=10)
    assert leases.take([held(2, "b")])
    clock.now += 10
    leases._expire(10)
    assert sorted(settler.given) == [("a", -1), ("b", -1)]
    assert leases._held == {}
