"""Windowed counters for budgets and rate limits: Redis (shared, survives restarts) or in-process.

    reserve(limits)   add every limit's amount, all or nothing: if any counter would pass its
                      limit, nothing changes and the index of that limit is returned; with
                      the amounts, add up to each limit's ``lease`` where it still fits
                      (capacity a worker holds for later requests, accounting/lease.py)
    adjust(deltas)    add signed deltas to counters that still exist (settling a reservation)
    values(keys)      current values (0 for a missing key)

Both implementations keep the same contract and one test suite runs against both. In Redis,
``reserve`` and ``adjust`` are single Lua scripts, so concurrent requests in any number of
workers see each other's reservations. The in-process store is atomic within one event loop
(no ``await`` between check and add); its state is lost when the process exits.

Values are integers: tokens, requests, or nano-euros (1e-9 EUR) for money.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from gateway.store.resp import RespClient

__all__ = ["Counters", "Limit", "MemoryCounters", "RedisCounters", "Reserved"]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x, and this is per request
class Limit:
    key: str  # without the store's prefix
    limit: int
    amount: int  # added by ``reserve``
    ttl_s: int  # the key's lifetime, set when it is created
    lease: int = 0  # also add up to this much, as far as it fits under the limit


class Reserved(NamedTuple):
    refused: int  # -1: everything was added; otherwise the index of the first limit that refused
    values: list[int]  # the counters' new values (on refusal: the refusing counter's value)
    leased: list[int]  # per limit, how much of its ``lease`` was granted (empty on refusal)


class Counters(ABC):
    @abstractmethod
    async def reserve(self, limits: Sequence[Limit], settle: Sequence[tuple[str, int]] = ()) -> Reserved:
        """``refused`` is -1 when all amounts were added, otherwise the index of the first limit
        the request would pass, and nothing was added. A granted lease is ``min(lease, limit -
        value - amount)``, never negative.

        ``settle`` deltas (as for ``adjust``) are applied first, whatever the outcome: callers
        piggyback earlier requests' settlements on the next reservation, one round trip for both.
        """

    @abstractmethod
    async def adjust(self, deltas: Sequence[tuple[str, int]]) -> list[int]:
        """Add each delta to its key if the key still exists; return the new values (0 if gone)."""

    @abstractmethod
    async def values(self, keys: Sequence[str]) -> list[int]: ...


_RESERVE = """
-- ARGV: n, then per limit (limit, amount, ttl, lease), then one settle delta per extra key
local n = tonumber(ARGV[1])
for j = n + 1, #KEYS do
  if redis.call('EXISTS', KEYS[j]) == 1 then
    redis.call('INCRBY', KEYS[j], ARGV[3 * n + j + 1])
  end
end
local cur = {}
for i = 1, n do
  cur[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  local amount = tonumber(ARGV[4 * i - 1])
  if amount > 0 and cur[i] + amount > tonumber(ARGV[4 * i - 2]) then
    return {i - 1, cur[i]}
  end
end
local out = {-1}
for i = 1, n do
  local amount = tonumber(ARGV[4 * i - 1])
  local granted = math.min(tonumber(ARGV[4 * i + 1]), tonumber(ARGV[4 * i - 2]) - cur[i] - amount)
  if granted < 0 then granted = 0 end
  out[i + 1] = redis.call('INCRBY', KEYS[i], amount + granted)
  out[n + i + 1] = granted
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[4 * i])
  end
end
return out
"""

_ADJUST = """
local vals = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    vals[i] = redis.call('INCRBY', KEYS[i], ARGV[i])
  else
    vals[i] = 0
  end
end
return vals
"""


class RedisCounters(Counters):
    """Counters in Redis. Redis errors propagate: the caller decides fail-open or fail-closed.

    With ``fast`` (a ``RespClient`` on the same server) the two scripts run through the lean
    pipelined client instead of redis-py, which costs a quarter of the CPU per call.
    """

    def __init__(self, redis: Any, prefix: str = "gw:acct", fast: RespClient | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.fast = fast
        self._reserve = self._script(redis, _RESERVE)
        self._adjust = self._script(redis, _ADJUST)

    def _script(self, redis: Any, lua: str) -> Any:
        if self.fast is None:
            return redis.register_script(lua)
        fast = self.fast

        async def run(keys: list[str], args: list[int]) -> Any:
            return await fast.evalsha(lua, keys, args)

        return run

    def _k(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    async def reserve(self, limits: Sequence[Limit], settle: Sequence[tuple[str, int]] = ()) -> Reserved:
        if not limits and not settle:
            return Reserved(-1, [], [])
        args: list[int] = [len(limits)]
        for lim in limits:
            args += [lim.limit, lim.amount, lim.ttl_s, lim.lease]
        args += [d for _, d in settle]
        keys = [self._k(lim.key) for lim in limits] + [self._k(k) for k, _ in settle]
        out = [int(v) for v in await self._reserve(keys=keys, args=args)]
        if out[0] >= 0:
            return Reserved(out[0], out[1:], [])
        n = len(limits)
        return Reserved(-1, out[1 : n + 1], out[n + 1 :])

    async def adjust(self, deltas: Sequence[tuple[str, int]]) -> list[int]:
        if not deltas:
            return []
        out = await self._adjust(keys=[self._k(k) for k, _ in deltas], args=[d for _, d in deltas])
        return [int(v) for v in out]

    async def values(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        raw = await self.redis.mget([self._k(k) for k in keys])
        return [int(v) if v is not None else 0 for v in raw]


class MemoryCounters(Counters):
    """Counters in this process only: for a single worker without Redis, and as the fail-open
    fallback. Nothing survives a restart, and several workers each count on their own."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._data: dict[str, list[float]] = {}  # key -> [value, expires_at]
        self._clock = clock

    def _get(self, key: str, now: float) -> int:
        item = self._data.get(key)
        if item is None:
            return 0
        if item[1] <= now:
            del self._data[key]
            return 0
        return int(item[0])

    async def reserve(self, limits: Sequence[Limit], settle: Sequence[tuple[str, int]] = ()) -> Reserved:
        if settle:
            await self.adjust(settle)
        now = self._clock()
        current = [self._get(lim.key, now) for lim in limits]
        for i, (lim, cur) in enumerate(zip(limits, current, strict=True)):
            if lim.amount > 0 and cur + lim.amount > lim.limit:
                return Reserved(i, [cur], [])
        values, leased = [], []
        for lim, cur in zip(limits, current, strict=True):
            granted = max(0, min(lim.lease, lim.limit - cur - lim.amount))
            item = self._data.get(lim.key)
            if item is None:
                item = self._data[lim.key] = [0, now + lim.ttl_s]
            item[0] += lim.amount + granted
            values.append(int(item[0]))
            leased.append(granted)
        if len(self._data) > 10_000:
            self._expire(now)
        return Reserved(-1, values, leased)

    async def adjust(self, deltas: Sequence[tuple[str, int]]) -> list[int]:
        now = self._clock()
        out = []
        for key, delta in deltas:
            if self._get(key, now) or key in self._data:
                self._data[key][0] += delta
                out.append(int(self._data[key][0]))
            else:
                out.append(0)
        return out

    async def values(self, keys: Sequence[str]) -> list[int]:
        now = self._clock()
        return [self._get(k, now) for k in keys]

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, exp) in self._data.items() if exp <= now]:
            del self._data[key]
