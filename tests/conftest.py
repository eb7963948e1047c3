"""Shared fixtures: a real loopback upstream, a real gateway on a port, real Postgres and Redis."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine

from gateway import auth
from gateway.app import Gateway
from gateway.bundle import BundleHolder, load_bundle
from gateway.config import Config
from gateway.dev import DevUpstream
from gateway.http.server import uvicorn_config
from gateway.logs import JsonFormatter
from gateway.store.db import make_engine, upgrade

pytest_plugins = ["pytester", "tests.skipguard"]

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def upstream() -> Iterator[DevUpstream]:
    server = DevUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream_b() -> Iterator[DevUpstream]:
    """A second upstream, for fallback and jurisdiction tests."""
    server = DevUpstream(reply="Answer from upstream B.").start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset_upstreams(request: pytest.FixtureRequest) -> None:
    for name in ("upstream", "upstream_b"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import psycopg

    name = f"gw_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    dsn = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    make_engine(url).dispose()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """A migrated SQLite database at ``sqlite_url``."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database, once SQLite and once PostgreSQL (the session's database, shared)."""
    url = (
        f"sqlite:///{tmp_path / 'gw.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def make_config(upstream: DevUpstream, **overrides: Any) -> Config:
    """A config with EU and US deployments on the given loopback upstream."""
    base: dict[str, Any] = {
        "deployments": {
            "eu-primary": {
                "kind": "openai_compatible",
                "base_url": upstream.url,
                "model": "mistral-7b-instruct",
                "jurisdiction": "EU",
                "region": "fr-par",
                "api_key": "sk-upstream-secret-eu",
                "timeouts": {"connect_s": 1, "read_s": 5, "total_s": 10},
            },
            "eu-embed": {
                "kind": "openai_compatible",
                "base_url": upstream.url,
                "model": "mistral-embed",
                "jurisdiction": "EU",
                "region": "fr-par",
            },
        },
        "models": {
            "mistral-7b": {"deployments": ["eu-primary"]},
            "mistral-embed": {"type": "embeddings", "deployments": ["eu-embed"]},
        },
        "storage": {"database_url": "sqlite:///:memory:"},
        "server": {"policies_dir": "/nonexistent", "key_refresh_s": 0.5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Config.model_validate(base)


def with_supports(upstream: DevUpstream, supports: list[str]) -> Config:
    """make_config with its chat deployment (eu-primary) serving the upstream APIs ``supports`` names."""
    eu = {**make_config(upstream).deployments["eu-primary"].model_dump(), "supports": supports}
    return make_config(upstream, deployments={"eu-primary": eu})


def only_primary(upstream: DevUpstream, total_s: float, **deployment: Any) -> Config:
    """A config whose mistral-7b has one EU deployment on ``upstream``, streams cut at ``total_s``."""
    eu = {
        "kind": "openai_compatible",
        "base_url": upstream.url,
        "model": "m",
        "jurisdiction": "EU",
        "region": "fr-par",
        "timeouts": {"connect_s": 1, "read_s": 5, "total_s": total_s},
        **deployment,
    }
    return make_config(
        upstream, deployments={"eu-primary": eu}, models={"mistral-7b": {"deployments": ["eu-primary"]}}
    )


def with_secondary(
    upstream: DevUpstream, secondary: DevUpstream, name: str = "eu-secondary", **overrides: Any
) -> Config:
    """make_config plus a second EU deployment on ``secondary``, tried after eu-primary."""
    deployments = dict(make_config(upstream).model_dump()["deployments"])
    deployments[name] = {**deployments["eu-primary"], "base_url": secondary.url}
    models = {
        "mistral-7b": {"deployments": ["eu-primary", name]},
        "mistral-embed": {"type": "embeddings", "deployments": ["eu-embed"]},
    }
    return make_config(upstream, deployments=deployments, models=models, **overrides)


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def key(
        self,
        *,
        tenant: str = "acme",
        app: str = "chat",
        models: tuple[str, ...] = ("*",),
        scopes: tuple[str, ...] = ("chat", "embeddings"),
    ) -> str:
        key, _ = auth.create_key(self.gateway.engine, tenant=tenant, app=app, models=models, scopes=scopes)
        return key

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_gateway(config: Config, bundle: BundleHolder | None = None) -> RunningGateway:
    upgrade(config.storage.database_url)
    gateway = Gateway(config, bundle=bundle)
    port = free_port()
    server = uvicorn.Server(
        uvicorn_config(gateway, config.server, host="127.0.0.1", port=port, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    return RunningGateway(gateway, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture
def gateway_factory(sqlite_url: str) -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways (uvicorn on a free port, in a thread); all are stopped after the test."""
    started: list[RunningGateway] = []

    def factory(config: Config, policies: str | Path | None = None) -> RunningGateway:
        if config.storage.database_url == "sqlite:///:memory:":
            config = config.model_copy(
                update={"storage": config.storage.model_copy(update={"database_url": sqlite_url})}
            )
        if config.storage.spool_dir == "./spool":  # keep the writer's spool out of the work tree
            config = config.model_copy(
                update={
                    "storage": config.storage.model_copy(
                        update={
                            "spool_dir": str(Path(sqlite_url.removeprefix("sqlite:///")).parent / "spool")
                        }
                    )
                }
            )
        holder = BundleHolder(load_bundle([policies])) if policies else None
        running = start_gateway(config, holder)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream) -> RunningGateway:
    return gateway_factory(make_config(upstream))


class _PiiLeakCheck(logging.Handler):
    """Checks every record as it is emitted; keeps only where a leak happened, never the value."""

    def __init__(self, values: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.values = values
        self.formatter_ = JsonFormatter()
        self.leaks: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.formatter_.format(record) + repr(record.args) + (record.exc_text or "")
        except Exception:  # a log handler must never raise  # noqa: BLE001
            text = repr(record.__dict__)
        self.leaks.update(
            f"{record.name}: test PII value #{i}" for i, v in enumerate(self.values) if v in text
        )


@pytest.fixture(scope="session", autouse=True)
def _no_pii_in_logs() -> Iterator[None]:
    """Every log record of the session, at DEBUG level, is checked for the tests' PII values."""
    from tests.pii_values import PII_VALUES

    root = logging.getLogger()
    handler, old_level = _PiiLeakCheck(PII_VALUES), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(old_level)
    assert not handler.leaks, f"PII in log records: {sorted(handler.leaks)}"
