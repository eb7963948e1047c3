"""Turning text into vectors: through the gateway's own embeddings path, or offline.

GatewayEmbedder   default: ``Services.embed`` -> router -> the configured (EU) embeddings
                  deployment; residency applies because only allowed jurisdictions are tried
HashingEmbedder   deterministic bag-of-words hashing, for unit tests and benchmarks only
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np

Embed = Callable[[str, list[str], frozenset[str] | None], Awaitable[list[list[float]]]]


class Embedder(Protocol):
    name: str

    async def __call__(self, texts: list[str], allowed: frozenset[str] | None) -> np.ndarray:
        """One row per text; raise on failure (the caller applies its failure mode)."""
        ...


class GatewayEmbedder:
    def __init__(self, embed: Embed, model: str, jurisdictions: frozenset[str]) -> None:
        self.embed = embed
        self.name = model
        self.jurisdictions = jurisdictions

    async def __call__(self, texts: list[str], allowed: frozenset[str] | None) -> np.ndarray:
        # The request's residency narrows the operator's list; it never widens it.
        where = self.jurisdictions if allowed is None else self.jurisdictions & allowed
        return np.asarray(await self.embed(self.name, texts, where), dtype=np.float32)


class HashingEmbedder:
    """Each word adds a signed unit to one of ``dim`` buckets: shared words mean nearby vectors."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def vector(self, text: str) -> np.ndarray:
        out = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            out[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        norm = float(np.linalg.norm(out))
        return out / norm if norm else out

    async def __call__(self, texts: list[str], allowed: frozenset[str] | None) -> np.ndarray:  # noqa: ARG002 (the Embedder protocol)
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
