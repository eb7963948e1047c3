"""Operator configuration (``config.yaml``), validated once at start-up.

Raw YAML is checked against pydantic models that reject unknown keys; every field has a
description, and ``docs/configuration.md`` is generated from those descriptions.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from gateway import yamlsrc
from gateway.config.auth import Auth
from gateway.config.deployments import Alias, Deployment, Price, Strict, Timeouts
from gateway.config.rag import RagSettings
from gateway.config.retention import Retention

__all__ = ["Alias", "Config", "Deployment", "Price", "Strict", "Timeouts", "load_config"]

DEFAULT_CONFIG = "config.yaml"


class Storage(Strict):
    database_url: str = Field(
        "sqlite:///./gateway.db",
        description="SQLAlchemy URL. Default: a SQLite file. Production: `postgresql+psycopg://...`.",
    )
    redis_url: str | None = Field(
        None, description="Redis URL for shared counters across workers. Unset: in-process counters."
    )
    spool_dir: str = Field(
        "./spool",
        description="Directory where the batched writer spools ledger and audit rows while the database is down.",
    )
    writer_batch_size: int = Field(500, ge=1, le=100_000, description="Rows per writer transaction.")
    writer_flush_interval_s: float = Field(
        0.5, gt=0, le=60, description="Longest time a queued row waits before the writer flushes it."
    )
    wal_fsync: bool = Field(
        False,
        description=(
            "fsync the write-ahead file after each append. Off: rows are appended with one write(2) before the "
            "response's last byte, which survives the process being killed (SIGKILL, OOM) but not a kernel crash "
            "or power loss. On: also survives those, at the cost of one fsync per request."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        # The writer's replays skip rows already stored (INSERT ... ON CONFLICT DO NOTHING), and the
        # migrations and tests cover these two; another database would fail at its first flush.
        scheme, sep, _ = url.partition("://")
        backend = scheme.partition("+")[0]  # postgresql+psycopg: the database, then the driver
        if not sep or not backend.isalnum():
            raise ValueError("not a database URL (e.g. sqlite:///./gateway.db or postgresql+psycopg://...)")
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"the gateway stores its data in SQLite or PostgreSQL, not {backend!r}")
        return url


class Server(Strict):
    host: str = Field("127.0.0.1", description="Listen address.")
    port: int = Field(8080, ge=1, le=65535, description="Listen port.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest accepted request body; larger bodies get 413."
    )
    max_n: int = Field(8, ge=1, le=128, description="Largest `n` (choices per chat request) accepted.")
    stream_write_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "Longest a streamed response waits for a client that does not read; the client is then disconnected "
            "and the upstream connection and concurrency slot are released (recorded as 499)."
        ),
    )
    max_admin_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description=(
            "Largest accepted `/admin` request body; larger bodies get 413 before authentication reads anything."
        ),
    )
    admin_docs: bool = Field(
        False,
        description=(
            "Serve the admin API's OpenAPI document at `/admin/openapi.json`, to admin keys only. No documentation "
            "page is served (it would load assets from a CDN)."
        ),
    )
    unknown_fields: Literal["reject", "drop", "scan"] = Field(
        "reject",
        description=(
            "A top-level request field the OpenAI API does not define: `reject` (400 "
            "`invalid_request.unknown_field`), `drop` (removed before forwarding) or `scan` (forwarded after "
            "its strings went through PII redaction). Fields a deployment lists in `extra_fields` are always "
            "accepted."
        ),
    )
    key_refresh_s: float = Field(
        2.0, gt=0, le=5, description="How often each worker re-reads cached keys; bounds revocation delay."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description=(
            "Largest request head (request line and headers), on every route; larger gets 431 "
            "`request_header_too_large` and the connection is closed. Memory per connection is bounded by this "
            "plus one socket read."
        ),
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "Longest wait for a complete request head, from connection open and from the first byte of each later "
            "request on a kept-alive connection; then 408 `request_timeout` and close (a connection that sent "
            "nothing is closed without an answer)."
        ),
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "Longest wait for a complete request body, from the end of its head; then the connection is closed."
        ),
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description=(
            "Idle time after a response before a kept-alive connection is closed (uvicorn's `timeout_keep_alive`)."
        ),
    )
    max_connections: int = Field(
        2048,
        ge=1,
        le=1_000_000,
        description=(
            "Open client connections per worker; one more gets 503 `server_busy` with `Retry-After: 1` at once "
            "and is closed. Keep `ulimit -n` above `max_connections` x workers plus the upstream pools' "
            "`max_concurrency`."
        ),
    )
    policies_dir: str = Field("policies", description="Directory holding the compliance team's policy YAML.")
    secret_key: str = Field(
        "",
        repr=False,
        description=(
            "HMAC key for subject pseudonyms and key hashing (`${GATEWAY_SECRET}`). Empty: a development key "
            "is used and `/readyz` reports it."
        ),
    )


class Accounting(Strict):
    currency: Literal["EUR"] = Field("EUR", description="Ledger currency. Costs are exact decimals in EUR.")
    usd_to_eur: Decimal = Field(
        Decimal("0.92"),
        gt=0,
        le=10,
        description="EUR per USD, applied to USD prices (litellm's price map, `price.currency: USD`); "
        "recorded on every ledger row.",
    )
    metric_tenant_label: bool = Field(
        True, description="Put the tenant name in metric labels; false: the label value reads `-`."
    )
    metric_app_label: bool = Field(
        True, description="Put the app name in metric labels; false: the label value reads `-`."
    )


class Embeddings(Strict):
    token_input: Literal["decode", "reject"] = Field(
        "decode",
        description="`/v1/embeddings` input given as token ids (LangChain's `OpenAIEmbeddings` default): `decode` "
        "turns it into text with `token_input_encoding`, so it is scanned, counted and forwarded as text; "
        "`reject` answers 400.",
    )
    token_input_encoding: Literal["cl100k_base", "o200k_base"] = Field(
        "cl100k_base",
        description="The tiktoken encoding token-id input is decoded with (OpenAI clients: cl100k_base).",
    )


class Config(Strict):
    deployments: dict[str, Deployment] = Field(..., description="Upstream deployments by name.")
    models: dict[str, Alias] = Field(..., description="Public model names mapped to ordered deployments.")
    storage: Storage = Field(Storage(), description="Where state lives.")
    server: Server = Field(Server(), description="HTTP server settings.")
    accounting: Accounting = Field(
        Accounting(), description="Cost accounting and ledger settings (docs/accounting.md)."
    )
    rag: RagSettings = Field(RagSettings(), description="Vector store and RAG collections (docs/rag.md).")
    embeddings: Embeddings = Field(Embeddings(), description="How `/v1/embeddings` input is read.")
    auth: Auth = Field(
        Auth(), description="Sign-in besides virtual keys: OpenID Connect issuers (docs/auth.md)."
    )
    retention: Retention = Field(
        Retention(),
        description="How long each class of data is kept (docs/compliance.md). Default: all kept.",
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the operator config; raise ConfigError naming file, line and path."""
    path = Path(path or os.environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))
    if not path.exists():
        raise yamlsrc.ConfigError([f"{path}: file not found"])
    src = yamlsrc.load(path)
    if not isinstance(src.data, dict):
        raise yamlsrc.ConfigError([f"{path}:1: <root>: expected a mapping"])
    data = dict(src.data)
    storage = dict(data.get("storage") or {})
    # The documented environment overrides win over the file, so one image serves every stage.
    for key, env in (("database_url", "DATABASE_URL"), ("redis_url", "REDIS_URL")):
        if os.environ.get(env):
            storage[key] = os.environ[env]
    data["storage"] = storage
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise yamlsrc.ConfigError(yamlsrc.problems_of(exc, src)) from None
    problems = [
        f"{src.where(('models', alias, 'deployments', i))}: models.{alias}.deployments[{i}]: "
        f"unknown deployment {name!r}"
        for alias, spec in config.models.items()
        for i, name in enumerate(spec.deployments)
        if name not in config.deployments
    ]
    if problems:
        raise yamlsrc.ConfigError(problems)
    return config
