"""Two replicas that agree: two `gateway serve` processes on one PostgreSQL and one Redis.

A round-robin client sends every other request to each process. Across the two:
- a tenant's token budget is never exceeded in sum, and every answered request has its ledger row;
- a key revocation, a consent withdrawal and a policy file change take effect on both within 2 s;
- after a clean stop, `audit verify` finds both processes' chains whole.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text

from gateway import audit
from gateway.dev import DevUpstream
from gateway.store.db import make_engine
from tests.conftest import REDIS_URL, free_port

BUDGET_TOKENS = 3000
SECRET = secrets.token_urlsafe(48)


class Replica:
    def __init__(self, config: Path, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"{config.stem}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli_main", "serve", "-c", str(config), "--port", str(self.port)],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
            env={**os.environ, "GATEWAY_LOG_LEVEL": "WARNING"},
        )

    def ready(self) -> dict[str, Any] | None:
        try:
            resp = httpx.get(f"{self.url}/readyz", timeout=2)
        except httpx.HTTPError:
            return None
        out: dict[str, Any] = resp.json()
        return out if resp.status_code == 200 else None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _until(check: Callable[[], bool], within_s: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, f"{what} took longer than {within_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def cluster(
    tmp_path: Path, upstream: DevUpstream, upstream_b: DevUpstream, postgres_url: str
) -> Iterator[tuple[list[Replica], str, Path]]:
    tenant = f"replica-{uuid.uuid4().hex[:8]}"  # the database and Redis are shared with other tests
    policies = tmp_path / "policies"
    policies.mkdir()
    bundle = {
        "version": 1,
        "defaults": {
            "residency": {"allow": ["EU"]},
            "token_accounting": {
                "key_prefix": f"test:{uuid.uuid4().hex}",
                "budgets": [{"scope": "tenant", "period": "day", "tokens": BUDGET_TOKENS}],
                "default_max_tokens": 40,
            },
            "consent_fallback": {
                "target": "us-gpt4",
                "purpose": "llm_fallback_gpt4",
                "models": ["mistral-7b"],
            },
            "pii_redaction": {},  # the DPA fallback requires it, enforced
        },
    }
    (policies / "bundle.yaml").write_text(yaml.safe_dump(bundle))
    deployment = {"kind": "openai_compatible", "model": "m", "region": "x", "timeouts": {"total_s": 10}}
    replicas = []
    for name in ("a", "b"):
        config = {
            "deployments": {
                "eu": {**deployment, "base_url": upstream.url, "jurisdiction": "EU"},
                "us-gpt4": {**deployment, "base_url": upstream_b.url, "jurisdiction": "US"},
            },
            "models": {"mistral-7b": {"deployments": ["eu"]}},
            "storage": {
                "database_url": postgres_url,
                "redis_url": REDIS_URL,
                "spool_dir": str(tmp_path / f"spool-{name}"),
            },
            "server": {"secret_key": SECRET, "policies_dir": str(policies), "key_refresh_s": 0.5},
        }
        path = tmp_path / f"config-{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        replicas.append((path, Replica(path, tmp_path)))
    try:
        _on_each([r for _, r in replicas], lambda r: r.ready() is not None or _died(r), 60, "start-up")
        yield [r for _, r in replicas], tenant, replicas[0][0]
    finally:
        for _, replica in replicas:
            if replica.proc.poll() is None:
                replica.stop()


def _on_each(replicas: list[Replica], check: Callable[[Replica], bool], within_s: float, what: str) -> None:
    for replica in replicas:
        _until(lambda: check(replica), within_s, what)  # noqa: B023 (called before the loop moves on)


def _died(replica: Replica) -> bool:
    if replica.proc.poll() is not None:
        raise AssertionError(f"a replica exited: {replica.log.read_text()[-3000:]}")
    return False


def cli(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli_main", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def chat(replica: Replica, key: str, user: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "mistral-7b",
        "messages": [{"role": "user", "content": "How are the numbers?"}],
    }
    if user:
        body["user"] = user
    return httpx.post(
        f"{replica.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=15,
    )


def test_two_replicas_agree_on_budgets_revocations_consent_policies_and_the_audit_trail(
    cluster: tuple[list[Replica], str, Path], upstream: DevUpstream, postgres_url: str
) -> None:
    replicas, tenant, config = cluster
    key = (
        cli(config, "keys", "create", "--tenant", tenant, "--app", "bot", "--scopes", "chat")
        .strip()
        .splitlines()[-1]
    )

    # A shared budget: requests alternate between the two until it is used up.
    order = itertools.cycle(replicas)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: chat(r, key), [next(order) for _ in range(400)]))
    codes = [a.status_code for a in answers]
    answered = [a for a in answers if a.status_code == 200]
    assert set(codes) == {200, 429}, codes
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} == {"budget.exceeded"}
    engine = make_engine(postgres_url)
    try:

        def ledger() -> list[Any]:
            with engine.connect() as conn:
                return list(
                    conn.execute(
                        text(
                            "SELECT request_id, prompt_tokens + completion_tokens FROM usage_ledger "
                            "WHERE tenant = :t AND status = 200"
                        ),
                        {"t": tenant},
                    )
                )

        _until(lambda: len(ledger()) >= len(answered), 10, "the ledger rows")
        rows = ledger()
        assert sorted(r[0] for r in rows) == sorted(a.headers["x-gateway-request-id"] for a in answered)
        assert sum(r[1] for r in rows) <= BUDGET_TOKENS  # never exceeded, in sum over both replicas

        # Consent: the US fallback opens for a consenting subject while the EU is down, on both...
        upstream.fail_status = 503
        fresh = (
            cli(config, "keys", "create", "--tenant", f"{tenant}-c", "--app", "bot", "--scopes", "chat")
            .strip()
            .splitlines()[-1]
        )
        consent = ("--tenant", f"{tenant}-c", "--subject", "emp-7", "--purpose", "llm_fallback_gpt4")
        cli(config, "consent", "grant", *consent)
        _on_each(replicas, lambda r: chat(r, fresh, "emp-7").status_code == 200, 5, "the consent")
        # ...and a withdrawal closes it on both within 2 s.
        cli(config, "consent", "withdraw", *consent)
        # (2 s consent cache, plus a request in flight)
        _on_each(replicas, lambda r: chat(r, fresh, "emp-7").status_code == 503, 2.5, "the withdrawal")
        upstream.fail_status = None

        # A revoked key stops working on both within 2 s.
        assert all(chat(r, fresh).status_code == 200 for r in replicas)
        key_id = fresh.split("-")[2]
        cli(config, "keys", "revoke", key_id)
        _on_each(replicas, lambda r: chat(r, fresh).status_code == 401, 2.0, "the revocation")

        # A policy file change is loaded by both within 2 s.
        before = {(r.ready() or {}).get("policy_bundle") for r in replicas}
        assert len(before) == 1
        bundle_file = Path(config).parent / "policies" / "bundle.yaml"
        bundle = yaml.safe_load(bundle_file.read_text())
        bundle["defaults"]["token_accounting"]["default_max_tokens"] = 30
        bundle_file.write_text(yaml.safe_dump(bundle))
        _on_each(
            replicas,
            lambda r: (r.ready() or {}).get("policy_bundle") not in before | {None},
            2.0,
            "the policy reload",
        )

        # Clean stops: both chains are whole.
        for replica in replicas:
            replica.stop()
        with engine.connect() as conn:
            chains = {
                c
                for (c,) in conn.execute(
                    text("SELECT DISTINCT chain_id FROM audit_records WHERE tenant = :t"), {"t": tenant}
                )
            }
        assert len(chains) == 2
        _, problems = audit.verify(engine, SECRET)
        assert [p for p in problems if any(c in p for c in chains)] == []
        assert [c for c, _ in audit.open_chains(engine) if c in chains] == []
    finally:
        engine.dispose()
