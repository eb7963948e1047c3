"""How gateway chunks look in Weaviate: the class schema, an object's properties, and the filters
every query carries (``tenant == <caller>`` first). Weaviate's classes are imported when used."""

from __future__ import annotations

from typing import Any, cast

from gateway.rag.base import Chunk, Filters


def tenant_filter(tenant: str) -> Any:
    from weaviate.classes.query import Filter

    return Filter.by_property("tenant").equal(tenant)


def query_filter(tenant: str, filters: Filters) -> Any:
    from weaviate.classes.query import Filter

    where = tenant_filter(tenant)
    for prop, value in filters.items():
        name = "source" if prop == "source" else f"meta_{prop}"
        value = cast(Any, value)
        if isinstance(value, list | tuple):
            where = where & Filter.by_property(name).contains_any(list(value))
        else:
            where = where & Filter.by_property(name).equal(value)
    return where


def properties(c: Chunk) -> dict[str, Any]:
    props: dict[str, Any] = {
        "tenant": c.tenant,
        "source": c.source,
        "chunk_id": c.id,
        "text": c.text,
        "content_hash": c.content_hash,
        "subject": c.subject or "",
        "ingested_at": c.ingested_at,
    }
    props.update({f"meta_{k}": v for k, v in c.metadata.items()})
    return props


def schema() -> dict[str, Any]:
    from weaviate.classes.config import Configure, DataType, Property, Tokenization

    def keyword(name: str) -> Any:
        return Property(
            name=name,
            data_type=DataType.TEXT,
            tokenization=Tokenization.FIELD,
            index_searchable=False,
            skip_vectorization=True,
        )

    return {
        "properties": [
            keyword("tenant"),
            keyword("source"),
            keyword("chunk_id"),
            keyword("content_hash"),
            keyword("subject"),
            Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
            Property(name="ingested_at", data_type=DataType.NUMBER, skip_vectorization=True),
        ],
        "vector_config": Configure.Vectors.self_provided(),
    }
