"""The bodies of ``gateway rag ...`` commands (gateway/cli.py declares the options).

Embeddings go through the gateway's own routing (``gateway.pipeline.embeddings_path``) to the
configured embeddings deployment, restricted to ``rag.embedding_jurisdictions``, exactly as queries do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateway.config import Config
from gateway.identity import pseudonymiser
from gateway.pipeline import embeddings_path
from gateway.rag.base import Scalar
from gateway.rag.ingest import Report, ingest, plan
from gateway.rag.runtime import Rag, open_store

T = TypeVar("T")
out = Console(soft_wrap=True)
err = Console(stderr=True)


def _parse_meta(items: list[str]) -> dict[str, Scalar]:
    meta: dict[str, Scalar] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]error[/red] --meta expects key=value, got {item!r}")
            raise typer.Exit(2)
        meta[key] = value
    return meta


def _check_acl(config: Config, tenant: str, collection: str) -> None:
    spec = config.rag.collections.get(collection)
    if spec is None or tenant not in spec.tenants:
        err.print(
            f"[red]error[/red] tenant {tenant!r} may not use collection {collection!r} "
            "(config.yaml rag.collections)"
        )
        raise typer.Exit(2)


async def _with_rag(config: Config, work: Callable[[Rag], Awaitable[T]]) -> T:
    """``work`` on the configured vector store, embedding through the gateway's own embeddings path."""
    async with embeddings_path(config) as embed:
        rag = Rag(config.rag, open_store(config.rag), embed)
        try:
            return await work(rag)
        finally:
            await rag.store.close()


def run_ingest(
    config: Config,
    path: Path,
    tenant: str,
    collection: str,
    subject_id: str | None,
    meta: list[str],
    chunk_tokens: int,
    overlap: int,
    batch: int,
) -> Report:
    _check_acl(config, tenant, collection)
    if not path.exists():
        err.print(f"[red]error[/red] {path} does not exist")
        raise typer.Exit(2)
    if not 0 <= overlap < chunk_tokens:
        err.print("[red]error[/red] --overlap must be at least 0 and smaller than --chunk-tokens")
        raise typer.Exit(2)
    metadata = _parse_meta(meta)
    planned = plan(path, chunk_tokens, overlap)
    total = sum(len(p) for _, p in planned)

    async def work(rag: Rag) -> Report:
        subject = pseudonymiser(config.server.secret_key)(subject_id) if subject_id else None
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=False) as bar:
            task = bar.add_task(f"ingesting into {collection}", total=total)
            return await ingest(
                rag.store,
                rag.embedder(collection),
                collection,
                tenant,
                path,
                subject=subject,
                metadata=metadata,
                chunk_tokens=chunk_tokens,
                overlap=overlap,
                batch=batch,
                progress=lambda n: bar.advance(task, n),
                planned=planned,
            )

    try:
        report = asyncio.run(_with_rag(config, work))
    except Exception as exc:  # reported, exit status 1  # noqa: BLE001
        err.print(f"[red]error[/red] ingestion failed: {type(exc).__name__}: {str(exc)[:200]}")
        raise typer.Exit(1) from None
    # One line, the same in a terminal and in a pipe (a table would cut its headers at 80 columns).
    out.print(
        f"{report.files} files ({report.skipped_files} skipped), {report.chunks} chunks: {report.written} written, "
        f"{report.unchanged} unchanged, {report.deleted} stale deleted, in {report.seconds:.2f} s "
        f"({report.chunks_per_s:.0f} chunks/s)",
        highlight=False,
    )
    return report


def run_count(config: Config, tenant: str, collection: str) -> int:
    _check_acl(config, tenant, collection)

    async def work(rag: Rag) -> int:
        return await rag.store.count(collection, tenant)

    n = asyncio.run(_with_rag(config, work))
    out.print(f"{n} chunks for tenant {tenant} in {collection}")
    return n


def run_delete_subject(config: Config, tenant: str, subject_id: str) -> int:
    async def work(rag: Rag) -> int:
        return await rag.store.delete_by_subject(tenant, pseudonymiser(config.server.secret_key)(subject_id))

    n = asyncio.run(_with_rag(config, work))
    out.print(f"deleted {n} chunks concerning the subject")
    return n
