"""Per-worker leases: requests served from a lease, top-ups, expiry, and no overspend across workers."""

from __future__ import annotations

import asyncio
import uuid
from typing import cast

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

    config = Config.model_validate({
        "deployments": {"eu": {"kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                               "model": "mistral-7b-instruct", "jurisdiction": "EU", "region": "fr-par"}},
        "models": {"m": {"deployments": ["eu"]}}, "storage": {"redis_url": REDIS_URL}})
    services = Services(config=config)
    services.redis = aioredis.from_url(REDIS_URL)
    prefix = f"test:{uuid.uuid4().hex}"
    policy = TokenAccounting(TokenAccounting.Config.model_validate(
        {"key_prefix": prefix, "rate_limits": [{"scope": "key", "rpm": 1_000_000}]}), services=services)
    principal = Principal("k1", "t", "a", frozenset({"*"}), frozenset({"chat"}))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    stuck = asyncio.Event()
    original = RedisCounters.reserve

    async def first_call_hangs(self, limits, settle=()):
        if not stuck.is_set():
            stuck.set()
            await asyncio.sleep(3600)
        return await original(self, limits, settle)

    def ctx() -> Context:
        return Context(principal, "chat", "m", [Target("eu", config.deployments["eu"])])

    RedisCounters.reserve = first_call_hangs  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(policy.on_request(ctx(), body))
        await stuck.wait()  # it asked for the lease and waits for Redis
        second = asyncio.create_task(policy.on_request(ctx(), body))  # waits for that top-up
        await asyncio.sleep(0.05)
        assert not second.done()
        first.cancel()
        await asyncio.wait_for(second, 5)  # goes to Redis itself instead of waiting forever
        await asyncio.wait_for(policy.on_request(ctx(), body), 5)
    finally:
        RedisCounters.reserve = original  # type: ignore[method-assign]
        keys = [k async for k in services.redis.scan_iter(f"{prefix}:*")]
        if keys:
            await services.redis.delete(*keys)
        await services.redis.aclose()
