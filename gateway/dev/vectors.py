"""The development upstream's embeddings: deterministic vectors, as floats or base64 like OpenAI's."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from typing import Any

_WORDS = re.compile(r"\w+")


def embed(text: str, dim: int) -> list[float]:
    """A deterministic unit vector: each word, and each character trigram of a word, adds a signed unit to
    one of ``dim`` buckets, so texts that share words (or word stems) are near. Not a language model."""
    out = [0.0] * dim
    for word in _WORDS.findall(text.lower()):
        padded = f" {word} "
        for feature, weight in ((word, 1.0), *((padded[i : i + 3], 0.5) for i in range(len(padded) - 2))):
            h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            out[h % dim] += weight if (h >> 32) & 1 else -weight
    norm = sum(v * v for v in out) ** 0.5
    if not norm:
        return [1.0] + [0.0] * (dim - 1)
    return [round(v / norm, 6) for v in out]


def encoded(vector: list[float], encoding_format: Any) -> list[float] | str:
    """``base64``: little-endian float32, as OpenAI encodes it (the openai npm SDK asks for it by default)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
