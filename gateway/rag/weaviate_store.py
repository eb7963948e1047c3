"""Weaviate as the vector store, through weaviate-client v4's async client (search and batch on gRPC).

One Weaviate class per gateway collection (``<prefix>_<collection>``). Every object carries
``tenant``, ``source``, ``chunk_id``, ``content_hash``, ``subject`` (pseudonym) and
``ingested_at``; metadata keys become ``meta_<key>`` properties. Every query carries a
``tenant == <caller>`` filter built here, so no caller can leave it out.

The client connects with ``skip_init_checks``: the default checks also ask PyPI for the latest
client version, and a compliance gateway does not phone home. Liveness (REST and the gRPC
health check) is checked explicitly instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from gateway.config.rag import WeaviateStore as Settings
from gateway.rag.base import Chunk, Hit, Query, StoreError, VectorStore
from gateway.rag.weaviate_schema import properties, query_filter, schema, tenant_filter

_RETURN = ["source", "text", "content_hash"]
SUBJECT_CHUNKS_MAX = 10_000  # one query per collection (Weaviate's default QUERY_MAXIMUM_RESULTS)


class WeaviateStore(VectorStore):
    name = "weaviate"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jurisdiction = settings.jurisdiction
        self.server_vectorizer = settings.vectorizer == "server"
        self._client: Any = None
        self._connecting = asyncio.Lock()
        self._known: set[str] = set()

    def class_name(self, collection: str) -> str:
        return f"{self.settings.class_prefix}_{collection}"

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._connecting:
            if self._client is None:
                self._client = await self._connect()
        return self._client

    async def _connect(self) -> Any:
        import weaviate
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout

        s = self.settings
        url = urlparse(s.url)
        secure = url.scheme == "https"
        host = url.hostname or "127.0.0.1"
        client = weaviate.use_async_with_custom(
            http_host=host,
            http_port=url.port or (443 if secure else 80),
            http_secure=secure,
            grpc_host=s.grpc_host or host,
            grpc_port=s.grpc_port,
            grpc_secure=s.grpc_secure,
            auth_credentials=Auth.api_key(s.api_key) if s.api_key else None,
            skip_init_checks=True,
            additional_config=AdditionalConfig(
                timeout=Timeout(init=s.timeout_s, query=s.timeout_s, insert=s.timeout_s)
            ),
        )
        try:
            await client.connect()
            if not await client.is_live():
                raise StoreError("Weaviate is not live (REST or gRPC health check failed)")
        except StoreError:
            await client.close()
            raise
        except Exception as exc:  # close the client whatever failed  # noqa: BLE001
            await client.close()
            raise StoreError(f"cannot connect to Weaviate: {type(exc).__name__}") from None
        return client

    async def _collection(self, collection: str, create: bool = False) -> Any:
        client = await self.client()
        name = self.class_name(collection)
        if name not in self._known:
            if not await client.collections.exists(name):
                if not create:
                    return None
                if self.server_vectorizer:
                    raise StoreError(f"collection {name} must be created with its vectorizer by the operator")
                await client.collections.create(name, **schema())
            self._known.add(name)
        return client.collections.use(name)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"Weaviate call failed: {type(exc).__name__}") from exc

    # --- writes ----------------------------------------------------------------------------

    async def upsert(self, collection: str, chunks: Sequence[Chunk]) -> int:
        from weaviate.classes.data import DataObject

        if not chunks:
            return 0
        col = await self._call(self._collection(collection, create=True))
        objects = [
            DataObject(
                properties=properties(c),
                uuid=c.id,
                vector=None if self.server_vectorizer or c.vector is None else [float(x) for x in c.vector],
            )
            for c in chunks
        ]
        result = await self._call(col.data.insert_many(objects))
        if result.errors:
            raise StoreError(f"Weaviate rejected {len(result.errors)} of {len(objects)} objects")
        return len(objects)

    async def _delete_where(self, col: Any, where: Any) -> int:
        total = 0
        for _ in range(1000):  # the server deletes at most QUERY_MAXIMUM_RESULTS per call
            result = await self._call(col.data.delete_many(where=where))
            total += int(result.successful)
            if not result.matches or not result.successful:
                break
        return total

    async def delete_by_source(
        self, collection: str, tenant: str, source: str, keep: Sequence[str] = ()
    ) -> int:
        from weaviate.classes.query import Filter

        col = await self._call(self._collection(collection))
        if col is None:
            return 0
        where = tenant_filter(tenant) & Filter.by_property("source").equal(source)
        if keep:
            where = where & Filter.by_id().contains_none(list(keep))
        return await self._delete_where(col, where)

    async def _gateway_collections(self) -> list[tuple[str, Any]]:
        client = await self.client()
        names = await self._call(client.collections.list_all(simple=True))
        prefix = self.settings.class_prefix + "_"
        return [
            (name[len(prefix) :], client.collections.use(name))
            for name in sorted(names)
            if name.startswith(prefix)
        ]

    async def delete_by_subject(self, tenant: str, subject: str) -> int:
        from weaviate.classes.query import Filter

        total = 0
        for _, col in await self._gateway_collections():
            where = tenant_filter(tenant) & Filter.by_property("subject").equal(subject)
            total += await self._delete_where(col, where)
        return total

    async def delete_ingested_before(self, before: float, dry_run: bool = False) -> int:
        from weaviate.classes.query import Filter

        total = 0
        for _, col in await self._gateway_collections():
            where = Filter.by_property("ingested_at").less_than(before)
            if dry_run:
                result = await self._call(col.aggregate.over_all(total_count=True, filters=where))
                total += int(result.total_count or 0)
            else:
                total += await self._delete_where(col, where)
        return total

    async def subject_sources(self, tenant: str, subject: str) -> list[tuple[str, str, int]]:
        from collections import Counter

        from weaviate.classes.query import Filter

        out: list[tuple[str, str, int]] = []
        for collection, col in await self._gateway_collections():
            where = tenant_filter(tenant) & Filter.by_property("subject").equal(subject)
            result = await self._call(
                col.query.fetch_objects(filters=where, limit=SUBJECT_CHUNKS_MAX, return_properties=["source"])
            )
            counts = Counter(str(o.properties.get("source")) for o in result.objects)
            out.extend((collection, source, n) for source, n in sorted(counts.items()))
        return out

    # --- reads -----------------------------------------------------------------------------

    async def count(self, collection: str, tenant: str) -> int:
        col = await self._call(self._collection(collection))
        if col is None:
            return 0
        result = await self._call(col.aggregate.over_all(total_count=True, filters=tenant_filter(tenant)))
        return int(result.total_count or 0)

    async def existing_ids(self, collection: str, tenant: str, ids: Sequence[str]) -> set[str]:
        from weaviate.classes.query import Filter

        col = await self._call(self._collection(collection))
        if col is None or not ids:
            return set()
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            res = await self._call(
                col.query.fetch_objects(
                    filters=tenant_filter(tenant) & Filter.by_id().contains_any(part),
                    limit=len(part),
                    return_properties=[],
                )
            )
            found.update(str(o.uuid) for o in res.objects)
        return found

    async def search(self, collection: str, query: Query) -> list[Hit]:
        from weaviate.classes.query import MetadataQuery

        col = await self._call(self._collection(collection))
        if col is None:
            return []
        where = query_filter(query.tenant, query.filters)
        meta = MetadataQuery(distance=True, score=True)
        common: dict[str, Any] = {
            "limit": query.top_k,
            "filters": where,
            "return_metadata": meta,
            "return_properties": _RETURN,
        }
        vector = None if query.vector is None else [float(x) for x in query.vector]
        if query.mode == "bm25":
            res = await self._call(col.query.bm25(query=query.text, query_properties=["text"], **common))
        elif query.mode == "hybrid":
            res = await self._call(
                col.query.hybrid(
                    query=query.text,
                    vector=None if self.server_vectorizer else vector,
                    alpha=query.alpha,
                    query_properties=["text"],
                    max_vector_distance=query.max_distance,
                    **common,
                )
            )
        elif self.server_vectorizer:
            res = await self._call(
                col.query.near_text(query=query.text, distance=query.max_distance, **common)
            )
        else:
            if vector is None:
                raise StoreError("vector search needs a query vector")
            res = await self._call(
                col.query.near_vector(near_vector=vector, distance=query.max_distance, **common)
            )
        hits = []
        for o in res.objects:
            p, m = o.properties, o.metadata
            if query.mode == "vector":
                score = 1.0 - float(m.distance) if m.distance is not None else 0.0
            else:
                score = float(m.score or 0.0)
            hits.append(
                Hit(
                    str(o.uuid),
                    str(p.get("source", "")),
                    str(p.get("text", "")),
                    str(p.get("content_hash", "")),
                    score=score,
                    distance=None if m.distance is None else float(m.distance),
                )
            )
        return hits

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
