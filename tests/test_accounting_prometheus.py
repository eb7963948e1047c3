"""The Grafana cost dashboard against a real Prometheus scraping a real gateway.

Every panel's PromQL is evaluated through Prometheus' HTTP API with the template variables
substituted and must return data; the cost panel must equal the usage ledger to the cent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.dev import DevUpstream
from tests.accounting_support import CHAT, ledger, priced_config
from tests.conftest import RunningGateway, free_port

DASHBOARD = Path(__file__).resolve().parent.parent / "charts" / "gateway" / "dashboards" / "cost.json"
pytestmark = pytest.mark.slow


@pytest.fixture
def prometheus_bin() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed: run scripts/ci-deps.sh")
        pytest.skip("prometheus is not installed (scripts/ci-deps.sh installs it)")
    return found


def _bundle(tmp_path: Path, acme: str, globex: str) -> Path:
    prefix = f"test:{uuid.uuid4().hex}"
    bundle = {
        "version": 1,
        "defaults": {
            "pii_redaction": {"entities": {"EMAIL_ADDRESS": "redact"}},
            "token_accounting": {
                "key_prefix": prefix,
                "budgets": [{"scope": "tenant", "period": "day", "eur": "1000"}],
            },
        },
        "tenants": {
            globex: {"token_accounting": {"budgets": [{"scope": "tenant", "period": "day", "eur": "0.5"}]}},
            acme: {"apps": {"rag": {"rag_context": {"collection": "handbook"}}}},
        },
    }
    path = tmp_path / "policies" / "bundle.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(bundle))
    return path.parent


@pytest.fixture
def prometheus(prometheus_bin: str, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start Prometheus scraping the targets added later; yields a function that adds one."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    proc: subprocess.Popen[bytes] | None = None

    def start(target: str) -> str:
        nonlocal proc
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        proc = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            "prometheus did not become ready: " + (tmp_path / "prometheus.log").read_text()[-2000:]
        )

    yield start
    if proc is not None:
        proc.terminate()
        proc.wait(10)


def _drive(gw: RunningGateway, acme: str, globex: str) -> None:
    keys = {(t, a): gw.key(tenant=t, app=a) for t, a in [(acme, "chat"), (acme, "rag"), (globex, "hr")]}

    def post(key: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{gw.base_url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )

    for round_ in range(8):
        for (_tenant, app), key in keys.items():
            body: dict[str, Any] = dict(CHAT)
            if app == "rag":
                body["gateway_rag"] = {"enabled": False}
            if round_ % 2:
                body["messages"] = [{"role": "user", "content": "Mail me at jane.doe@example.com please"}]
            post(key, body)
            post(key, {**body, "model": "gpt-4o", "stream": True})
            post(key, {**body, "model": "fallback-model"})
        time.sleep(0.4)  # spread traffic across scrapes so rate() has samples


def _substitute(expr: str, tenant: str = ".*", model: str = ".*") -> str:
    return (
        expr.replace("${tenant}", tenant)
        .replace("$tenant", tenant)
        .replace("$model", model)
        .replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
    )


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]["result"]


def test_every_dashboard_panel_returns_data_and_the_cost_matches_the_ledger(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    prometheus: Callable[[str], str],
    tmp_path: Path,
) -> None:
    price = {"input_per_1m": "3000", "output_per_1m": "9000", "currency": "EUR"}
    config = priced_config(upstream)
    deployments = {n: d.model_dump() for n, d in config.deployments.items()}
    deployments["eu-primary"]["price"] = price
    deployments["eu-down"] = {**deployments["eu-primary"], "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    models = {n: m.model_dump() for n, m in config.models.items()}
    models["fallback-model"] = {"deployments": ["eu-down", "eu-primary"]}
    config = priced_config(upstream, deployments=deployments, models=models)
    # Tenants of their own: metrics are process-wide and earlier tests in this session add to them.
    acme, globex = f"acme{uuid.uuid4().hex[:6]}", f"globex{uuid.uuid4().hex[:6]}"
    gw = gateway_factory(config, _bundle(tmp_path, acme, globex))
    prom = prometheus(gw.url.removeprefix("http://"))
    # Prometheus applies target discovery in steps of up to 5 s: wait for its first scrape.
    deadline = time.monotonic() + 30
    while not _query(prom, "up") and time.monotonic() < deadline:
        time.sleep(0.2)
    _drive(gw, acme, globex)

    rows = ledger(gw.gateway.engine, 72)
    assert len(rows) == 72
    ledger_total = sum((r.cost_eur for r in rows), Decimal(0))
    assert any(r.status == 429 for r in rows)
    assert ledger_total > 1

    # Wait until Prometheus has scraped the final state; the tenant variable selects this test's tenants.
    cost_expr = json.loads(DASHBOARD.read_text())["panels"][0]["targets"][0]["expr"]
    deadline = time.monotonic() + 20
    shown = None
    while time.monotonic() < deadline:
        result = _query(prom, _substitute(cost_expr, tenant=f"{acme}|{globex}"))
        shown = Decimal(result[0]["value"][1]) if result else None
        if shown is not None and abs(shown - ledger_total) < Decimal("0.005"):
            break
        time.sleep(0.5)
    assert shown is not None, ledger_total
    assert abs(shown - ledger_total) < Decimal("0.005"), (shown, ledger_total)
    one = _query(prom, _substitute(cost_expr, tenant=acme))
    acme_ledger = sum((r.cost_eur for r in rows if r.tenant == acme), Decimal(0))
    assert abs(Decimal(one[0]["value"][1]) - acme_ledger) < Decimal("0.005")

    dashboard = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"tenant", "model"}
    for var in ("tenant", "model"):
        assert _query(prom, f"group by ({var}) (gateway_requests_total)"), var
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            result = _query(prom, _substitute(target["expr"]))
            values = [r["value"][1] for r in result]
            if not values or all(v == "NaN" for v in values):
                empty.append(f"{panel['title']}: {target['expr']}")
    scrapes = _query(prom, "count_over_time(up[2m])")
    assert not empty, f"scrapes: {scrapes}; panels without data:\n" + "\n".join(empty)
