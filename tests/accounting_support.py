"""Helpers for the accounting tests: priced configs, policy files, ledger reads."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import Engine
from sqlmodel import Session, select

from gateway.config import Config
from gateway.dev import DevUpstream
from gateway.store.ledger import UsageRecord
from tests.conftest import RunningGateway, make_config

CHAT = {"model": "mistral-7b", "messages": [{"role": "user", "content": "How much does this cost?"}]}


def priced_config(upstream: DevUpstream, **overrides: Any) -> Config:
    """EU deployment priced at 2 EUR / 6 EUR per 1M tokens, plus a USD-priced one."""
    eu = {
        "kind": "openai_compatible",
        "base_url": upstream.url,
        "model": "mistral-7b-instruct",
        "jurisdiction": "EU",
        "region": "fr-par",
        "timeouts": {"connect_s": 1, "read_s": 5, "total_s": 10},
        "price": {"input_per_1m": "2", "output_per_1m": "6", "currency": "EUR"},
    }
    usd = {
        **eu,
        "model": "gpt-4o",
        "price": {"input_per_1m": "2.5", "output_per_1m": "10", "currency": "USD"},
    }
    base: dict[str, Any] = {
        "deployments": {
            "eu-primary": eu,
            "eu-usd": usd,
            "eu-embed": {**eu, "model": "mistral-embed", "price": None},
        },
        "models": {
            "mistral-7b": {"deployments": ["eu-primary"]},
            "gpt-4o": {"deployments": ["eu-usd"]},
            "mistral-embed": {"type": "embeddings", "deployments": ["eu-embed"]},
        },
        "accounting": {"usd_to_eur": "0.9"},
    }
    return make_config(upstream, **{**base, **overrides})


def policy_file(tmp_path: Path, **section: Any) -> tuple[Path, str]:
    prefix = f"test:{uuid.uuid4().hex}"
    path = tmp_path / "policies" / "bundle.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        yaml.safe_dump({"version": 1, "defaults": {"token_accounting": {"key_prefix": prefix, **section}}})
    )
    return path.parent, prefix


def chat(gw: RunningGateway, key: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        json=body or CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def ledger(engine: Engine, n: int, timeout: float = 10.0) -> list[UsageRecord]:
    """Wait until the ledger holds at least ``n`` rows, then return them all."""
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as s:
            rows = list(s.exec(select(UsageRecord)))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
