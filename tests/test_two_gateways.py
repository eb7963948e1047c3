"""Two gateway processes' worth of state on one Redis: limits hold across them, exactly.

Two ``Gateway`` objects run side by side, each with its own database (its own keys and ledger),
its own spool and its own accounting state (counters, settler, leases); the only thing they
share is Redis. An app-scoped rate limit counts both gateways' requests, so across the two
exactly ``rpm`` requests are admitted; were the counters per process, twice as many would be.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.accounting.lease import Leases
from gateway.dev import DevUpstream
from tests.accounting_support import chat, ledger, policy_file, priced_config
from tests.conftest import REDIS_URL, RunningGateway

Factory = Callable[..., RunningGateway]


def two_gateways(
    factory: Factory, upstream: DevUpstream, tmp_path: Path, **section: Any
) -> tuple[list[RunningGateway], list[str], str]:
    policies, prefix = policy_file(tmp_path, **section)
    gateways = []
    for name in ("a", "b"):
        storage = {
            "database_url": f"sqlite:///{tmp_path / f'{name}.db'}",
            "redis_url": REDIS_URL,
            "spool_dir": str(tmp_path / f"spool-{name}"),
        }
        gateways.append(factory(priced_config(upstream, storage=storage), policies))
    # Different keys in different databases; the same tenant and app, so one app-scoped counter.
    keys = [gw.key(tenant="acme", app="shared") for gw in gateways]
    assert gateways[0].gateway.engine.url != gateways[1].gateway.engine.url
    return gateways, keys, prefix


def start_of_a_minute_window(needed_s: float) -> None:
    """Rate limits count per clock minute: start where the test's requests all fall in one window."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.05)


def cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def test_concurrent_requests_on_two_gateways_are_admitted_exactly_up_to_the_shared_rpm(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    rpm = 12  # a lease would be 1% of it, under one request: every reservation goes to Redis
    gateways, keys, prefix = two_gateways(
        gateway_factory, upstream, tmp_path, rate_limits=[{"scope": "app", "rpm": rpm}]
    )
    targets = [(gateways[i % 2], keys[i % 2]) for i in range(40)]
    start_of_a_minute_window(30)
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda t: chat(*t).status_code, targets))
        per_gateway = [
            Counter(s for s, (gw, _) in zip(statuses, targets, strict=True) if gw is g) for g in gateways
        ]
        assert Counter(statuses) == {200: rpm, 429: 40 - rpm}, per_gateway
        # Each gateway's own ledger holds its own admitted requests; together, exactly rpm.
        admitted = [sum(1 for r in ledger(g.gateway.engine, 20) if r.status == 200) for g in gateways]
        assert admitted == [c[200] for c in per_gateway]
        assert sum(admitted) == rpm
    finally:
        cleanup(prefix)


def test_with_leases_the_two_gateways_together_admit_exactly_the_shared_rpm(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5% of 120 = 6 requests per lease: most reservations are served in process from a lease, and
    # near the limit one gateway's lease is capacity the other cannot have. No overspend, and once
    # both are refused with no lease left (expired leases are given back), nothing was left unused.
    rpm = 120
    gateways, keys, prefix = two_gateways(
        gateway_factory,
        upstream,
        tmp_path,
        rate_limits=[{"scope": "app", "rpm": rpm}],
        lease={"fraction": 0.05, "requests": 64, "seconds": 0.5},
    )
    from_leases = 0
    take = Leases.take

    def counting_take(self: Leases, limits: Any) -> bool:
        nonlocal from_leases
        taken = take(self, limits)
        from_leases += taken
        return taken

    monkeypatch.setattr(Leases, "take", counting_take)
    start_of_a_minute_window(25)
    admitted = 0
    try:
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda i: chat(gateways[i % 2], keys[i % 2]).status_code, range(rpm + 20)))
        admitted += burst.count(200)
        assert admitted <= rpm  # never more, even under concurrency
        assert from_leases > rpm // 2  # most requests really were served from a lease, without Redis
        for _ in range(10):  # bounded: after the burst, at most a few leases' worth is left anywhere
            time.sleep(
                2.0
            )  # unused leases expire (0.5 s) and are given back (the settler sends within 0.5 s)
            round_ = [
                chat(gw, key).status_code for gw, key in zip(gateways, keys, strict=True) for _ in range(3)
            ]
            admitted += round_.count(200)
            assert admitted <= rpm
            if round_.count(200) == 0:
                break
        else:
            pytest.fail("the gateways kept admitting requests")
        assert admitted == rpm
    finally:
        cleanup(prefix)
