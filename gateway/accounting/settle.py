"""Settlements batched onto the next reservation.

Settling a request (actual minus reserved) used to cost its own Redis round trip. Deltas are
now summed per counter and sent with the next reservation, in the same Lua script; when no
reservation comes within ``max_delay_s`` a timer sends them alone. Until then a counter can be
over by what was reserved but not used (conservative) or under by what was used beyond the
reservation, for at most ``max_delay_s``. A clean shutdown sends what is pending; after a crash
those reservations stay counted until the window ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from gateway.store.counters import Counters

log = logging.getLogger("gateway.accounting")


class Settler:
    def __init__(self, store: Counters, max_delay_s: float = 0.5) -> None:
        self.store = store
        self.max_delay_s = max_delay_s
        self._pending: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, deltas: Iterable[tuple[str, int]]) -> None:
        for key, delta in deltas:
            if delta:
                self._pending[key] = self._pending.get(key, 0) + delta
        if self._pending and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.max_delay_s, lambda: loop.create_task(self.flush()))

    def take(self) -> list[tuple[str, int]]:
        """Hand the pending deltas to a reservation; ``restore`` them if it fails."""
        pending, self._pending = self._pending, {}
        return list(pending.items())

    def restore(self, deltas: list[tuple[str, int]]) -> None:
        for key, delta in deltas:
            self._pending[key] = self._pending.get(key, 0) + delta

    async def aclose(self) -> None:
        """Shutdown: send what is pending now."""
        if self._timer is not None:
            self._timer.cancel()
        await self.flush()

    async def flush(self) -> None:
        self._timer = None
        deltas = self.take()
        if not deltas:
            return
        try:
            await self.store.adjust(deltas)
        except Exception as exc:  # a failed settlement is retried with the next reservation  # noqa: BLE001
            log.warning("settlement failed (%s); retrying with the next reservation", type(exc).__name__)
            self.restore(deltas)
