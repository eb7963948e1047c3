"""A loopback stand-in for Weaviate that the real ``weaviate-client`` talks to unchanged.

It speaks the parts of Weaviate's protocol the gateway uses:
REST ``/v1/meta``, ``/v1/.well-known/{ready,live,openid-configuration}``, ``/v1/schema``
(list, get, create, delete); gRPC ``Search`` (near_vector, near_text, bm25, hybrid, filters),
``BatchObjects``, ``BatchDelete``, ``Aggregate`` (total count) and the gRPC health check.
The servicer base classes are the ones generated inside the client package.

Tests steer it through ``fail`` (answer UNAVAILABLE), ``delay_s`` and ``api_key``, and read
``searches`` (every SearchRequest received) to check what the gateway sent.
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

VERSION = "1.32.0"
Op = base_pb2.Filters.Operator


@dataclass
class _Object:
    uuid: str
    props: dict[str, Any]
    vector: np.ndarray | None


@dataclass
class FakeWeaviate:
    """Start with ``start()``; ``url`` and ``grpc_port`` are then set."""

    api_key: str = ""
    vectorizer: Callable[[str], np.ndarray] | None = None  # simulates a server-side vectorizer
    fail: bool = False
    delay_s: float = 0.0
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[str, dict[str, _Object]] = field(default_factory=dict)
    searches: list[search_get_pb2.SearchRequest] = field(default_factory=list)
    http_port: int = 0
    grpc_port: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    _grpc: Any = None
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> FakeWeaviate:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), server)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "grpc.health.v1.Health",
                    {
                        "Check": grpc.unary_unary_rpc_method_handler(
                            self._health,
                            request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
                            response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._serve_rest())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-weaviate", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._grpc.stop(0)
        if self._loop is not None and self._runner is not None:
            loop, runner = self._loop, self._runner

            async def close() -> None:
                await runner.cleanup()
                loop.stop()

            asyncio.run_coroutine_threadsafe(close(), loop)
            if self._thread is not None:
                self._thread.join(5)

    def reset(self) -> None:
        with self.lock:
            self.classes.clear()
            self.objects.clear()
            self.searches.clear()
            self.fail, self.delay_s = False, 0.0

    # --- REST ------------------------------------------------------------------------------

    async def _serve_rest(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/meta", self._meta)
        for probe in ("ready", "live"):
            app.router.add_get(f"/v1/.well-known/{probe}", self._probe)
        app.router.add_get("/v1/.well-known/openid-configuration", self._no_oidc)
        app.router.add_get("/v1/schema", self._schema)
        app.router.add_post("/v1/schema", self._create)
        app.router.add_get("/v1/schema/{name}", self._get_class)
        app.router.add_delete("/v1/schema/{name}", self._delete_class)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": [{"message": "unauthorized"}]}, status=401)
        return await handler(request)

    async def _meta(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"version": VERSION, "hostname": "http://fake", "modules": {}, "grpcMaxMessageSize": 104858000}
        )

    async def _no_oidc(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def _schema(self, request: web.Request) -> web.Response:
        with self.lock:
            return web.json_response({"classes": list(self.classes.values())})

    async def _probe(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.fail else 200)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["class"][0].upper() + body["class"][1:]
        body["class"] = name
        _server_defaults(body)
        with self.lock:
            if name in self.classes:
                return web.json_response({"error": [{"message": f"class {name} already exists"}]}, status=422)
            self.classes[name] = body
            self.objects.setdefault(name, {})
        return web.json_response(body)

    async def _get_class(self, request: web.Request) -> web.Response:
        cls = self.classes.get(request.match_info["name"])
        return web.json_response(cls) if cls else web.Response(status=404)

    async def _delete_class(self, request: web.Request) -> web.Response:
        with self.lock:
            self.classes.pop(request.match_info["name"], None)
            self.objects.pop(request.match_info["name"], None)
        return web.Response(status=200)

    # --- gRPC ------------------------------------------------------------------------------

    def _health(self, request: Any, context: Any) -> health_weaviate_pb2.WeaviateHealthCheckResponse:
        status = health_weaviate_pb2.WeaviateHealthCheckResponse
        return status(status=status.NOT_SERVING if self.fail else status.SERVING)

    def check(self, context: grpc.ServicerContext) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake weaviate is failing")
        if (
            self.api_key
            and dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.api_key}"
        ):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad api key")

    def collection(self, name: str, context: grpc.ServicerContext) -> dict[str, _Object]:
        if name not in self.classes:
            context.abort(grpc.StatusCode.NOT_FOUND, f"class {name} not found")
        return self.objects[name]


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, fake: FakeWeaviate) -> None:
        self.fake = fake

    def BatchObjects(
        self, request: batch_pb2.BatchObjectsRequest, context: Any
    ) -> batch_pb2.BatchObjectsReply:
        self.fake.check(context)
        errors = []
        with self.fake.lock:
            for i, obj in enumerate(request.objects):
                if obj.collection not in self.fake.classes:
                    errors.append(batch_pb2.BatchObjectsReply.BatchError(index=i, error="class not found"))
                    continue
                props = {k: _from_struct(v) for k, v in obj.properties.non_ref_properties.fields.items()}
                vector = _vector_of(obj)
                if vector is None and self.fake.vectorizer is not None:
                    vector = self.fake.vectorizer(str(props.get("text", "")))
                self.fake.objects[obj.collection][obj.uuid] = _Object(obj.uuid, props, vector)
        return batch_pb2.BatchObjectsReply(took=0.001, errors=errors)

    def BatchDelete(
        self, request: batch_delete_pb2.BatchDeleteRequest, context: Any
    ) -> batch_delete_pb2.BatchDeleteReply:
        self.fake.check(context)
        with self.fake.lock:
            objs = self.fake.collection(request.collection, context)
            doomed = [o.uuid for o in objs.values() if _match(request.filters, o)]
            if not request.dry_run:
                for u in doomed:
                    del objs[u]
        return batch_delete_pb2.BatchDeleteReply(
            took=0.001, matches=len(doomed), successful=len(doomed), failed=0
        )

    def Aggregate(
        self, request: aggregate_pb2.AggregateRequest, context: Any
    ) -> aggregate_pb2.AggregateReply:
        self.fake.check(context)
        with self.fake.lock:
            objs = self.fake.collection(request.collection, context)
            has = request.HasField("filters")
            n = sum(1 for o in objs.values() if not has or _match(request.filters, o))
        return aggregate_pb2.AggregateReply(
            took=0.001, single_result=aggregate_pb2.AggregateReply.Single(objects_count=n)
        )

    def Search(self, request: search_get_pb2.SearchRequest, context: Any) -> search_get_pb2.SearchReply:
        self.fake.check(context)
        with self.fake.lock:
            self.fake.searches.append(request)
            objs = self.fake.collection(request.collection, context)
            has = request.HasField("filters")
            pool = [o for o in objs.values() if not has or _match(request.filters, o)]
            limit = request.limit or 10
            scored = self._score(request, pool)
        results = []
        for obj, score, distance in scored[:limit]:
            results.append(
                search_get_pb2.SearchResult(
                    properties=_properties_result(request, obj),
                    metadata=search_get_pb2.MetadataResult(
                        id=obj.uuid,
                        id_as_bytes=uuid.UUID(obj.uuid).bytes,
                        distance=distance or 0.0,
                        distance_present=distance is not None,
                        score=score or 0.0,
                        score_present=score is not None,
                    ),
                )
            )
        return search_get_pb2.SearchReply(took=0.001, results=results)

    def _query_vector(self, text: str, *messages: Any) -> np.ndarray | None:
        for msg in messages:
            vec = _vector_of(msg)
            if vec is not None:
                return vec
        return self.fake.vectorizer(text) if self.fake.vectorizer and text else None

    def _score(self, r: search_get_pb2.SearchRequest, pool: list[_Object]) -> list[tuple[_Object, Any, Any]]:
        if r.HasField("near_vector") or r.HasField("near_text"):
            nt = r.near_text
            vec = (
                self._query_vector(" ".join(nt.query), r.near_vector)
                if r.HasField("near_text")
                else _vector_of(r.near_vector)
            )
            limit = (r.near_vector if r.HasField("near_vector") else nt).distance
            has_limit = (r.near_vector if r.HasField("near_vector") else nt).HasField("distance")
            ranked = _by_distance(vec, pool)
            return [(o, None, d) for o, d in ranked if not has_limit or d <= limit + 1e-6]
        if r.HasField("bm25_search"):
            bm25 = _bm25(r.bm25_search.query, pool)
            return sorted(
                ((o, s, None) for o, s in zip(pool, bm25, strict=True) if s > 0), key=lambda t: -t[1]
            )
        if r.HasField("hybrid_search"):
            h = r.hybrid_search
            vec = self._query_vector(h.query, h, h.near_vector)
            dist = dict((o.uuid, d) for o, d in _by_distance(vec, pool)) if vec is not None else {}
            if h.HasField("vector_distance"):
                dist = {u: d for u, d in dist.items() if d <= h.vector_distance + 1e-6}
            bm = {o.uuid: s for o, s in zip(pool, _bm25(h.query, pool), strict=True) if s > 0}
            fused: dict[str, float] = {}
            scores: dict[str, float]
            for scores, weight in (({u: -d for u, d in dist.items()}, h.alpha), (bm, 1 - h.alpha)):
                if scores:
                    lo, hi = min(scores.values()), max(scores.values())
                    for u, s in scores.items():
                        fused[u] = fused.get(u, 0.0) + weight * ((s - lo) / (hi - lo) if hi > lo else 1.0)
            by_id = {o.uuid: o for o in pool}
            return [(by_id[u], s, dist.get(u)) for u, s in sorted(fused.items(), key=lambda kv: -kv[1])]
        return [(o, None, None) for o in pool]  # fetch_objects


def _vector_of(msg: Any) -> np.ndarray | None:
    for name in ("vector_bytes",):
        raw = getattr(msg, name, b"")
        if raw:
            return np.frombuffer(raw, dtype=np.float32).copy()
    for vectors in (getattr(msg, "vectors", ()), getattr(msg, "vector_for_targets", ())):
        for v in vectors:
            if v.vector_bytes:
                return np.frombuffer(v.vector_bytes, dtype=np.float32).copy()
    values = list(getattr(msg, "vector", ()))
    return np.asarray(values, dtype=np.float32) if values else None


def _by_distance(vec: np.ndarray | None, pool: list[_Object]) -> list[tuple[_Object, float]]:
    if vec is None:
        return []
    q = vec / (np.linalg.norm(vec) or 1.0)
    out = []
    for o in pool:
        if o.vector is None:
            continue
        v = o.vector / (np.linalg.norm(o.vector) or 1.0)
        out.append((o, float(1.0 - float(v @ q))))
    return sorted(out, key=lambda t: t[1])


def _bm25(query: str, pool: list[_Object], k1: float = 1.2, b: float = 0.75) -> list[float]:
    docs = [Counter(re.findall(r"\w+", str(o.props.get("text", "")).lower())) for o in pool]
    if not docs:
        return []
    avg = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    out = []
    terms = set(re.findall(r"\w+", query.lower()))
    for d in docs:
        dl = sum(d.values())
        s = 0.0
        for t in terms:
            df = sum(1 for x in docs if t in x)
            if d.get(t):
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                s += idf * d[t] * (k1 + 1) / (d[t] + k1 * (1 - b + b * dl / avg))
        out.append(s)
    return out


def _filter_value(f: base_pb2.Filters) -> Any:
    kind = f.WhichOneof("test_value")
    if kind in ("value_text_array", "value_int_array", "value_number_array", "value_boolean_array"):
        return list(getattr(f, kind).values)
    return getattr(f, kind) if kind else None


def _match(f: base_pb2.Filters, obj: _Object) -> bool:
    op = f.operator
    if op == Op.OPERATOR_AND:
        return all(_match(c, obj) for c in f.filters)
    if op == Op.OPERATOR_OR:
        return any(_match(c, obj) for c in f.filters)
    if op == Op.OPERATOR_NOT:
        return not any(_match(c, obj) for c in f.filters)
    prop = f.target.property if f.HasField("target") else (f.on[0] if f.on else "")
    actual = obj.uuid if prop == "_id" else obj.props.get(prop)
    want = _filter_value(f)
    if op == Op.OPERATOR_EQUAL:
        return bool(actual == want)
    if op == Op.OPERATOR_NOT_EQUAL:
        return bool(actual != want)
    if op == Op.OPERATOR_CONTAINS_ANY:
        return actual in want
    if op == Op.OPERATOR_CONTAINS_NONE:
        return actual not in want
    if op == Op.OPERATOR_CONTAINS_ALL:
        return all(w == actual for w in want)
    if op == Op.OPERATOR_IS_NULL:
        return (actual is None) == bool(want)
    raise NotImplementedError(f"filter operator {op} is not supported by the fake")


def _from_struct(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        n = value.number_value
        return int(n) if float(n).is_integer() and abs(n) < 2**53 else n
    if kind == "list_value":
        return [_from_struct(v) for v in value.list_value.values]
    return getattr(value, kind) if kind and kind != "null_value" else None


def _to_value(value: Any) -> properties_pb2.Value:
    if isinstance(value, bool):
        return properties_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return properties_pb2.Value(int_value=value)
    if isinstance(value, float):
        return properties_pb2.Value(number_value=value)
    if value is None:
        return properties_pb2.Value(null_value=0)
    return properties_pb2.Value(text_value=str(value))


def _properties_result(r: search_get_pb2.SearchRequest, obj: _Object) -> search_get_pb2.PropertiesResult:
    wanted = (
        obj.props
        if r.properties.return_all_nonref_properties
        else {k: obj.props[k] for k in r.properties.non_ref_properties if k in obj.props}
    )
    return search_get_pb2.PropertiesResult(
        target_collection=r.collection,
        non_ref_props=properties_pb2.Properties(fields={k: _to_value(v) for k, v in wanted.items()}),
    )


_HNSW = {
    "skip": False,
    "cleanupIntervalSeconds": 300,
    "maxConnections": 32,
    "efConstruction": 128,
    "ef": -1,
    "dynamicEfMin": 100,
    "dynamicEfMax": 500,
    "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 10**12,
    "flatSearchCutoff": 40000,
    "distance": "cosine",
    "filterStrategy": "sweeping",
    "multivector": {"enabled": False, "aggregation": "maxSim"},
}


def _server_defaults(cls: dict[str, Any]) -> None:
    """Fill in what a real server adds to a created class, so the client can parse the schema."""
    cls.setdefault("vectorizer", "none")
    cls.setdefault(
        "invertedIndexConfig",
        {
            "bm25": {"b": 0.75, "k1": 1.2},
            "cleanupIntervalSeconds": 60,
            "stopwords": {"preset": "en", "additions": None, "removals": None},
        },
    )
    cls.setdefault("multiTenancyConfig", {"enabled": False})
    cls.setdefault("replicationConfig", {"factor": 1, "asyncEnabled": False})
    cls.setdefault(
        "shardingConfig",
        {
            "virtualPerPhysical": 128,
            "desiredCount": 1,
            "actualCount": 1,
            "desiredVirtualCount": 128,
            "actualVirtualCount": 128,
            "key": "_id",
            "strategy": "hash",
            "function": "murmur3",
        },
    )
    for vector in (cls.get("vectorConfig") or {}).values():
        vector.setdefault("vectorIndexType", "hnsw")
        vector["vectorIndexConfig"] = {**_HNSW, **(vector.get("vectorIndexConfig") or {})}
    for prop in cls.setdefault("properties", []):
        text = prop["dataType"][0] == "text"
        prop.setdefault("indexFilterable", True)
        prop.setdefault("indexSearchable", text)
        prop.setdefault("tokenization", "word" if text else None)


def pack(vector: list[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)
