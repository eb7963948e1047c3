"""The vector store contract shared by the embedded index and Weaviate.

    VectorStore            async interface; every read takes the tenant as a required argument
     ├── EmbeddedIndex     gateway/rag/embedded.py (SQLite rows + numpy matrix, exact search)
     └── WeaviateStore     gateway/rag/weaviate_store.py (weaviate-client v4, async, gRPC)

Errors: a backend raises ``StoreError`` when it cannot answer (connection refused, server
error); the policy maps that to its failure mode. Nothing else escapes a backend on purpose.
"""

from __future__ import annotations

import hashlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np

SearchMode = Literal["vector", "hybrid", "bm25"]
Scalar = str | int | float | bool
# property -> value (equality) or list of values (any of)
Filters = Mapping[str, Scalar | Sequence[Scalar]]

# Properties every chunk carries; metadata keys may not shadow them.
RESERVED = frozenset({"tenant", "source", "chunk_id", "text", "content_hash", "subject", "ingested_at"})


class StoreError(Exception):
    """The vector store could not answer; the message never contains chunk text."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document, as stored. ``subject`` is a pseudonym, never a raw id."""

    id: str
    tenant: str
    source: str
    text: str
    content_hash: str
    ingested_at: float
    vector: np.ndarray | None = None
    subject: str | None = None
    metadata: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved chunk. ``score``: higher is better; ``distance``: cosine distance when known."""

    id: str
    source: str
    text: str
    content_hash: str
    score: float
    distance: float | None = None


@dataclass(frozen=True, slots=True)
class Query:
    tenant: str
    text: str = ""
    vector: np.ndarray | None = None
    top_k: int = 4
    mode: SearchMode = "vector"
    alpha: float = 0.5  # hybrid: weight of the vector side
    max_distance: float | None = None
    filters: Filters = field(default_factory=dict)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_id(collection: str, tenant: str, source: str, digest: str) -> str:
    """A stable UUID for a chunk: the same content from the same source maps to the same id."""
    raw = hashlib.sha256(f"{collection}\0{tenant}\0{source}\0{digest}".encode()).digest()[:16]
    return str(uuid.UUID(bytes=raw, version=5))


class VectorStore(ABC):
    """A tenant-partitioned chunk store. Implementations must apply ``tenant`` on every read."""

    jurisdiction: str
    name: str

    @abstractmethod
    async def upsert(self, collection: str, chunks: Sequence[Chunk]) -> int:
        """Insert or replace chunks by id, all in one batch; return how many were written."""

    @abstractmethod
    async def search(self, collection: str, query: Query) -> list[Hit]:
        """Return at most ``query.top_k`` hits of ``query.tenant``, best first."""

    @abstractmethod
    async def existing_ids(self, collection: str, tenant: str, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` already stored for this tenant."""

    @abstractmethod
    async def delete_by_source(
        self, collection: str, tenant: str, source: str, keep: Sequence[str] = ()
    ) -> int:
        """Delete the tenant's chunks of ``source`` except the ids in ``keep``; return the count."""

    @abstractmethod
    async def delete_by_subject(self, tenant: str, subject: str) -> int:
        """Delete every chunk of the tenant about a data subject (by pseudonym) in every collection."""

    @abstractmethod
    async def delete_ingested_before(self, before: float, dry_run: bool = False) -> int:
        """Delete (or only count) every chunk ingested before ``before`` (Unix time), in every collection."""

    @abstractmethod
    async def subject_sources(self, tenant: str, subject: str) -> list[tuple[str, str, int]]:
        """The tenant's documents about a data subject: (collection, source, chunks), sorted."""

    @abstractmethod
    async def count(self, collection: str, tenant: str) -> int:
        """How many chunks the tenant has in the collection."""

    async def close(self) -> None:
        return None
