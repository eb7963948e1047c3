"""`gateway rag`: ingest documents, count chunks, erase by subject."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import (
    ConfigOpt,
    _config,
)

rag_app = typer.Typer(
    help="RAG collections: ingest documents, count chunks, erase by subject.", no_args_is_help=True
)


@rag_app.command("ingest")
def rag_ingest(
    path: Annotated[
        Path, typer.Argument(help="A file or a folder (read recursively; hidden files skipped).")
    ],
    tenant: Annotated[str, typer.Option(help="Tenant that owns the chunks.")],
    collection: Annotated[str, typer.Option(help="Collection (config.yaml rag.collections).")],
    subject_id: Annotated[
        str | None,
        typer.Option(help="Data subject the documents concern; only its HMAC pseudonym is stored."),
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option(help="Metadata key=value stored on every chunk (repeatable).")
    ] = None,
    chunk_tokens: Annotated[int, typer.Option(help="Tokens per chunk.")] = 400,
    overlap: Annotated[int, typer.Option(help="Tokens shared by consecutive chunks.")] = 50,
    batch: Annotated[int, typer.Option(help="Chunks per embeddings call and per write.")] = 64,
    config: ConfigOpt = None,
) -> None:
    """Chunk, embed and store documents; re-running writes only what changed."""
    from gateway.rag.cli import run_ingest

    run_ingest(
        _config(config), path, tenant, collection, subject_id, meta or [], chunk_tokens, overlap, batch
    )


@rag_app.command("count")
def rag_count(
    tenant: Annotated[str, typer.Option(help="Tenant.")],
    collection: Annotated[str, typer.Option(help="Collection.")],
    config: ConfigOpt = None,
) -> None:
    """Print how many chunks a tenant has in a collection."""
    from gateway.rag.cli import run_count

    run_count(_config(config), tenant, collection)


@rag_app.command("delete-subject")
def rag_delete_subject(
    tenant: Annotated[str, typer.Option(help="Tenant.")],
    subject_id: Annotated[str, typer.Option(help="The data subject's id (pseudonymised).")],
    config: ConfigOpt = None,
) -> None:
    """Delete a tenant's chunks concerning a data subject, in every collection. `gateway subject erase`
    does this and erases the subject from every other store too."""
    from gateway.rag.cli import run_delete_subject

    run_delete_subject(_config(config), tenant, subject_id)
