"""The ``rag:`` section of config.yaml (``gateway.config.rag``): where the vector store lives and who may read what.

Operators own this section (infrastructure, jurisdiction, collection ownership); the compliance
team's ``rag_context`` policy only names a collection and how to use it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

COLLECTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedStore(_Strict):
    path: str = Field("./rag-index", description="Directory holding the embedded index (one SQLite file).")
    jurisdiction: str = Field(
        "EU", pattern=r"^[A-Z]{2,3}$", description="Jurisdiction of the machine that runs the gateway."
    )
    region: str = Field("local", min_length=1, description="Hosting region of the gateway machine.")


class WeaviateStore(_Strict):
    url: str = Field("http://127.0.0.1:8080", description="Weaviate REST base URL (scheme, host, port).")
    grpc_host: str | None = Field(None, description="gRPC host. Default: the host of `url`.")
    grpc_port: int = Field(50051, ge=1, le=65535, description="Weaviate gRPC port.")
    grpc_secure: bool = Field(False, description="Use TLS for gRPC.")
    api_key: str = Field("", repr=False, description="API key, normally `${WEAVIATE_API_KEY}`; never logged.")
    jurisdiction: str = Field(
        ..., pattern=r"^[A-Z]{2,3}$", description="Legal jurisdiction of the Weaviate cluster, e.g. `EU`."
    )
    region: str = Field(..., min_length=1, description="Hosting region of the Weaviate cluster.")
    vectorizer: Literal["none", "server"] = Field(
        "none",
        description=(
            "`none`: the gateway computes embeddings and searches with near_vector. `server`: the "
            "collections have a server-side vectorizer and queries go as near_text/hybrid text."
        ),
    )
    class_prefix: str = Field(
        "Gw",
        pattern=r"^[A-Z][A-Za-z0-9]*$",
        description="Prefix of Weaviate class names the gateway manages.",
    )
    timeout_s: float = Field(10.0, gt=0, le=600, description="Timeout for inserts and schema calls, seconds.")


class Collection(_Strict):
    tenants: list[str] = Field(
        ..., min_length=1, description="Tenants that may ingest into and retrieve from this collection (ACL)."
    )
    embedding_model: str | None = Field(
        None, description="Embeddings model alias for this collection. Default: `rag.embedding_model`."
    )


class RagSettings(_Strict):
    backend: Literal["embedded", "weaviate"] = Field(
        "embedded", description="Vector store: the embedded file-backed index, or Weaviate."
    )
    embedder: Literal["gateway", "minilm"] = Field(
        "gateway",
        description=(
            "`gateway`: embeddings go through the gateway's own routing to `embedding_model`. "
            "`minilm`: all-MiniLM-L6-v2 (384 dims) runs in-process on CPU, offline; needs the "
            "`minilm` extra, and `embedding_model` / `embedding_jurisdictions` are then unused."
        ),
    )
    embedding_model: str = Field(
        "mistral-embed",
        description="Public embeddings model alias (in `models:`) used for chunks and queries.",
    )
    embedding_jurisdictions: list[str] = Field(
        ["EU"],
        min_length=1,
        description="Jurisdictions the embeddings deployment may be in (ingestion and queries).",
    )
    embedded: EmbeddedStore = Field(default_factory=EmbeddedStore, description="Embedded index settings.")
    weaviate: WeaviateStore | None = Field(
        None, description="Weaviate connection; required for backend weaviate."
    )
    collections: dict[str, Collection] = Field(
        default_factory=dict,
        description="Collections by name, with the tenants allowed to use each. Unlisted collections are refused.",
    )

    @model_validator(mode="after")
    def _weaviate_needs_settings(self) -> RagSettings:
        if self.backend == "weaviate" and self.weaviate is None:
            raise ValueError("backend 'weaviate' needs a `rag.weaviate` section")
        for name in self.collections:
            if not COLLECTION_NAME.fullmatch(name):
                raise ValueError(f"collection name {name!r} must match {COLLECTION_NAME.pattern}")
        return self

    def store_jurisdiction(self) -> str:
        if self.backend == "weaviate":
            assert self.weaviate is not None
            return self.weaviate.jurisdiction
        return self.embedded.jurisdiction
