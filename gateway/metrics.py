"""Prometheus metrics. Labels are bounded: no subject, prompt or key ever becomes a label.

With several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``gateway serve`` does it for you) and
``/metrics`` aggregates every worker's samples.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

__all__ = ["CONTENT_TYPE", "render"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by tenant, app, public model, deployment, jurisdiction and HTTP status.",
    ["tenant", "app", "model", "deployment", "jurisdiction", "status"],
)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_latency_seconds",
    "Time spent waiting on upstreams per request (all attempts), by deployment.",
    ["deployment"],
    buckets=_LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Gateway time per request excluding upstream time.",
    buckets=_OVERHEAD_BUCKETS,
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Time from request arrival to the first streamed byte sent to the client, by public model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
DECISIONS = Counter(
    "gateway_policy_decisions_total", "Policy decisions, by policy and action.", ["policy", "action"]
)
FALLBACKS = Counter(
    "gateway_fallbacks_total", "Requests answered by a later candidate, by reason.", ["reason"]
)


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
