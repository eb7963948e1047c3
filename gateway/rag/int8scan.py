"""Exact top-k by cosine with an int8 pre-scan (docs/rag.md, "Exact search with an int8 pre-scan").

A full float32 scan of 100k x 384 rows reads 150 MB and is memory-bound at ~4.5-5 ms on one
core. Each row is also kept as int8 codes with a per-row scale (``row ~= codes * scale``): a
quarter of the bytes, scanned with SimSIMD's int8 dot-product kernels (exact int32 sums).

Exactness does not rest on the quantisation being "good enough". For a stored row x and the
query q, with x^ = codes * scale, q^ = qcodes * qscale, e = x - x^, f = q - q^:

    x.q - x^.q^ = e.q + x^.f,   so   |x.q - x^.q^| <= ||e|| ||q|| + ||x^|| ||f||     (Cauchy-Schwarz)

``||e||`` and ``||x^||`` are computed per row in float64 when the codes are built, ``||f||`` per
query. With ``B_r`` that bound plus a slack for float32 rounding, the k rows with the best
approximate scores each have a true score >= ``approx_r - B_r``, so the k-th best true score is at
least ``L = min`` of those. Any row whose true score can reach ``L`` has ``approx_r + B_r >= L``;
every other row is provably outside the top k. The survivors (usually a handful) are rescored
exactly in float32 against the float32 matrix, and the top k is taken from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_simsimd: Any
try:
    import simsimd as _simsimd
except ImportError:  # pragma: no cover - a declared dependency; without it the float32 scan runs
    _simsimd = None

# Covers float32 rounding of the exact rescoring (<= dim * 2**-24 for unit vectors: 2.3e-5 at 384
# dimensions, 1.2e-4 at 2048) and of the approximate scores (a few ulps).
_SLACK = 1e-4 + 2e-7
_UP = 1 + 1e-6  # float64 -> float32 rounding of the stored bounds, always upwards
_BLOCK = 1 << 20  # floats per float64 block while encoding


def available() -> bool:
    return _simsimd is not None


def _encode(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """int8 codes, per-row scale, and upper bounds on ||row - codes*scale|| and ||codes*scale||.

    Works in float64 a block of rows at a time, so the temporaries stay a few MB.
    """
    n, dim = rows.shape
    codes = np.empty((n, dim), dtype=np.int8)
    scale, err, norm = (np.empty(n, dtype=np.float32) for _ in range(3))
    step = max(1, _BLOCK // max(dim, 1))
    for start in range(0, n, step):
        wide = rows[start : start + step].astype(np.float64)
        peak = np.abs(wide).max(axis=1) if dim else np.zeros(len(wide))
        block_scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        wide_scale = block_scale.astype(np.float64)[:, None]
        block = np.clip(np.rint(wide / wide_scale), -127, 127).astype(np.int8)
        approx = block * wide_scale
        # Round the float64 bounds up into float32 so storing them never shrinks them.
        end = start + len(wide)
        codes[start:end], scale[start:end] = block, block_scale
        err[start:end] = np.linalg.norm(wide - approx, axis=1) * _UP
        norm[start:end] = np.linalg.norm(approx, axis=1) * _UP
    return codes, scale, err, norm


@dataclass
class Int8Codes:
    """int8 copy of a partition's matrix, row for row (capacity follows the matrix)."""

    codes: np.ndarray
    scale: np.ndarray
    err: np.ndarray
    norm: np.ndarray
    max_norm: float

    @classmethod
    def build(cls, matrix: np.ndarray) -> Int8Codes:
        codes, scale, err, norm = _encode(matrix)
        return cls(codes, scale, err, norm, float(norm.max()) if len(norm) else 0.0)

    def update(self, matrix: np.ndarray, rows: list[int]) -> None:
        """Re-encode ``rows`` of ``matrix`` (which may have grown since the last call)."""
        cap = len(matrix)
        if cap != len(self.codes):
            keep = min(cap, len(self.codes))
            codes = np.zeros((cap, matrix.shape[1]), dtype=np.int8)
            codes[:keep] = self.codes[:keep]
            grown = [np.zeros(cap, dtype=np.float32) for _ in range(3)]
            for new, old in zip(grown, (self.scale, self.err, self.norm), strict=True):
                new[:keep] = old[:keep]
            self.codes, (self.scale, self.err, self.norm) = codes, grown
        if rows:
            idx = np.asarray(rows, dtype=np.int64)
            codes, scale, err, norm = _encode(matrix[idx])
            self.codes[idx], self.scale[idx], self.err[idx], self.norm[idx] = codes, scale, err, norm
            self.max_norm = max(self.max_norm, float(norm.max()))

    def take(self, keep: list[int]) -> Int8Codes:
        norm = self.norm[keep]
        return Int8Codes(
            self.codes[keep], self.scale[keep], self.err[keep], norm, float(norm.max()) if len(norm) else 0.0
        )


def top_rows(
    matrix: np.ndarray, codes: Int8Codes, q: np.ndarray, k: int, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows (a superset of the exact top k among ``mask``) and their exact float32 scores.

    ``matrix`` is the partition's live rows (n x dim, float32), ``q`` the float32 query.
    None when the bound would keep too many rows to pay off: the caller scans in float32.
    """
    assert _simsimd is not None
    n = len(matrix)
    if k < 1:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    peak = float(np.abs(q).max()) if len(q) else 0.0
    qscale = peak / 127.0 if peak > 0 else 1.0
    qcodes = np.clip(np.rint(q.astype(np.float64) / qscale), -127, 127).astype(np.int8)
    wide_q = q.astype(np.float64)
    qerr = float(np.linalg.norm(wide_q - qcodes.astype(np.float64) * qscale))
    qnorm = float(np.linalg.norm(wide_q))
    raw: Any = _simsimd.cdist(qcodes[None, :], codes.codes[:n], metric="dot", out_dtype="float32", threads=1)
    # Integer sums, exact in float32 below 1040 dimensions; above, rounded by <= 1 ulp (slack).
    approx = np.asarray(raw).reshape(n)
    approx *= codes.scale[:n]
    approx *= np.float32(qscale)
    if mask is not None:
        approx[~mask] = -np.inf
        valid = int(np.count_nonzero(mask))
    else:
        valid = n
    err = codes.err[:n]
    # Query-side part of the bound, the same for every row (||x^|| <= max_norm).
    # err * qnorm <= err + err * (qnorm - 1)+, and err <= ||x|| + ||x^|| <= 1 + max_norm.
    extra = codes.max_norm * qerr + max(qnorm - 1.0, 0.0) * (1.0 + codes.max_norm) + _SLACK
    if valid > k:
        best = np.argpartition(approx, n - k)[n - k :]
        floor = float(np.min(approx[best] - err[best])) - extra
        rows = np.flatnonzero(approx + err >= np.float32(floor - extra))
    else:
        rows = np.flatnonzero(approx > -np.inf)
    if len(rows) * 4 > n:
        return None
    return rows, matrix[rows] @ q
