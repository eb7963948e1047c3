"""Per-worker leases on Redis counters: most reservations need no round trip.

A reservation that goes to Redis also asks, for each of its counters, for a lease: capacity
added to the counter in the same atomic script (so no other worker can use it) but not yet
used by any request. The worker's later requests take their amounts out of its leases in
process, as long as every counter they touch has enough left; a request that does not fit
goes to Redis, which tops the leases up in the same script. Requests that arrive while a
top-up is on its way wait for it instead of each going to Redis on their own.

  * No overspend. A lease is added under the limit by the same script that checks every
    reservation, so spent + reserved + leased never passes a limit (settling actual cost is
    unchanged: it can pass by what a request used beyond its reservation, as before).
  * Size. A counter's lease is at most ``fraction`` of its limit and at most ``requests``
    times the amount of the request that asked; near the limit Redis grants what still fits,
    down to nothing, and requests then reserve one by one exactly as without leases.
  * Lifetime. A lease not topped up for ``seconds`` expires, and what is left of it is given
    back (a negative settlement) within another ``seconds``. Until then that capacity counts as
    used: near a limit, another worker may be refused while this one still holds a lease.
    A worker that shuts down cleanly gives its leases back; one that dies keeps them counted
    until their window ends (at most ``fraction`` of each limit per worker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from gateway.accounting.settle import Settler
from gateway.store.counters import Limit


class Leases:
    def __init__(self, settler: Settler, clock: Callable[[], float] = time.monotonic) -> None:
        self.settler = settler
        self._clock = clock
        self._held: dict[str, list[float]] = {}  # counter key -> [left, expires at]
        self._asked: dict[str, int] = {}  # counter key -> lease asked for by reservations in flight
        self._topups: dict[str, asyncio.Event] = {}  # counter key -> set when its latest top-up returns
        self._sweep: asyncio.TimerHandle | None = None

    def take(self, limits: Sequence[Limit]) -> bool:
        """Take every limit's amount out of the leases, all or nothing."""
        now = self._clock()
        held = self._held
        for lim in limits:
            lease = held.get(lim.key)
            if lease is None or lease[1] <= now or lease[0] < lim.amount:
                return False
        for lim in limits:
            held[lim.key][0] -= lim.amount
        return True

    async def wait(self, limits: Sequence[Limit]) -> bool:
        """When top-ups already on their way cover every counter whose lease is short, wait for
        them and take; False (without waiting) when some counter has none coming."""
        now = self._clock()
        events = set()
        for lim in limits:
            lease = self._held.get(lim.key)
            if lease is not None and lease[1] > now and lease[0] >= lim.amount:
                continue
            event = self._topups.get(lim.key)
            if event is None:
                return False
            events.add(event)
        for event in events:
            await event.wait()
        return self.take(limits)

    def ask(self, limits: Sequence[Limit], fraction: float, requests: int) -> asyncio.Event | None:
        """Set each limit's ``lease`` to what would bring this worker's lease up to its size,
        counting what reservations still in flight asked for. When anything is asked for, the
        returned top-up must be passed to ``granted`` or ``cancel``."""
        now = self._clock()
        topup = None
        for lim in limits:
            lease = self._held.get(lim.key)
            left = int(lease[0]) if lease is not None and lease[1] > now else 0
            size = min(int(lim.limit * fraction), lim.amount * requests)
            lim.lease = max(0, size - left - self._asked.get(lim.key, 0)) if size >= lim.amount else 0
            if lim.lease:
                self._asked[lim.key] = self._asked.get(lim.key, 0) + lim.lease
                topup = topup or asyncio.Event()
                self._topups[lim.key] = topup
        return topup

    def cancel(self, limits: Sequence[Limit], topup: asyncio.Event | None) -> None:
        """The reservation failed or was refused: nothing of what it asked for was granted."""
        for lim in limits:
            if lim.lease:
                left = self._asked.get(lim.key, 0) - lim.lease
                if left > 0:
                    self._asked[lim.key] = left
                else:
                    self._asked.pop(lim.key, None)
                if self._topups.get(lim.key) is topup:
                    del self._topups[lim.key]
                lim.lease = 0
        if topup is not None:
            topup.set()  # waiters try the leases again, or go to Redis themselves

    def granted(
        self, limits: Sequence[Limit], leased: Sequence[int], seconds: float, topup: asyncio.Event | None
    ) -> None:
        """Add what Redis granted; a topped-up lease lives ``seconds`` from now."""
        now = self._clock()
        self.cancel(limits, topup)  # no longer in flight; waiters resume after this returns
        for lim, amount in zip(limits, leased, strict=True):
            if not amount:
                continue
            lease = self._held.get(lim.key)
            if lease is None or lease[1] <= now:
                if lease is not None:
                    self._give_back(lim.key, lease)
                self._held[lim.key] = [amount, now + seconds]
            else:
                lease[0] += amount
                lease[1] = now + seconds
        if self._held and self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(seconds, self._expire, seconds)

    async def aclose(self) -> None:
        """Shutdown: give every lease back and send it (with pending settlements) now."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for key, lease in self._held.items():
            self._give_back(key, lease)
        self._held.clear()
        await self.settler.flush()

    def _expire(self, seconds: float) -> None:
        now = self._clock()
        for key, lease in [(k, v) for k, v in self._held.items() if v[1] <= now]:
            self._give_back(key, lease)
            del self._held[key]
        self._sweep = None
        if self._held:
            self._sweep = asyncio.get_running_loop().call_later(seconds, self._expire, seconds)

    def _give_back(self, key: str, lease: list[float]) -> None:
        if lease[0] > 0:
            self.settler.add([(key, -int(lease[0]))])
