"""One contract, two counter stores: Redis (Lua, through redis-py or the lean client) and in-process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from gateway.store.counters import Counters, Limit, MemoryCounters, RedisCounters
from gateway.store.resp import RespClient
from tests.conftest import REDIS_URL

Factory = Callable[[], Counters]


@pytest.fixture(params=["memory", "redis", "redis-fast"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """A factory of stores sharing one state: each call is another worker on the same backend."""
    if request.param == "memory":
        shared = MemoryCounters()
        yield lambda: shared
        return
    prefix = f"test:{uuid.uuid4().hex}"
    clients: list[aioredis.Redis] = []

    def make() -> Counters:
        client = aioredis.from_url(REDIS_URL)
        clients.append(client)
        fast = RespClient(REDIS_URL) if request.param == "redis-fast" else None
        return RedisCounters(client, prefix, fast)

    yield make
    keys = [k async for k in clients[0].scan_iter(f"{prefix}:*")] if clients else []
    if keys:
        await clients[0].delete(*keys)
    for c in clients:
        await c.aclose()


async def test_reserve_adds_every_amount_when_all_fit(stores: Factory) -> None:
    s = stores()
    ok, values, _ = await s.reserve([Limit("a", 10, 3, 60), Limit("b", 100, 40, 60)])
    assert ok == -1
    assert values == [3, 40]
    assert await s.values(["a", "b", "missing"]) == [3, 40, 0]


async def test_reserve_is_all_or_nothing_and_names_the_limit_that_refused(stores: Factory) -> None:
    s = stores()
    await s.reserve([Limit("a", 10, 8, 60)])
    refused, *_ = await s.reserve([Limit("b", 100, 5, 60), Limit("a", 10, 3, 60)])
    assert refused == 1
    assert await s.values(["a", "b"]) == [8, 0]


async def test_a_zero_amount_passes_even_at_the_limit(stores: Factory) -> None:
    s = stores()
    await s.reserve([Limit("a", 5, 5, 60)])
    assert (await s.reserve([Limit("a", 5, 0, 60)]))[0] == -1


async def test_adjust_settles_to_the_actual_amount(stores: Factory) -> None:
    s = stores()
    await s.reserve([Limit("a", 100, 50, 60)])
    assert await s.adjust([("a", -30)]) == [20]
    assert await s.adjust([("gone", 5)]) == [0]
    assert await s.values(["gone"]) == [0]


async def test_concurrent_reservations_from_several_workers_never_pass_the_limit(stores: Factory) -> None:
    workers = [stores() for _ in range(4)]
    results = await asyncio.gather(
        *(workers[i % 4].reserve([Limit("budget", 105, 10, 60)]) for i in range(60))
    )
    assert sum(1 for r in results if r.refused == -1) == 10
    assert await workers[0].values(["budget"]) == [100]


async def test_counters_expire_with_their_window(stores: Factory) -> None:
    s = stores()
    await s.reserve([Limit("short", 10, 10, 1)])
    assert (await s.reserve([Limit("short", 10, 1, 1)]))[0] == 0
    await asyncio.sleep(1.2)
    assert (await s.reserve([Limit("short", 10, 1, 1)]))[0] == -1


async def test_redis_state_survives_a_new_client() -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    first = aioredis.from_url(REDIS_URL)
    await RedisCounters(first, prefix).reserve([Limit("k", 10, 7, 60)])
    await first.aclose()
    second = aioredis.from_url(REDIS_URL)
    try:
        assert await RedisCounters(second, prefix).values(["k"]) == [7]
    finally:
        await second.delete(f"{prefix}:k")
        await second.aclose()


async def test_settlements_piggybacked_on_a_reservation_apply_first_whatever_its_outcome(
    stores: Factory,
) -> None:
    s = stores()
    await s.reserve([Limit("budget", 100, 90, 60)])
    refused, *_ = await s.reserve([Limit("budget", 100, 50, 60)], settle=[("budget", -60)])
    assert refused == -1
    assert await s.values(["budget"]) == [80]
    refused, *_ = await s.reserve([Limit("budget", 100, 50, 60)], settle=[("budget", 5), ("gone", 3)])
    assert refused == 0
    assert await s.values(["budget", "gone"]) == [85, 0]


async def test_a_lease_is_granted_only_as_far_as_it_fits_under_the_limit(stores: Factory) -> None:
    s = stores()
    first = await s.reserve([Limit("a", 100, 10, 60, lease=50), Limit("b", 1000, 10, 60, lease=50)])
    assert first.refused == -1
    assert first.leased == [50, 50]
    assert first.values == [60, 60]
    second = await s.reserve([Limit("a", 100, 10, 60, lease=50)])
    assert second.leased == [30]
    assert second.values == [100]
    third = await s.reserve([Limit("a", 100, 1, 60, lease=50)])
    assert third.refused == 0
    assert third.leased == []
    assert await s.values(["a"]) == [100]
