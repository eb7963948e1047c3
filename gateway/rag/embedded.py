"""The embedded vector store: one SQLite file on disk, exact search in numpy in memory.

SQLite is the source of truth: each ``upsert`` batch is one transaction, so a crash never
leaves half a batch. A collection is loaded into memory on first use as one float32 matrix
per tenant (unit-normalised rows), so a search scans only the caller's tenant: another
tenant's rows are not in the matrix it reads. Texts stay on disk; only the hits are read back.

Another process (``gateway rag ingest``) may write the same file: ``PRAGMA data_version``
changes when it does, and the next search reloads from disk.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.rag import embedded_sql as sql
from gateway.rag import int8scan
from gateway.rag.base import Chunk, Hit, Query, Scalar, StoreError, VectorStore
from gateway.rag.partition import (
    BM25,
    Partition,
    hybrid_pool,
    normalise,
    rank,
    single_threaded_blas,
    top_indices,
)

_WORD = re.compile(r"\w+")
# Below this many bytes scanned a search is cheaper inline than a hop to a worker thread.
_INLINE_BYTES = 4_000_000
# From this many floats a vector search pre-scans int8 codes (int8scan.py) instead of float32.
_INT8_FLOATS = 1_000_000


class EmbeddedIndex(VectorStore):
    name = "embedded"

    def __init__(self, path: str | Path, jurisdiction: str = "EU") -> None:
        self.jurisdiction = jurisdiction
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self._db = sql.connect(directory / "index.sqlite3")
        self._lock = threading.RLock()
        self._loaded: dict[str, dict[str, Partition]] = {}
        self._version = self._data_version()
        single_threaded_blas()

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    async def _run(self, fn: Any, *args: Any, inline: bool = False) -> Any:
        if inline:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    # --- loading ---------------------------------------------------------------------------

    def _partitions(self, collection: str) -> dict[str, Partition]:
        version = self._data_version()
        if version != self._version:  # another process wrote: reload lazily
            self._version = version
            self._loaded.clear()
        parts = self._loaded.get(collection)
        if parts is None:
            parts = self._load(collection)
            self._loaded[collection] = parts
        return parts

    def _load(self, collection: str) -> dict[str, Partition]:
        grouped: dict[str, tuple[list[str], list[bytes], list[dict[str, Scalar]]]] = {}
        rows = self._db.execute(
            "SELECT tenant, id, source, metadata, vector FROM chunks WHERE collection = ? ORDER BY rowid",
            (collection,),
        )
        for tenant, cid, source, meta, vec in rows:
            ids, vecs, metas = grouped.setdefault(tenant, ([], [], []))
            ids.append(cid)
            vecs.append(vec)
            metas.append({**(orjson.loads(meta) if meta else {}), "source": source})
        parts = {}
        for tenant, (ids, vecs, metas) in grouped.items():
            dim = len(vecs[0]) // 4
            part = Partition(
                dim=dim, matrix=np.frombuffer(b"".join(vecs), dtype=np.float32).reshape(-1, dim).copy()
            )
            part.ids, part.metadata = ids, metas
            part.rows = {cid: r for r, cid in enumerate(ids)}
            parts[tenant] = part
        return parts

    # --- writes ----------------------------------------------------------------------------

    async def upsert(self, collection: str, chunks: Sequence[Chunk]) -> int:
        if not chunks:
            return 0
        return int(await self._run(self._upsert, collection, list(chunks)))

    def _upsert(self, collection: str, chunks: list[Chunk]) -> int:
        vectors = normalise(np.asarray([c.vector for c in chunks], dtype=np.float32))
        with self._lock:
            parts = self._loaded.get(collection)
            for tenant in {c.tenant for c in chunks}:
                if parts and tenant in parts and parts[tenant].dim != vectors.shape[1]:
                    raise StoreError(
                        f"vector dimension {vectors.shape[1]} differs from the index's {parts[tenant].dim}"
                    )
            rows = [
                (
                    collection,
                    c.id,
                    c.tenant,
                    c.source,
                    c.text,
                    c.content_hash,
                    c.subject,
                    c.ingested_at,
                    orjson.dumps(dict(c.metadata)) if c.metadata else None,
                    vectors[i].tobytes(),
                )
                for i, c in enumerate(chunks)
            ]
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"embedded index write failed: {type(exc).__name__}") from None
            if parts is not None:
                for tenant in {c.tenant for c in chunks}:
                    idx = [i for i, c in enumerate(chunks) if c.tenant == tenant]
                    part = parts.setdefault(
                        tenant,
                        Partition(dim=vectors.shape[1], matrix=np.zeros((0, vectors.shape[1]), np.float32)),
                    )
                    part.put([chunks[i].id for i in idx], vectors[idx], [_filterable(chunks[i]) for i in idx])
        return len(rows)

    def _delete(self, where: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            found = self._db.execute(
                f"SELECT collection, tenant, id FROM chunks WHERE {where}", args
            ).fetchall()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"DELETE FROM chunks WHERE {where}", args)
            self._db.execute("COMMIT")
            by_part: dict[tuple[str, str], set[str]] = {}
            for collection, tenant, cid in found:
                by_part.setdefault((collection, tenant), set()).add(cid)
            for (collection, tenant), ids in by_part.items():
                part = self._loaded.get(collection, {}).get(tenant)
                if part is not None:
                    part.remove(ids)
            return len(found)

    async def delete_by_source(
        self, collection: str, tenant: str, source: str, keep: Sequence[str] = ()
    ) -> int:
        marks = ",".join("?" * len(keep))
        where = "collection = ? AND tenant = ? AND source = ?" + (f" AND id NOT IN ({marks})" if keep else "")
        return int(await self._run(self._delete, where, (collection, tenant, source, *keep)))

    async def delete_by_subject(self, tenant: str, subject: str) -> int:
        n = int(await self._run(self._delete, "tenant = ? AND subject = ?", (tenant, subject)))
        # secure_delete zeroed the rows' pages; the write-ahead file still holds their old images.
        await self._run(self._checkpoint)
        return n

    def _checkpoint(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def delete_ingested_before(self, before: float, dry_run: bool = False) -> int:
        if dry_run:
            with self._lock:
                return sql.count_where(self._db, "ingested_at < ?", (before,))
        n = int(await self._run(self._delete, "ingested_at < ?", (before,)))
        await self._run(self._checkpoint)
        return n

    async def subject_sources(self, tenant: str, subject: str) -> list[tuple[str, str, int]]:
        with self._lock:
            return sql.subject_sources(self._db, tenant, subject)

    # --- reads -----------------------------------------------------------------------------

    async def count(self, collection: str, tenant: str) -> int:
        with self._lock:
            return sql.count(self._db, collection, tenant)

    async def existing_ids(self, collection: str, tenant: str, ids: Sequence[str]) -> set[str]:
        with self._lock:
            return sql.existing_ids(self._db, collection, tenant, ids)

    async def search(self, collection: str, query: Query) -> list[Hit]:
        with self._lock:
            part = self._partitions(collection).get(query.tenant)
            size = 0 if part is None else part.n * part.dim
        if part is None or size == 0:
            return []
        scanned = size if query.mode != "bm25" and _use_int8(size) and part.int8 is not None else 4 * size
        return list(await self._run(self._search, collection, part, query, inline=scanned < _INLINE_BYTES))

    def _search(self, collection: str, part: Partition, q: Query) -> list[Hit]:
        with self._lock:
            mask = part.mask(q.filters)
            candidates = np.arange(part.n) if mask is None else np.flatnonzero(mask)
            if not len(candidates):
                return []
            vec_scores = bm_scores = None
            if q.mode in ("bm25", "hybrid"):
                if part.bm25 is None:
                    part.bm25 = BM25.build(self._texts(collection, q.tenant, part))
                bm_scores = part.bm25.scores(q.text)[candidates]
            if q.mode in ("vector", "hybrid"):
                if q.vector is None:
                    raise StoreError(f"mode {q.mode} needs a query vector")
                qv = normalise(np.asarray(q.vector, dtype=np.float32)[None, :])[0]
                if len(qv) != part.dim:
                    raise StoreError(f"query dimension {len(qv)} differs from the index's {part.dim}")
                matrix = part.matrix[: part.n]
                dense = mask is None or len(candidates) * 4 > part.n
                found = None
                if dense and _use_int8(part.n * part.dim):
                    if part.int8 is None:
                        part.int8 = int8scan.Int8Codes.build(part.matrix)
                    want = q.top_k if bm_scores is None else hybrid_pool(q.top_k)
                    found = int8scan.top_rows(matrix, part.int8, qv, want, mask)
                if found is None:
                    sims = matrix @ qv if dense else matrix[candidates] @ qv
                    vec_scores = sims if len(sims) == len(candidates) else sims[candidates]
                elif bm_scores is None:  # exact scores of the only rows that can make the top k
                    candidates, vec_scores = found
                else:
                    # Hybrid fuses the vector side's top pool (all inside ``found``) with the
                    # bm25 side's, whose rows also need their exact vector score (distance).
                    rows, exact = found
                    extra = candidates[
                        [i for i in top_indices(bm_scores, hybrid_pool(q.top_k)) if bm_scores[i] > 0]
                    ]
                    rows = np.concatenate([rows, extra])
                    exact = np.concatenate([exact, matrix[extra] @ qv])
                    vec_scores = np.full(len(candidates), -np.inf, dtype=np.float32)
                    vec_scores[np.searchsorted(candidates, rows)] = exact
                if q.max_distance is not None:
                    keep = 1.0 - vec_scores <= q.max_distance
                    vec_scores = np.where(keep, vec_scores, -np.inf)
            ranked = rank(q, vec_scores, bm_scores)
            picked = [(int(candidates[i]), s, d) for i, s, d in ranked]
            ids = [part.ids[r] for r, _, _ in picked]
            texts = self._fetch(collection, q.tenant, ids)
        return [
            Hit(cid, *texts[cid], score=s, distance=d)
            for cid, (_, s, d) in zip(ids, picked, strict=True)
            if cid in texts
        ]

    def _texts(self, collection: str, tenant: str, part: Partition) -> list[str]:
        texts = [""] * part.n
        for cid, text in self._db.execute(
            "SELECT id, text FROM chunks WHERE collection = ? AND tenant = ?", (collection, tenant)
        ):
            row = part.rows.get(cid)
            if row is not None:
                texts[row] = text
        return texts

    def _fetch(self, collection: str, tenant: str, ids: list[str]) -> dict[str, tuple[str, str, str]]:
        if not ids:
            return {}
        rows = self._db.execute(
            f"SELECT id, source, text, content_hash FROM chunks WHERE collection = ? AND +tenant = ? "
            f"AND id IN ({','.join('?' * len(ids))})",
            (collection, tenant, *ids),
        )
        return {cid: (source, text, digest) for cid, source, text, digest in rows}

    async def close(self) -> None:
        with self._lock:
            self._db.close()


def _use_int8(floats: int) -> bool:
    return floats >= _INT8_FLOATS and int8scan.available()


def _filterable(c: Chunk) -> dict[str, Scalar]:
    return {**c.metadata, "source": c.source}
