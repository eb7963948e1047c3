"""Process-wide resources handed to policies when a bundle is instantiated.

Policies get what they need from here (the database engine, Redis, the pseudonymiser, the
gateway's own embeddings path) instead of importing each other or the app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from gateway.config import Config

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy import Engine

    from gateway.store.consent import ConsentRef
    from gateway.store.writer import Writer

T = TypeVar("T")

# (public embeddings model, texts, allowed jurisdictions or None) -> one vector per text
Embed = Callable[[str, list[str], frozenset[str] | None], Awaitable[list[list[float]]]]


class Consents(Protocol):
    """The consent registry as policies see it (``gateway.store.consent.ConsentRegistry``, or the
    simulated one of ``gateway policy test``)."""

    async def active(self, tenant: str, subject: str, purpose: str) -> ConsentRef | None: ...


@dataclass
class Services:
    config: Config
    engine: Engine | None = None
    redis: Redis | None = None  # when storage.redis_url is set
    pseudonym: Callable[[str], str] = str
    embed: Embed | None = None  # the gateway's own embeddings path (router + upstreams)
    writer: Writer | None = None  # batched, off-the-hot-path SQL rows
    consents: Consents | None = None
    # Shared state policies create on first use (counters, leases, the RAG store, ...), through
    # ``shared``. Objects with an async ``aclose`` are closed at shutdown, newest first.
    extras: dict[str, Any] = field(default_factory=dict)

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """The process-wide object under ``key``, made on first use: every chain and every bundle
        reload gets the same one."""
        if key not in self.extras:
            self.extras[key] = make()
        return cast(T, self.extras[key])

    async def aclose(self) -> None:
        """Close the extras that can be closed, newest first (they may use older ones)."""
        for name, extra in reversed(list(self.extras.items())):
            close = getattr(extra, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception as exc:  # one failing must not keep the others open  # noqa: BLE001
                logging.getLogger("gateway.services").warning(
                    "closing %s failed (%s)", name, type(exc).__name__
                )
