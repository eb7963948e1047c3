"""Router: fallback reasons, circuit breakers, vetoed hops."""

from __future__ import annotations

import time

import httpx

from gateway.dev import DevUpstream
from gateway.router import Breaker
from tests.conftest import with_secondary


def test_breaker_opens_after_threshold_and_closes_after_cooldown() -> None:
    breaker = Breaker(threshold=2, cooldown_s=0.05)
    breaker.failure()
    assert not breaker.is_open
    breaker.failure()
    assert breaker.is_open
    time.sleep(0.06)
    assert not breaker.is_open
    breaker.success()
    assert breaker.failures == 0


def test_context_length_overflow_falls_back_to_the_next_deployment(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream
) -> None:
    gw = gateway_factory(with_secondary(upstream, upstream_b, name="eu-long"))
    upstream.fail_status = 400
    upstream.fail_body = (
        b'{"error": {"message": "This model\'s maximum context length is 8192 tokens", '
        b'"code": "context_length_exceeded"}}'
    )
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "long"}]},
    )
    assert resp.status_code == 200
    assert resp.headers["x-gateway-fallback"] == "context_length"


def test_an_open_breaker_skips_the_failing_deployment(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream
) -> None:
    gw = gateway_factory(with_secondary(upstream, upstream_b))
    upstream.fail_status = 503
    key = gw.key()
    for _ in range(5):
        httpx.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]},
        )
    seen = len(upstream.received)
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "eu-secondary"
    assert len(upstream.received) == seen  # the open breaker kept the request away from eu-primary
