"""Fixtures shared by the tests/test_rag_*.py files: stores over every backend, and chunk helpers."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.rag import WeaviateStore as WeaviateSettings
from gateway.rag.base import Chunk, VectorStore, chunk_id, content_hash
from gateway.rag.embedded import EmbeddedIndex
from gateway.rag.embedders import HashingEmbedder
from gateway.rag.weaviate_store import WeaviateStore
from tests.weaviate_fake import FakeWeaviate

EMBED = HashingEmbedder(64)
BACKENDS = ["embedded", "weaviate_fake"] + (["weaviate_real"] if os.environ.get("WEAVIATE_URL") else [])


@pytest.fixture(scope="session", name="fake_weaviate")
def fake_weaviate_fixture() -> Iterator[FakeWeaviate]:
    server = FakeWeaviate().start()
    yield server
    server.stop()


def weaviate_settings(fake: FakeWeaviate | None, **overrides: Any) -> WeaviateSettings:
    if fake is None:  # a real server, for the same tests (docs/rag.md)
        base: dict[str, Any] = {
            "url": os.environ["WEAVIATE_URL"],
            "grpc_port": int(os.environ.get("WEAVIATE_GRPC_PORT", "50051")),
            "api_key": os.environ.get("WEAVIATE_API_KEY", ""),
            "class_prefix": "Gwtest" + uuid.uuid4().hex[:8],
        }
    else:
        base = {"url": fake.url, "grpc_port": fake.grpc_port, "api_key": fake.api_key}
    return WeaviateSettings.model_validate({"jurisdiction": "EU", "region": "test", **base, **overrides})


@pytest.fixture(params=BACKENDS, name="store")
async def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    backend: VectorStore
    if request.param == "embedded":
        backend = EmbeddedIndex(tmp_path / "index")
    elif request.param == "weaviate_fake":
        fake = request.getfixturevalue("fake_weaviate")
        fake.reset()
        backend = WeaviateStore(weaviate_settings(fake))
    else:
        backend = WeaviateStore(weaviate_settings(None))
    yield backend
    if isinstance(backend, WeaviateStore) and request.param == "weaviate_real":
        client = await backend.client()
        for name in await client.collections.list_all(simple=True):
            if name.startswith(backend.settings.class_prefix):
                await client.collections.delete(name)
    await backend.close()


def make_chunks(
    tenant: str,
    texts: list[str],
    *,
    source: str = "doc.md",
    collection: str = "handbook",
    subject: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[Chunk]:
    vectors = [EMBED.vector(t) for t in texts]
    return [
        Chunk(
            chunk_id(collection, tenant, source, content_hash(t)),
            tenant,
            source,
            t,
            content_hash(t),
            time.time(),
            v,
            subject,
            metadata or {},
        )
        for t, v in zip(texts, vectors, strict=True)
    ]
