"""Process-wide resources handed to policies when a bundle is instantiated.

Policies get what they need from here (the database engine, Redis, the pseudonymiser, the
gateway's own embeddings path) instead of importing each other or the app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import Config

if TYPE_CHECKING:
    from sqlalchemy import Engine

# (public embeddings model, texts, allowed jurisdictions or None) -> one vector per text
Embed = Callable[[str, list[str], frozenset[str] | None], Awaitable[list[list[float]]]]


@dataclass
class Services:
    config: Config
    engine: Engine | None = None
    redis: Any = None  # redis.asyncio.Redis when storage.redis_url is set
    pseudonym: Callable[[str], str] = str
    embed: Embed | None = None  # the gateway's own embeddings path (router + upstreams)
    writer: Any = None  # gateway.store.writer.Writer: batched, off-the-hot-path SQL rows
    consents: Any = None  # gateway.store.consent.ConsentRegistry (or a fake in `gateway policy test`)
    # Shared state policies create on first use (counters, leases, the RAG store, ...). Objects
    # with an async ``aclose`` are closed at shutdown, newest first, by ``aclose`` below.
    extras: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        """Close the extras that can be closed, newest first (they may use older ones)."""
        for name, extra in reversed(list(self.extras.items())):
            close = getattr(extra, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception as exc:  # one failing must not keep the others open  # noqa: BLE001
                logging.getLogger("gateway.services").warning("closing %s failed (%s)", name, type(exc).__name__)
