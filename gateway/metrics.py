"""Prometheus metrics. Labels are bounded: no subject, prompt or key ever becomes a label.

With several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``gateway serve`` does it for you) and
``/metrics`` aggregates every worker's samples.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

__all__ = ["CONTENT_TYPE", "render"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by tenant, app, public model, deployment, jurisdiction, HTTP status and API "
    "(chat, embeddings, responses).",
    ["tenant", "app", "model", "deployment", "jurisdiction", "status", "endpoint"],
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
PII_ENTITIES = Counter(
    "gateway_pii_entities_total",
    "PII entities found in outgoing text per hop (or model output), by entity type and action taken.",
    ["entity_type", "action"],
)
FALLBACKS = Counter(
    "gateway_fallbacks_total",
    "Requests answered by a later candidate, by reason and whether a recorded consent allowed the hop.",
    ["reason", "consented"],
)

# --- accounting (token_accounting policy, usage ledger, batched writer) -------------------
TOKENS = Counter(
    "gateway_tokens_total",
    "Tokens charged, by tenant, app, public model, deployment, jurisdiction and type (prompt/completion/cached).",
    ["tenant", "app", "model", "deployment", "jurisdiction", "type"],
)
COST_EUR = Counter(
    "gateway_cost_eur_total",
    "Cost in EUR charged to requests, by tenant, app, public model, deployment and jurisdiction.",
    ["tenant", "app", "model", "deployment", "jurisdiction"],
)
REJECTIONS = Counter(
    "gateway_limit_rejections_total",
    "Requests refused by a budget or rate limit, by tenant, app, kind (budget/rate_limit) and limit.",
    ["tenant", "app", "kind", "limit"],
)
BUDGET_LIMIT = Gauge(
    "gateway_budget_limit",
    "Configured budget for the current period, by scope, owner, period and unit (eur/tokens).",
    ["scope", "owner", "period", "unit"],
    multiprocess_mode="mostrecent",
)
BUDGET_USED = Gauge(
    "gateway_budget_used",
    "Budget used (reserved and settled) in the current period, by scope, owner, period and unit.",
    ["scope", "owner", "period", "unit"],
    multiprocess_mode="mostrecent",
)
ACCOUNTING_BACKEND_ERRORS = Counter(
    "gateway_accounting_backend_errors_total",
    "Counter-store (Redis) failures seen by token_accounting, by the configured behaviour (fail_open/fail_closed).",
    ["behaviour"],
)
WRITER_ROWS = Counter(
    "gateway_writer_rows_total",
    "Rows handled by the batched SQL writer, by outcome (written/spooled/replayed/rejected/lost).",
    ["outcome"],
)
RETENTION_DELETED = Counter(
    "gateway_retention_deleted_total",
    "Rows, chunks or files deleted by the retention purge, by data class.",
    ["class"],
)

_LABEL_TENANT = True
_LABEL_APP = True


def configure_labels(tenant: bool = True, app: bool = True) -> None:
    """Opt out of tenant and/or app label values (they then read ``-``)."""
    global _LABEL_TENANT, _LABEL_APP
    _LABEL_TENANT, _LABEL_APP = tenant, app


def tenant_label(tenant: str) -> str:
    return tenant if _LABEL_TENANT else "-"


def app_label(app: str) -> str:
    return app if _LABEL_APP else "-"


RAG_RETRIEVALS = Counter(
    "gateway_rag_retrievals_total",
    "rag_context retrievals by outcome: injected, empty, skipped, denied, residency, timeout, error.",
    ["outcome"],
)


POLICY_RELOADS = Counter("gateway_policy_reloads_total", "Policy bundles loaded by hot reload.")
POLICY_RELOAD_FAILURES = Counter(
    "gateway_policy_reload_failures_total",
    "Policy bundle reloads rejected as invalid; the last good bundle stays.",
)


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        return generate_latest(registry)
    return generate_latest()
