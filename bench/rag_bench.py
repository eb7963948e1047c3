"""RAG benchmarks: retrieval + injection latency and ingestion throughput.

    .venv/bin/python bench/rag_bench.py                  # everything, 3 rounds
    .venv/bin/python bench/rag_bench.py --sizes 10000 --rounds 1
    .venv/bin/python bench/rag_bench.py --float32-only   # without the int8 pre-scan, for comparison

Retrieval + injection is ``RagContext.on_request`` end to end (search, hit fetch, dedupe,
token counting, template, message rewrite) with a precomputed query vector, so the figure is
the gateway's own cost; the embeddings call for the query is a separate upstream hop. The
Weaviate figure goes through the real weaviate-client and gRPC to tests/weaviate_fake.py,
whose pure-Python scoring dominates: it is a client/protocol overhead figure, not Weaviate's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.auth import Principal
from gateway.config import Config
from gateway.config.rag import RagSettings
from gateway.policies.rag_context import RagContext
from gateway.policy import Context
from gateway.rag.base import Chunk, VectorStore, chunk_id, content_hash
from gateway.rag.embedded import EmbeddedIndex
from gateway.rag.runtime import Rag
from gateway.services import Services

DIM = 384
WORDS = [
    "holiday",
    "leave",
    "expense",
    "travel",
    "policy",
    "contract",
    "salary",
    "office",
    "security",
    "laptop",
    "password",
    "badge",
    "parking",
    "canteen",
    "training",
    "onboarding",
    "pension",
    "insurance",
    "overtime",
    "remote",
]


class FixedEmbedder:
    name = "fixed"

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    async def __call__(self, texts: list[str], allowed: frozenset[str] | None) -> np.ndarray:  # noqa: ARG002 (the Embedder protocol)
        return np.tile(self.vector, (len(texts), 1))


def corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, 60)) + f" #{i}" for i in range(n)]
    return texts, rng.standard_normal((n, DIM), dtype=np.float32)


async def fill(store: VectorStore, n: int, batch: int = 1000) -> float:
    texts, vectors = corpus(n)
    started = time.perf_counter()
    for start in range(0, n, batch):
        chunks = [
            Chunk(
                chunk_id("bench", "acme", f"doc{i // 10}.md", content_hash(texts[i])),
                "acme",
                f"doc{i // 10}.md",
                texts[i],
                content_hash(texts[i]),
                time.time(),
                vectors[i],
            )
            for i in range(start, min(n, start + batch))
        ]
        await store.upsert("bench", chunks)
    return n / (time.perf_counter() - started)


def policy(store: VectorStore, mode: str = "vector") -> RagContext:
    settings = RagSettings.model_validate({"collections": {"bench": {"tenants": ["acme"]}}})
    query = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    services = Services(config=Config.model_validate({"deployments": {}, "models": {}}))
    services.extras["rag"] = Rag(settings, store, embedders={"mistral-embed": FixedEmbedder(query)})
    cfg = RagContext.Config.model_validate(
        {"collection": "bench", "top_k": 4, "search": mode, "timeout_ms": 60000}
    )
    return RagContext(cfg, services=services)


async def latency(p: RagContext, runs: int) -> tuple[float, float]:
    principal = Principal(
        key_id="k", tenant="acme", app="a", models=frozenset({"*"}), scopes=frozenset({"chat"})
    )
    request = {"model": "m", "messages": [{"role": "user", "content": "how much holiday leave do I get"}]}
    times = []
    for i in range(runs + 20):
        ctx = Context(principal=principal, endpoint="chat", model="m", candidates=[])
        t = time.perf_counter()
        out = await p.on_request(ctx, request)
        if i >= 20:  # warm-up excluded
            times.append(time.perf_counter() - t)
        assert len(out["messages"]) == 2, ctx.decisions
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.95)] * 1000


async def embedded(n: int, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedIndex(tmp)
        rate = await fill(store, n)
        await store.close()
        t = time.perf_counter()
        fresh = EmbeddedIndex(tmp)
        await fresh.count("bench", "acme")
        p = policy(fresh)
        await p.on_request(
            Context(
                principal=Principal(
                    key_id="k", tenant="acme", app="a", models=frozenset(), scopes=frozenset()
                ),
                endpoint="chat",
                model="m",
                candidates=[],
            ),
            {"messages": [{"role": "user", "content": "x"}]},
        )
        load_s = time.perf_counter() - t
        p50, p95 = await latency(p, runs)
        h50, h95 = await latency(policy(fresh, "hybrid"), max(runs // 4, 20))
        await fresh.close()
    return {
        "writes_per_s": rate,
        "load_s": load_s,
        "p50": p50,
        "p95": p95,
        "hybrid_p50": h50,
        "hybrid_p95": h95,
    }


async def weaviate(n: int, runs: int) -> dict[str, float]:
    from gateway.config.rag import WeaviateStore as Settings
    from gateway.rag.weaviate_store import WeaviateStore
    from tests.weaviate_fake import FakeWeaviate

    fake = FakeWeaviate().start()
    try:
        store = WeaviateStore(Settings(url=fake.url, grpc_port=fake.grpc_port, jurisdiction="EU", region="x"))
        rate = await fill(store, n, batch=200)
        p50, p95 = await latency(policy(store), runs)
        await store.close()
    finally:
        fake.stop()
    return {"writes_per_s": rate, "p50": p50, "p95": p95}


async def ingestion(files: int) -> dict[str, float]:
    """`gateway rag ingest`'s path: chunking (tiktoken), embeddings over HTTP to the loopback
    dev upstream (384-dim vectors) through Gateway.embed, writes to the embedded index."""
    from gateway.app import Gateway
    from gateway.dev import DevUpstream
    from gateway.rag.ingest import ingest

    upstream = DevUpstream(embedding_dim=DIM, record=False).start()
    texts, _ = corpus(files * 30, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for f in range(files):
            (docs / f"doc{f}.md").write_text("\n\n".join(texts[f * 30 : (f + 1) * 30]))
        config = Config.model_validate(
            {
                "deployments": {
                    "emb": {
                        "kind": "openai_compatible",
                        "base_url": upstream.url,
                        "model": "e",
                        "jurisdiction": "EU",
                        "region": "x",
                    }
                },
                "models": {"mistral-embed": {"type": "embeddings", "deployments": ["emb"]}},
                "storage": {"database_url": f"sqlite:///{tmp}/gw.db"},
            }
        )
        gateway = Gateway(config)
        for u in gateway.upstreams.values():
            await u.start()
        rag = Rag(config.rag, EmbeddedIndex(Path(tmp) / "index"), gateway.embed)
        report = await ingest(rag.store, rag.embedder("bench"), "bench", "acme", docs)
        again = await ingest(rag.store, rag.embedder("bench"), "bench", "acme", docs)
        for u in gateway.upstreams.values():
            await u.close()
    upstream.stop()
    return {"chunks": report.chunks, "chunks_per_s": report.chunks_per_s, "rerun_s": again.seconds}


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--weaviate-size", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument(
        "--float32-only", action="store_true", help="embedded: full float32 scan, no int8 pre-scan"
    )
    args = parser.parse_args()
    if args.float32_only:
        import gateway.rag.embedded

        gateway.rag.embedded._INT8_FLOATS = sys.maxsize
    for n in map(int, args.sizes.split(",")):
        res = median_of([await embedded(n, args.runs) for _ in range(args.rounds)])
        print(
            f"embedded {n:>7} x {DIM}: retrieval+injection p50 {res['p50']:.2f} ms p95 {res['p95']:.2f} ms | "
            f"hybrid p50 {res['hybrid_p50']:.2f} ms p95 {res['hybrid_p95']:.2f} ms | "
            f"cold load+first query {res['load_s'] * 1000:.0f} ms | writes {res['writes_per_s']:.0f} chunks/s"
        )
    res = median_of([await weaviate(args.weaviate_size, args.runs // 3) for _ in range(args.rounds)])
    print(
        f"weaviate (fake) {args.weaviate_size} x {DIM}: retrieval+injection p50 {res['p50']:.2f} ms "
        f"p95 {res['p95']:.2f} ms | writes {res['writes_per_s']:.0f} chunks/s"
    )
    ing: list[dict[str, Any]] = [await ingestion(args.files) for _ in range(args.rounds)]
    med = median_of(ing)
    print(
        f"ingestion {int(med['chunks'])} chunks: {med['chunks_per_s']:.0f} chunks/s end to end; "
        f"idempotent re-run {med['rerun_s']:.2f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
