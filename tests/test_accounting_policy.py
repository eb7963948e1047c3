"""token_accounting end to end: counting, settling, budgets, rate limits, Redis failures."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import cast

import httpx
import orjson

from gateway.dev import DevUpstream
from tests.accounting_support import CHAT, chat, ledger, policy_file, priced_config
from tests.conftest import REDIS_URL, RunningGateway, free_port

Factory = Callable[..., RunningGateway]


def test_a_request_gets_one_ledger_row_with_the_upstream_usage_and_exact_cost(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path)
    gw = gateway_factory(priced_config(upstream), policies)
    key = gw.key(tenant="acme", app="chat")
    resp = chat(gw, key, {**CHAT, "user": "alice@example.com"})
    assert resp.status_code == 200
    usage = resp.json()["usage"]
    [row] = ledger(gw.gateway.engine, 1)
    assert row.request_id == resp.headers["x-gateway-request-id"]
    assert (row.tenant, row.app, row.model, row.deployment, row.jurisdiction) == (
        "acme",
        "chat",
        "mistral-7b",
        "eu-primary",
        "EU",
    )
    assert (row.prompt_tokens, row.completion_tokens, row.estimated) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        False,
    )
    expected = (Decimal(usage["prompt_tokens"]) * 2 + Decimal(usage["completion_tokens"]) * 6) / 1_000_000
    assert row.cost_eur == expected
    assert row.fx_rate == 1
    assert row.price_source == "config"
    assert row.status == 200
    assert row.latency_ms > 0
    assert row.subject
    assert "alice" not in row.subject


def test_usd_prices_are_converted_with_the_configured_rate_and_the_rate_is_recorded(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path)
    gw = gateway_factory(priced_config(upstream), policies)
    resp = chat(gw, gw.key(), {**CHAT, "model": "gpt-4o"})
    usage = resp.json()["usage"]
    [row] = ledger(gw.gateway.engine, 1)
    usd = (
        Decimal(usage["prompt_tokens"]) * Decimal("2.5") + Decimal(usage["completion_tokens"]) * 10
    ) / 1_000_000
    assert row.cost_eur == usd * Decimal("0.9")
    assert row.fx_rate == Decimal("0.9")


def test_a_stream_asks_upstream_for_usage_and_strips_it_when_the_client_did_not(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path)
    gw = gateway_factory(priced_config(upstream), policies)
    key = gw.key()
    body = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ).text
    assert upstream.received[-1].body["stream_options"] == {"include_usage": True}
    assert '"usage"' not in body
    assert body.rstrip().endswith("data: [DONE]")
    asked = httpx.post(
        f"{gw.base_url}/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ).text
    assert '"usage"' in asked
    rows = ledger(gw.gateway.engine, 2)
    assert len(rows) == 2
    assert all(r.completion_tokens > 0 and not r.estimated for r in rows)


def test_a_stream_without_upstream_usage_is_counted_and_marked_estimated(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path)
    gw = gateway_factory(priced_config(upstream), policies)
    upstream.include_usage = False
    try:
        httpx.post(
            f"{gw.base_url}/chat/completions",
            json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {gw.key()}"},
            timeout=10,
        )
    finally:
        upstream.include_usage = True
    [row] = ledger(gw.gateway.engine, 1)
    assert row.estimated
    assert row.prompt_tokens > 0
    assert row.completion_tokens > 5
    assert row.cost_eur > 0


def test_a_spent_budget_refuses_with_429_retry_after_and_a_clear_message(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    # Each request reserves about (15 + 100) tokens; the settled cost is far lower.
    policies, _ = policy_file(
        tmp_path, default_max_tokens=100, budgets=[{"scope": "tenant", "period": "day", "tokens": 300}]
    )
    gw = gateway_factory(priced_config(upstream), policies)
    key = gw.key(tenant="acme")
    statuses = [chat(gw, key).status_code for _ in range(12)]
    admitted = expected_admissions(gw, upstream, budget=300, max_tokens=100)
    assert 2 <= admitted < 12  # settling matters (one reservation alone would allow 2), and the budget ends
    assert statuses == [200] * admitted + [429] * (12 - admitted)
    resp = chat(gw, key)
    err = resp.json()["error"]
    assert err["code"] == "budget.exceeded"
    assert err["type"] == "rate_limit_error"
    assert "daily budget of tenant 'acme' (300 tokens)" in err["message"]
    assert "resets at" in err["message"]
    assert 0 < int(resp.headers["retry-after"]) <= 86400
    assert chat(gw, gw.key(tenant="other")).status_code == 200  # other tenants are unaffected
    rows = ledger(gw.gateway.engine, 14)
    refused = [r for r in rows if r.status == 429]
    assert refused
    assert all(r.cost_eur == 0 and r.completion_tokens == 0 for r in refused)
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert (
        'gateway_limit_rejections_total{app="chat",kind="budget",limit="tenant:day:tokens",tenant="acme"}'
        in metrics
    )
    assert 'gateway_budget_limit{owner="acme",period="day",scope="tenant",unit="tokens"} 300.0' in metrics


def expected_admissions(gw: RunningGateway, upstream: DevUpstream, *, budget: int, max_tokens: int) -> int:
    """How many identical CHAT requests in a row a token budget admits: each reserves its counted prompt
    plus ``max_tokens``, and is settled to what the upstream reported before the next one arrives, so
    request k+1 is admitted while k * used + reserved <= budget."""
    from gateway import tokens

    deployment = priced_config(upstream).deployments["eu-primary"]
    prompt, _ = tokens.count_chat(tokens.load(tokens.family_of(deployment)), CHAT)
    reserved = prompt + max_tokens
    used = {r.prompt_tokens + r.completion_tokens for r in ledger(gw.gateway.engine, 1) if r.status == 200}
    assert len(used) == 1, used  # the same request, the same usage
    return (budget - reserved) // used.pop() + 1


def test_settling_frees_what_the_reservation_overestimated(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    # 1000-token reservations against a 1500-token budget: without settling, the 2nd would fail.
    policies, _ = policy_file(
        tmp_path, default_max_tokens=1000, budgets=[{"scope": "key", "period": "month", "tokens": 1500}]
    )
    gw = gateway_factory(priced_config(upstream), policies)
    key = gw.key()
    assert [chat(gw, key).status_code for _ in range(5)] == [200] * 5


def test_rpm_limit_per_key_refuses_with_rate_limit_exceeded(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path, rate_limits=[{"scope": "key", "rpm": 3}])
    gw = gateway_factory(priced_config(upstream), policies)
    key = gw.key()
    statuses = [chat(gw, key).status_code for _ in range(4)]
    resp = chat(gw, key)
    assert statuses == [200, 200, 200, 429]
    assert resp.json()["error"]["code"] == "rate_limit.exceeded"
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert chat(gw, gw.key()).status_code == 200  # another key has its own window


def test_budget_state_in_redis_survives_a_gateway_restart(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    import redis

    # Room for several requests (a one-request budget would refuse on any gateway, Redis or not).
    policies, prefix = policy_file(
        tmp_path, default_max_tokens=100, budgets=[{"scope": "tenant", "period": "day", "tokens": 300}]
    )
    config = priced_config(upstream, storage={"redis_url": REDIS_URL})
    first = gateway_factory(config, policies)
    key = first.key(tenant="restart")
    statuses = [chat(first, key).status_code for _ in range(12)]  # bounded: the budget ends long before
    admitted = expected_admissions(first, upstream, budget=300, max_tokens=100)
    assert admitted >= 2
    assert statuses == [200] * admitted + [429] * (12 - admitted)
    first.stop()
    second = gateway_factory(config, policies)
    try:
        assert chat(second, second.key(tenant="restart")).status_code == 429  # the spent budget survived
        assert chat(second, second.key(tenant="fresh")).status_code == 200  # the new gateway admits others
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for counter in client.scan_iter(f"{prefix}:*"):
            client.delete(counter)
        client.close()


def test_redis_down_fails_closed_with_503_by_default(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path, budgets=[{"scope": "tenant", "period": "day", "eur": 10}])
    gw = gateway_factory(
        priced_config(upstream, storage={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}), policies
    )
    resp = chat(gw, gw.key())
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "accounting.unavailable"
    assert (
        'gateway_accounting_backend_errors_total{behaviour="fail_closed"}'
        in httpx.get(f"{gw.url}/metrics").text
    )


def test_redis_down_fails_open_to_an_in_process_limit_when_configured(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(
        tmp_path, on_backend_error="fail_open", rate_limits=[{"scope": "key", "rpm": 2}]
    )
    gw = gateway_factory(
        priced_config(upstream, storage={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}), policies
    )
    key = gw.key()
    assert [chat(gw, key).status_code for _ in range(3)] == [200, 200, 429]


def test_embeddings_are_counted_and_ledgered(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path)
    gw = gateway_factory(priced_config(upstream), policies)
    resp = httpx.post(
        f"{gw.base_url}/embeddings",
        json={"model": "mistral-embed", "input": ["a b c", "d e"]},
        headers={"Authorization": f"Bearer {gw.key()}"},
        timeout=10,
    )
    assert resp.status_code == 200
    [row] = ledger(gw.gateway.engine, 1)
    assert row.endpoint == "embeddings"
    assert row.prompt_tokens == 5
    assert row.completion_tokens == 0


def test_the_ledger_holds_no_prompt_text(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    policies, _ = policy_file(tmp_path)
    gw = gateway_factory(priced_config(upstream), policies)
    chat(gw, gw.key(), {**CHAT, "messages": [{"role": "user", "content": "secret-project-zebra"}]})
    [row] = ledger(gw.gateway.engine, 1)
    assert b"zebra" not in orjson.dumps(row.model_dump(), default=str)


def test_a_clean_shutdown_gives_leases_back_so_redis_holds_exactly_what_was_used(
    gateway_factory: Factory, upstream: DevUpstream, tmp_path: Path
) -> None:
    import redis

    policies, prefix = policy_file(
        tmp_path, budgets=[{"scope": "tenant", "period": "month", "tokens": 10_000_000}]
    )
    gw = gateway_factory(priced_config(upstream, storage={"redis_url": REDIS_URL}), policies)
    key = gw.key(tenant="lease")
    assert all(chat(gw, key).status_code == 200 for _ in range(3))
    client = redis.Redis.from_url(REDIS_URL)
    [counter] = client.keys(f"{prefix}:*")
    rows = ledger(gw.gateway.engine, 3)
    used = sum(r.prompt_tokens + r.completion_tokens for r in rows)
    assert int(cast(bytes, client.get(counter))) > used  # the worker holds a lease on top of what was used
    gw.stop()
    assert int(cast(bytes, client.get(counter))) == used  # given back, and the settlements sent, at shutdown
    client.delete(counter)
    client.close()
