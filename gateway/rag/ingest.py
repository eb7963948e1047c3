"""Ingestion: files -> token windows -> embeddings -> vector store, idempotent by content hash.

A chunk's id is derived from (collection, tenant, source, content hash), so re-running an
ingestion embeds and writes only what changed, and chunks that vanished from a file are
deleted. ``subject`` must already be a pseudonym (``Gateway.pseudonym``), never a raw id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.rag.base import RESERVED, Chunk, Scalar, VectorStore, chunk_id, content_hash
from gateway.rag.embedders import Embedder
from gateway.rag.text import tokenizer


@dataclass
class Report:
    files: int = 0
    skipped_files: int = 0
    chunks: int = 0
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    seconds: float = 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


def documents(path: Path) -> Iterator[tuple[str, str | None]]:
    """(source, text) for every file under ``path``; text is None for binary or non-UTF-8 files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if f == path else f.relative_to(path).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            yield rel, None
            continue
        yield rel, None if "\x00" in text else text


def plan(
    path: Path, chunk_tokens: int = 400, overlap: int = 50, encoding: str = "cl100k_base"
) -> list[tuple[str, list[str]]]:
    """Every document's pieces, before anything is embedded; None-text files become empty lists."""
    tok = tokenizer(encoding)
    out = []
    for source, text in documents(path):
        out.append((source, list(dict.fromkeys(tok.windows(text, chunk_tokens, overlap))) if text else []))
    return out


async def ingest(
    store: VectorStore,
    embedder: Embedder,
    collection: str,
    tenant: str,
    path: Path,
    *,
    subject: str | None = None,
    metadata: Mapping[str, Scalar] | None = None,
    chunk_tokens: int = 400,
    overlap: int = 50,
    batch: int = 64,
    encoding: str = "cl100k_base",
    allowed: frozenset[str] | None = None,
    progress: Callable[[int], None] | None = None,
    planned: list[tuple[str, list[str]]] | None = None,
) -> Report:
    if overlap >= chunk_tokens:
        raise ValueError("overlap must be smaller than chunk_tokens")
    meta = dict(metadata or {})
    if clash := RESERVED & set(meta):
        raise ValueError(f"metadata may not set reserved properties: {sorted(clash)}")
    report = Report()
    started = time.perf_counter()
    for source, pieces in planned if planned is not None else plan(path, chunk_tokens, overlap, encoding):
        if not pieces:
            report.skipped_files += 1
            continue
        report.files += 1
        report.chunks += len(pieces)
        digests = [content_hash(p) for p in pieces]
        ids = [chunk_id(collection, tenant, source, d) for d in digests]
        have = await store.existing_ids(collection, tenant, ids)
        todo = [i for i, cid in enumerate(ids) if cid not in have]
        report.unchanged += len(pieces) - len(todo)
        if progress and len(pieces) > len(todo):
            progress(len(pieces) - len(todo))
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            vectors = await embedder([pieces[i] for i in part], allowed)
            now = time.time()
            report.written += await store.upsert(
                collection,
                [
                    Chunk(ids[i], tenant, source, pieces[i], digests[i], now, vectors[j], subject, meta)
                    for j, i in enumerate(part)
                ],
            )
            if progress:
                progress(len(part))
        report.deleted += await store.delete_by_source(collection, tenant, source, keep=ids)
    report.seconds = time.perf_counter() - started
    return report
