"""What every ``token_accounting`` instance of a process shares, whatever app or bundle reload made it:
the counter stores, the lean Redis client, the price table, settlers, leases, metric series and gauge times.

Each lives in the gateway's services (``Services.shared``), created on first use; without services (unit
use) each call makes its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gateway import metrics
from gateway.accounting.lease import Leases
from gateway.accounting.pricing import Price, price_table
from gateway.accounting.settle import Settler
from gateway.store.counters import Counters, MemoryCounters, RedisCounters
from gateway.store.resp import RespClient

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.config import Config

T = TypeVar("T")


class Host(Protocol):
    """The part of ``gateway.services.Services`` used here."""

    config: Config
    redis: Redis | None

    def shared(self, key: str, make: Callable[[], T]) -> T: ...


class Shared:
    def __init__(self, host: Host | None, key_prefix: str) -> None:
        self.host = host
        self.key_prefix = key_prefix

    def get(self, name: str, make: Callable[[], T]) -> T:
        return self.host.shared(f"token_accounting.{name}", make) if self.host is not None else make()

    def stores(self) -> tuple[Counters | None, MemoryCounters]:
        """The Redis counters (None without Redis) and the in-process ones (fail-open, or no Redis)."""
        memory = self.get("memory", MemoryCounters)
        redis = self.host.redis if self.host is not None else None
        if redis is None:
            return None, memory
        prefix = self.key_prefix
        return self.get(f"redis.{prefix}", lambda: RedisCounters(redis, prefix, self._fast_client())), memory

    def _fast_client(self) -> RespClient | None:
        url = self.host.config.storage.redis_url if self.host is not None else None
        try:
            return self.get(f"resp.{url}", lambda: RespClient(url)) if url else None
        except ValueError:  # TLS and other URLs the lean client does not speak: redis-py only
            return None

    def prices(self) -> dict[str, Price]:
        host = self.host
        return self.get("prices", lambda: price_table(host.config) if host is not None else {})

    def settler(self, store: Counters) -> Settler:
        return self.get(f"settler.{id(store)}", lambda: Settler(store))

    def leases(self, settler: Settler) -> Leases:
        return self.get(f"leases.{id(settler)}", lambda: Leases(settler))

    def gauge_times(self) -> dict[str, float]:
        times: dict[str, float] = self.get("gauges", dict)
        return times

    def series(
        self, tenant: str, app: str, model: str, deployment: str, jurisdiction: str
    ) -> tuple[Any, ...]:
        """The token and cost counters of one label set (prometheus_client's labels() stringifies and locks on
        every call; the label sets are bounded)."""
        cache: dict[tuple[str, ...], tuple[Any, ...]] = self.get("series", dict)
        key = (tenant, app, model, deployment, jurisdiction)
        series = cache.get(key)
        if series is None:
            labels = (metrics.tenant_label(tenant), metrics.app_label(app), model, deployment, jurisdiction)
            series = cache[key] = (
                *(metrics.TOKENS.labels(*labels, t) for t in ("prompt", "completion", "cached")),
                metrics.COST_EUR.labels(*labels),
            )
        return series
