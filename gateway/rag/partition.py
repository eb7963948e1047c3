"""One tenant's slice of a collection in memory, and how the embedded store ranks it.

A ``Partition`` holds unit-normalised float32 vectors (and, when large, int8 codes for a pre-scan),
the chunks' filterable metadata, and a BM25 index built on first keyword search. ``rank`` turns
vector and/or BM25 scores into the best ``top_k`` (hybrid: min-max-normalised scores, fused).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.rag import int8scan
from gateway.rag.base import Query, Scalar

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def filter_key(value: Scalar) -> tuple[str, Any]:
    # True == 1 in Python; a filter on a boolean must not match the integer 1.
    kind = "b" if isinstance(value, bool) else "n" if isinstance(value, int | float) else "s"
    return kind, value


@dataclass
class BM25:
    postings: dict[str, tuple[np.ndarray, np.ndarray]]
    lengths: np.ndarray
    avg: float

    @classmethod
    def build(cls, texts: list[str]) -> BM25:
        docs: dict[str, list[int]] = {}
        freqs: dict[str, list[int]] = {}
        lengths = np.zeros(len(texts), dtype=np.float32)
        for row, text in enumerate(texts):
            counts = Counter(tokens(text))
            lengths[row] = sum(counts.values())
            for term, tf in counts.items():
                docs.setdefault(term, []).append(row)
                freqs.setdefault(term, []).append(tf)
        postings = {
            t: (np.asarray(d, dtype=np.int64), np.asarray(freqs[t], dtype=np.float32))
            for t, d in docs.items()
        }
        return cls(postings, lengths, float(lengths.mean()) if len(texts) else 1.0)

    def scores(self, query: str, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
        out = np.zeros(len(self.lengths), dtype=np.float32)
        n = len(self.lengths)
        norm = k1 * (1 - b + b * self.lengths / max(self.avg, 1e-9))
        for term in set(tokens(query)):
            posting = self.postings.get(term)
            if posting is None:
                continue
            rows, tf = posting
            idf = math.log(1 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            out[rows] += idf * tf * (k1 + 1) / (tf + norm[rows])
        return out


@dataclass
class Partition:
    """One tenant's rows of one collection."""

    dim: int
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    ids: list[str] = field(default_factory=list)
    metadata: list[dict[str, Scalar]] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    vocab: dict[str, dict[tuple[str, Any], int]] = field(default_factory=dict)
    bm25: BM25 | None = None
    int8: int8scan.Int8Codes | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def put(self, ids: list[str], vectors: np.ndarray, metadata: list[dict[str, Scalar]]) -> None:
        new = [i for i, cid in enumerate(ids) if cid not in self.rows]
        for i, cid in enumerate(ids):
            if cid in self.rows:
                row = self.rows[cid]
                self.matrix[row] = vectors[i]
                self.metadata[row] = metadata[i]
        need = self.n + len(new)
        if need > len(self.matrix):
            grown = np.zeros((max(need, 2 * len(self.matrix), 64), self.dim), dtype=np.float32)
            grown[: self.n] = self.matrix[: self.n]
            self.matrix = grown
        for i in new:
            self.rows[ids[i]] = self.n
            self.matrix[self.n] = vectors[i]
            self.ids.append(ids[i])
            self.metadata.append(metadata[i])
        if self.int8 is not None:  # kept row for row with the matrix, re-encoding only these rows
            self.int8.update(self.matrix, sorted({self.rows[cid] for cid in ids}))
        self._invalidate()

    def remove(self, ids: set[str]) -> None:
        keep = [row for row, cid in enumerate(self.ids) if cid not in ids]
        self.matrix = self.matrix[keep].copy()
        if self.int8 is not None:
            self.int8 = self.int8.take(keep)
        self.ids = [self.ids[r] for r in keep]
        self.metadata = [self.metadata[r] for r in keep]
        self.rows = {cid: r for r, cid in enumerate(self.ids)}
        self._invalidate()

    def _invalidate(self) -> None:
        self.columns.clear()
        self.vocab.clear()
        self.bm25 = None

    def mask(self, filters: Any) -> np.ndarray | None:
        """Rows matching every filter (None: no filter). Columns are built once per property."""
        if not filters:
            return None
        mask = np.ones(self.n, dtype=bool)
        for prop, wanted in filters.items():
            if prop not in self.columns:
                vocab: dict[tuple[str, Any], int] = {}
                codes = np.fromiter(
                    (
                        vocab.setdefault(filter_key(m[prop]), len(vocab)) if prop in m else -1
                        for m in self.metadata
                    ),
                    dtype=np.int32,
                    count=self.n,
                )
                self.columns[prop], self.vocab[prop] = codes, vocab
            values = wanted if isinstance(wanted, list | tuple) else [wanted]
            codes_wanted = [self.vocab[prop][k] for k in map(filter_key, values) if k in self.vocab[prop]]
            mask &= np.isin(self.columns[prop], codes_wanted)
        return mask


# In point look-ups by id, "+tenant" keeps SQLite on the primary key instead of the
# (collection, tenant, source) index, which would scan every row of the tenant.


def rank(q: Query, vec: np.ndarray | None, bm: np.ndarray | None) -> list[tuple[int, float, float | None]]:
    """(candidate index, score, distance) best first; hybrid fuses min-max-normalised scores."""
    k = q.top_k
    if bm is None:
        assert vec is not None
        top = top_indices(vec, k)
        return [(i, float(vec[i]), float(1.0 - vec[i])) for i in top if np.isfinite(vec[i])]
    if vec is None:
        top = top_indices(bm, k)
        return [(i, float(bm[i]), None) for i in top if bm[i] > 0]
    pool = hybrid_pool(k)
    fused: dict[int, float] = {}
    for scores, weight in ((vec, q.alpha), (bm, 1.0 - q.alpha)):
        top = [
            i
            for i in top_indices(scores, pool)
            if np.isfinite(scores[i]) and (scores is vec or scores[i] > 0)
        ]
        if not top:
            continue
        chosen = scores[top]
        lo, hi = float(chosen.min()), float(chosen.max())
        for i, s in zip(top, chosen, strict=True):
            fused[i] = fused.get(i, 0.0) + weight * ((float(s) - lo) / (hi - lo) if hi > lo else 1.0)
    best = sorted(fused.items(), key=lambda kv: -kv[1])[:k]
    return [(i, s, float(1.0 - vec[i]) if np.isfinite(vec[i]) else None) for i, s in best]


def hybrid_pool(k: int) -> int:
    """How many of each side's best hybrid fuses."""
    return max(4 * k, 50)


def top_indices(scores: np.ndarray, k: int) -> list[int]:
    idx = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
    return [int(i) for i in idx[np.argsort(-scores[idx], kind="stable")]]


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.where(norms == 0, 1.0, norms), dtype=np.float32)


_blas_limited = False


def single_threaded_blas() -> None:
    # One query is a memory-bound matrix-vector product: BLAS threads only add hand-off cost,
    # and on a shared 2-core box they made a 10k search 30x slower (docs/rag.md).
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")
