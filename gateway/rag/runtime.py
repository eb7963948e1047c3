"""The process-wide RAG resources: one vector store and its embedders, built from ``config.rag``.

The ``rag_context`` policy creates it on first use and keeps it as the process-wide shared object
``"rag"`` (``Services.shared``), so every policy instance and bundle reload shares one connection.
Tests put their own ``Rag`` there first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config.rag import RagSettings
from gateway.rag.base import StoreError, VectorStore

if TYPE_CHECKING:
    from gateway.rag.embedders import Embed, Embedder


@dataclass
class Rag:
    settings: RagSettings
    store: VectorStore
    embed: Embed | None = None
    embedders: dict[str, Embedder] = field(default_factory=dict)

    def allows(self, collection: str, tenant: str) -> bool:
        """The collection ACL: only tenants the operator listed may use a collection."""
        spec = self.settings.collections.get(collection)
        return spec is not None and tenant in spec.tenants

    async def aclose(self) -> None:
        """Shutdown: close the store's connections (Weaviate's REST and gRPC channels)."""
        await self.store.close()

    @property
    def needs_vectors(self) -> bool:
        return not getattr(self.store, "server_vectorizer", False)

    def embedder(self, collection: str) -> Embedder:
        if self.settings.embedder == "minilm":
            local = self.embedders.get("minilm")
            if local is None:
                from gateway.rag.minilm import MiniLMEmbedder

                local = self.embedders["minilm"] = MiniLMEmbedder()
            return local
        spec = self.settings.collections.get(collection)
        model = (spec.embedding_model if spec else None) or self.settings.embedding_model
        found = self.embedders.get(model)
        if found is None:
            if self.embed is None:
                raise StoreError("no embeddings path is configured")
            from gateway.rag.embedders import GatewayEmbedder

            found = GatewayEmbedder(self.embed, model, frozenset(self.settings.embedding_jurisdictions))
            self.embedders[model] = found
        return found


def open_existing_store(settings: RagSettings) -> VectorStore | None:
    """The configured store, or None when it is an embedded index that was never made (nothing to read or
    delete, and no directory to create)."""
    if settings.backend == "embedded" and not Path(settings.embedded.path).exists():
        return None
    return open_store(settings)


def open_store(settings: RagSettings) -> VectorStore:
    if settings.backend == "weaviate":
        from gateway.rag.weaviate_store import WeaviateStore

        assert settings.weaviate is not None
        return WeaviateStore(settings.weaviate)
    from gateway.rag.embedded import EmbeddedIndex

    return EmbeddedIndex(settings.embedded.path, settings.embedded.jurisdiction)
