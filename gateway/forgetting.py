"""In-process state that may hold something of a data subject, and how a worker drops it all.

Caches that can hold a subject's text, pseudonym or key (the PII analyzer's results, the prompt
token counts, the consent answers, the per-subject keys) register here when they are made. When a
worker learns that a subject was erased (``gateway.store.subject_keys.SubjectKeys.watch``, within
2 s), it calls ``forget_all``: every registered holder empties itself. The caches cannot tell
which entries concern the erased subject (their keys are hashes of text), so they drop everything;
erasures are rare and the caches refill in seconds.
"""

from __future__ import annotations

import logging
import weakref
from typing import Protocol

log = logging.getLogger("gateway.forgetting")


class Holder(Protocol):
    def forget(self) -> None: ...


_HOLDERS: weakref.WeakSet[Holder] = weakref.WeakSet()


def register(holder: Holder) -> None:
    """Call ``holder.forget()`` at each erasure, for as long as the holder lives."""
    _HOLDERS.add(holder)


def forget_all() -> int:
    """Empty every registered holder; return how many there were."""
    holders = list(_HOLDERS)
    for holder in holders:
        try:
            holder.forget()
        except Exception:  # one failing must not keep the others' data
            log.exception("forgetting %s failed", type(holder).__name__)
    return len(holders)
