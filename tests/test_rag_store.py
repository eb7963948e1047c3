"""One contract for every vector store: the embedded index, Weaviate through the real client
against the loopback fake, and a real Weaviate when WEAVIATE_URL is set."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from gateway.rag.base import Chunk, Hit, Query, StoreError, VectorStore, content_hash
from gateway.rag.embedded import EmbeddedIndex
from gateway.rag.weaviate_store import WeaviateStore
from tests.rag_support import (  # noqa: F401  (fixtures)
    EMBED,
    fake_weaviate_fixture,
    make_chunks,
    store_fixture,
    weaviate_settings,
)
from tests.weaviate_fake import FakeWeaviate

DOCS = [
    "Employees get thirty days of paid holiday per year.",
    "Expense reports are due on the fifth of each month.",
    "The office car park opens at seven in the morning.",
]


def q(tenant: str, text: str, **kw: object) -> Query:
    return Query(tenant=tenant, text=text, vector=EMBED.vector(text), **kw)  # type: ignore[arg-type]


async def test_vector_search_returns_the_nearest_chunk_first(store: VectorStore) -> None:
    await store.upsert("handbook", make_chunks("acme", DOCS))
    hits = await store.search("handbook", q("acme", "how many days of paid holiday", top_k=2))
    assert len(hits) == 2
    assert hits[0].text == DOCS[0]
    assert hits[0].source == "doc.md"
    assert hits[0].score >= hits[1].score
    assert hits[0].distance is not None
    assert abs(hits[0].score - (1 - hits[0].distance)) < 1e-4


async def test_a_tenant_never_sees_another_tenants_chunks(store: VectorStore) -> None:
    await store.upsert("handbook", make_chunks("acme", DOCS))
    await store.upsert("handbook", make_chunks("globex", ["Globex secret: holiday is 45 days."]))
    for mode in ("vector", "bm25", "hybrid"):
        acme = await store.search("handbook", q("acme", "secret holiday days", top_k=10, mode=mode))
        globex = await store.search("handbook", q("globex", "secret holiday days", top_k=10, mode=mode))
        assert acme
        assert all("Globex" not in h.text for h in acme)
        assert [h.text for h in globex] == ["Globex secret: holiday is 45 days."]
        assert await store.search("handbook", q("initech", "holiday", mode=mode)) == []
    assert await store.count("handbook", "acme") == 3
    assert await store.count("handbook", "globex") == 1


async def test_metadata_filters_narrow_the_results(store: VectorStore) -> None:
    await store.upsert("handbook", make_chunks("acme", DOCS[:1], source="de.md", metadata={"lang": "de"}))
    await store.upsert("handbook", make_chunks("acme", DOCS[1:], source="en.md", metadata={"lang": "en"}))
    only_de = await store.search("handbook", q("acme", "expense reports", filters={"lang": "de"}))
    assert [h.source for h in only_de] == ["de.md"]
    either = await store.search(
        "handbook", q("acme", "expense reports", top_k=10, filters={"lang": ["de", "en"]})
    )
    assert len(either) == 3
    assert await store.search("handbook", q("acme", "expense", filters={"lang": "fr"})) == []
    by_source = await store.search("handbook", q("acme", "expense", top_k=10, filters={"source": "en.md"}))
    assert {h.source for h in by_source} == {"en.md"}


async def test_max_distance_drops_chunks_that_are_too_far(store: VectorStore) -> None:
    await store.upsert("handbook", make_chunks("acme", DOCS))
    hits = await store.search("handbook", q("acme", DOCS[2], top_k=3, max_distance=0.05))
    assert [h.text for h in hits] == [DOCS[2]]


async def test_bm25_and_hybrid_find_keyword_matches(store: VectorStore) -> None:
    await store.upsert("handbook", make_chunks("acme", DOCS))
    bm25 = await store.search("handbook", q("acme", "car park", mode="bm25"))
    assert bm25[0].text == DOCS[2]
    assert len(bm25) == 1
    hybrid = await store.search("handbook", q("acme", "expense reports", mode="hybrid", top_k=2))
    assert hybrid[0].text == DOCS[1]


async def test_upserting_the_same_chunk_twice_keeps_one_copy(store: VectorStore) -> None:
    chunks = make_chunks("acme", DOCS)
    assert await store.upsert("handbook", chunks) == 3
    await store.upsert("handbook", chunks)
    assert await store.count("handbook", "acme") == 3
    assert await store.existing_ids("handbook", "acme", [c.id for c in chunks[:2]]) == {
        chunks[0].id,
        chunks[1].id,
    }
    assert await store.existing_ids("handbook", "globex", [c.id for c in chunks]) == set()


async def test_delete_by_subject_removes_that_subjects_chunks_in_every_collection(store: VectorStore) -> None:
    await store.upsert("handbook", make_chunks("acme", DOCS[:1], subject="p-1"))
    await store.upsert("handbook", make_chunks("acme", DOCS[1:], source="other.md", subject="p-2"))
    await store.upsert(
        "contracts", make_chunks("acme", ["Contract of p-1."], collection="contracts", subject="p-1")
    )
    await store.upsert(
        "handbook", make_chunks("globex", ["Globex file on p-1."], source="g.md", subject="p-1")
    )
    assert await store.subject_sources("acme", "p-1") == [
        ("contracts", "doc.md", 1),
        ("handbook", "doc.md", 1),
    ]
    assert await store.delete_by_subject("acme", "p-1") == 2
    assert await store.subject_sources("acme", "p-1") == []
    assert await store.subject_sources("globex", "p-1") == [("handbook", "g.md", 1)]  # another tenant's: kept
    assert await store.count("handbook", "acme") == 2
    assert await store.count("contracts", "acme") == 0
    hits = await store.search("handbook", q("acme", DOCS[0], top_k=10))
    assert DOCS[0] not in [h.text for h in hits]


async def test_delete_by_source_keeps_the_listed_chunks(store: VectorStore) -> None:
    chunks = make_chunks("acme", DOCS)
    await store.upsert("handbook", chunks)
    await store.upsert("handbook", make_chunks("globex", DOCS))
    assert await store.delete_by_source("handbook", "acme", "doc.md", keep=[chunks[0].id]) == 2
    assert await store.count("handbook", "acme") == 1
    assert await store.count("handbook", "globex") == 3
    assert await store.delete_by_source("handbook", "acme", "doc.md") == 1


async def test_a_missing_collection_is_empty_not_an_error(store: VectorStore) -> None:
    assert await store.search("nothing_here", q("acme", "x")) == []
    assert await store.count("nothing_here", "acme") == 0


async def test_embedded_index_is_durable_and_sees_writes_from_another_process(tmp_path: Path) -> None:
    first = EmbeddedIndex(tmp_path)
    await first.upsert("handbook", make_chunks("acme", DOCS[:1]))
    assert len(await first.search("handbook", q("acme", "holiday"))) == 1
    other = EmbeddedIndex(tmp_path)  # another connection, as `gateway rag ingest` would have
    await other.upsert("handbook", make_chunks("acme", DOCS[1:]))
    assert len(await first.search("handbook", q("acme", "holiday", top_k=10))) == 3
    await first.close()
    reopened = EmbeddedIndex(tmp_path)
    assert await reopened.count("handbook", "acme") == 3


async def test_embedded_index_writes_a_batch_all_or_nothing(tmp_path: Path) -> None:
    index = EmbeddedIndex(tmp_path)
    good = make_chunks("acme", DOCS)
    broken = [
        good[0],
        good[1].__class__(**{**{s: getattr(good[1], s) for s in good[1].__slots__}, "source": None}),
    ]
    with pytest.raises(StoreError):
        await index.upsert("handbook", broken)  # the second row violates NOT NULL
    assert await index.count("handbook", "acme") == 0
    rows = sqlite3.connect(tmp_path / "index.sqlite3").execute("SELECT COUNT(*) FROM chunks").fetchone()
    assert rows[0] == 0


async def test_embedded_index_rejects_a_query_of_the_wrong_dimension(tmp_path: Path) -> None:
    index = EmbeddedIndex(tmp_path)
    await index.upsert("handbook", make_chunks("acme", DOCS))
    bad = Query(tenant="acme", vector=EMBED.vector("x")[:8])
    with pytest.raises(StoreError):
        await index.search("handbook", bad)


async def test_weaviate_store_sends_the_api_key_and_fails_cleanly_without_it(
    fake_weaviate: FakeWeaviate,
) -> None:
    fake_weaviate.reset()
    fake_weaviate.api_key = "wv-key"
    try:
        good = WeaviateStore(weaviate_settings(fake_weaviate))
        await good.upsert("handbook", make_chunks("acme", DOCS))
        assert await good.count("handbook", "acme") == 3
        await good.close()
        bad = WeaviateStore(weaviate_settings(fake_weaviate, api_key="wrong"))
        with pytest.raises(StoreError):
            await bad.count("handbook", "acme")
    finally:
        fake_weaviate.api_key = ""


async def test_every_weaviate_query_carries_the_tenant_filter(fake_weaviate: FakeWeaviate) -> None:
    fake_weaviate.reset()
    backend = WeaviateStore(weaviate_settings(fake_weaviate))
    await backend.upsert("handbook", make_chunks("acme", DOCS))
    for mode in ("vector", "bm25", "hybrid"):
        await backend.search("handbook", q("acme", "holiday", mode=mode, filters={"lang": "en"}))
    assert len(fake_weaviate.searches) == 3
    for request in fake_weaviate.searches:
        text = str(request.filters)
        assert 'property: "tenant"' in text
        assert 'value_text: "acme"' in text
    await backend.close()


async def test_weaviate_server_side_vectorizer_is_queried_with_text(fake_weaviate: FakeWeaviate) -> None:
    fake_weaviate.reset()
    fake_weaviate.vectorizer = EMBED.vector
    try:
        writer = WeaviateStore(weaviate_settings(fake_weaviate))
        await writer.upsert("handbook", make_chunks("acme", DOCS))
        backend = WeaviateStore(weaviate_settings(fake_weaviate, vectorizer="server"))
        hits = await backend.search("handbook", Query(tenant="acme", text="paid holiday days"))
        assert hits[0].text == DOCS[0]
        assert fake_weaviate.searches[-1].HasField("near_text")
        await writer.close()
        await backend.close()
    finally:
        fake_weaviate.vectorizer = None


# --- the embedded index's int8 pre-scan (gateway/rag/int8scan.py) must stay exact -------------


def _random_vectors(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((n, dim), dtype=np.float32)
    if kind == "clustered":  # near-duplicates: many rows within the quantisation error of each other
        centres = rng.standard_normal((8, dim), dtype=np.float32)
        return centres[rng.integers(0, 8, n)] + 0.02 * rng.standard_normal((n, dim), dtype=np.float32)
    # a few outlier dimensions dominate every row, as in real sentence embeddings
    out = rng.standard_normal((n, dim), dtype=np.float32)
    out[:, :3] *= 25
    return out + 0.3


def _chunk(i: int, vectors: np.ndarray, groups: np.ndarray) -> Chunk:
    text = f"text {i}"
    return Chunk(
        f"c{i}",
        "acme",
        f"s{i % 3}.md",
        text,
        content_hash(text),
        0.0,
        vectors[i],
        metadata={"g": int(groups[i])},
    )


def _brute_force(vectors: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int) -> dict[str, float]:
    """Plain numpy float32: every row's score, in descending order of the top k (ties by row)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (unit.astype(np.float32) @ (query / np.linalg.norm(query)).astype(np.float32))[rows]
    order = np.argsort(-scores, kind="stable")
    return {f"c{rows[i]}": float(scores[i]) for i in order[:k]} | {
        f"c{rows[i]}": float(scores[i]) for i in order[k:]
    }


def _assert_same_top(hits: list[Hit], truth: dict[str, float], k: int, context: object) -> None:
    """Same ids as the brute force's top k, same scores; rows whose float32 scores tie exactly
    may come in either order (as with argpartition in plain numpy)."""
    want = list(truth.items())[:k]
    assert len(hits) == len(want), context
    for hit, (cid, score) in zip(hits, want, strict=True):
        assert cid == hit.id or truth.get(hit.id) == score, (context, hit.id, cid, score)
        assert abs(hit.score - score) <= 1e-6, context
    assert len({h.id for h in hits}) == len(hits)


@pytest.mark.parametrize("kind", ["gaussian", "clustered", "outliers"])
async def test_embedded_int8_prescan_matches_float32_brute_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from gateway.rag import embedded, int8scan

    if not int8scan.available():
        pytest.skip("simsimd is not installed")
    monkeypatch.setattr(embedded, "_INT8_FLOATS", 0)  # take the int8 path at test sizes
    used: list[int] = []
    real = int8scan.top_rows

    def spy(*args: object, **kw: object) -> object:
        found = real(*args, **kw)  # type: ignore[arg-type]
        used.append(0 if found is None else len(found[0]))
        return found

    monkeypatch.setattr(int8scan, "top_rows", spy)
    rng = np.random.default_rng(7)
    n, dim = 3000, 96
    vectors = _random_vectors(kind, n, dim, rng)
    groups = rng.integers(0, 4, n)
    chunks = [_chunk(i, vectors, groups) for i in range(n)]
    index = EmbeddedIndex(tmp_path)
    await index.upsert("rand", chunks)
    every = np.arange(n)

    async def check(vectors: np.ndarray, live: np.ndarray, label: str) -> None:
        for trial in range(12):
            # half the queries sit right next to a stored row: the hardest case for the bound
            query = (
                vectors[live[trial]] + 0.01 * rng.standard_normal(dim, dtype=np.float32)
                if trial % 2
                else rng.standard_normal(dim, dtype=np.float32) + (0.3 if kind == "outliers" else 0.0)
            )
            for top_k in (1, 4, 25):
                for filters, rows in (({}, live), ({"g": [1, 2]}, live[np.isin(groups[live], [1, 2])])):
                    truth = _brute_force(vectors, query, rows, top_k)
                    want = list(truth.values())[:top_k]
                    hits = await index.search(
                        "rand", Query(tenant="acme", vector=query, top_k=top_k, filters=filters)
                    )
                    _assert_same_top(hits, truth, top_k, (label, trial, top_k, filters))
                    # max_distance keeps exactly the brute-force hits within that distance
                    cut = 1 - want[len(want) // 2] + 1e-4
                    near = await index.search(
                        "rand",
                        Query(tenant="acme", vector=query, top_k=top_k, filters=filters, max_distance=cut),
                    )
                    within = {cid: sc for cid, sc in truth.items() if 1 - sc <= cut}
                    _assert_same_top(near, within, min(top_k, len(within)), (label, trial, "max_distance"))

    await check(vectors, every, "fresh")
    # upserts (new and changed rows) and deletes keep the int8 codes in step with the matrix
    changed = rng.choice(n, 200, replace=False)
    vectors[changed] = _random_vectors(kind, 200, dim, rng)
    extra = _random_vectors(kind, 500, dim, rng)
    vectors = np.concatenate([vectors, extra])
    groups = np.concatenate([groups, rng.integers(0, 4, 500)])
    await index.upsert(
        "rand",
        [_chunk(i, vectors, groups) for i in [*changed.tolist(), *range(n, n + 500)]],
    )
    await check(vectors, np.arange(n + 500), "after upsert")
    assert await index.delete_by_source("rand", "acme", "s0.md") == len(range(0, n + 500, 3))
    await check(vectors, np.array([i for i in range(n + 500) if i % 3]), "after delete")
    # Clustered rows with a query far from every cluster: the bound keeps > n/4 rows and the
    # search falls back to the float32 scan (None); everywhere else the pre-scan answered.
    assert used, used
    assert any(used) if kind == "clustered" else all(used), used
    await index.close()


async def test_embedded_hybrid_search_is_the_same_with_and_without_the_int8_prescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.rag import embedded, int8scan

    if not int8scan.available():
        pytest.skip("simsimd is not installed")
    rng = np.random.default_rng(11)
    n, dim = 2000, 64
    vectors = _random_vectors("gaussian", n, dim, rng)
    groups = rng.integers(0, 4, n)
    index = EmbeddedIndex(tmp_path)
    await index.upsert("rand", [_chunk(i, vectors, groups) for i in range(n)])
    for trial in range(10):
        query = rng.standard_normal(dim, dtype=np.float32)
        words = " ".join(f"{w}" for w in rng.integers(0, n, 3))  # bm25 matches "text <i>" rows
        for filters in ({}, {"g": [0, 3]}):
            for max_distance in (None, 0.9):
                found = {}
                for limit in (0, 10**12):  # int8 pre-scan, then the plain float32 scan
                    monkeypatch.setattr(embedded, "_INT8_FLOATS", limit)
                    hits = await index.search(
                        "rand",
                        Query(
                            tenant="acme",
                            text=f"text {words}",
                            vector=query,
                            top_k=5,
                            mode="hybrid",
                            filters=filters,
                            max_distance=max_distance,
                        ),
                    )
                    found[limit] = hits
                fast, plain = found[0], found[10**12]
                assert fast, (trial, filters, max_distance)
                assert [h.id for h in fast] == [h.id for h in plain], (trial, filters, max_distance)
                assert np.allclose([h.score for h in fast], [h.score for h in plain], atol=1e-5)
                assert [h.distance is None for h in fast] == [h.distance is None for h in plain]
                assert np.allclose(
                    [h.distance or 0 for h in fast], [h.distance or 0 for h in plain], atol=1e-5
                )
    assert index._partitions("rand")["acme"].int8 is not None
    await index.close()
