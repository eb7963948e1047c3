"""Token counting and chunking for RAG, offline.

tiktoken's BPE files come from the litellm wheel (``gateway.tokens``). When they cannot be
loaded, counts fall back to an estimate of one token per 4 characters, which over-counts for
most European languages and so stays on the safe side of a cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any


class Tokenizer:
    """Counts, truncates and windows text in tokens of one encoding (or the estimate)."""

    def __init__(self, name: str, encoding: Any = None) -> None:
        self.name = name
        self._enc = encoding

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text)) if self._enc else -(-len(text) // 4)

    def truncate(self, text: str, limit: int) -> str:
        if self._enc is None:
            return text[: limit * 4]
        tokens = self._enc.encode_ordinary(text)
        return text if len(tokens) <= limit else str(self._enc.decode(tokens[:limit]))

    def windows(self, text: str, size: int, overlap: int) -> Iterator[str]:
        """Pieces of ``size`` tokens; each starts ``size - overlap`` tokens after the previous."""
        if self._enc is None:
            units: Any = text
            size, overlap = size * 4, overlap * 4
        else:
            units = self._enc.encode_ordinary(text)
        step = size - overlap
        for start in range(0, max(len(units) - overlap, 1), step):
            part = units[start : start + size]
            piece = (part if self._enc is None else self._enc.decode(part)).strip()
            if piece:
                yield piece


@lru_cache(maxsize=8)
def tokenizer(name: str = "cl100k_base") -> Tokenizer:
    """A tiktoken encoding by name, or ``estimate``; the estimate also when tiktoken fails."""
    if name != "estimate":
        try:
            import tiktoken

            from gateway.tokens import configure_tiktoken_offline

            configure_tiktoken_offline()
            return Tokenizer(name, tiktoken.get_encoding(name))
        except Exception:  # the next tokenizer is tried  # noqa: BLE001
            pass
    return Tokenizer("estimate")
