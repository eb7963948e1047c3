"""Fixed consent cases beside the property test (test_property_residency.py), each checked on its own.

The EU deployment fails (503), so the only way to answer is the DPA fallback to the US deployment,
allowed only for a data subject with an active consent for the policy's purpose, in the request's
tenant. On that hop every detected identifier is redacted (the DPA floor), even a type the entity
map allows or masks, or does not name at all, unless a rule lifts the floor for the US explicitly
with a documented reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway import audit
from gateway.dev import DevUpstream
from gateway.store import consent
from tests.conftest import RunningGateway
from tests.test_policy_residency import two_region_config, write_bundle

PURPOSE = "llm_fallback_gpt4"
EMAIL = "jane.roe@example.org"
BUNDLE = """
version: 1
defaults:
  residency: {{allow: [EU]}}
tenants:
  acme:
    apps:
      chat:
        consent_fallback: {{target: us-gpt4, purpose: llm_fallback_gpt4}}
        pii_redaction:
          entities: {entities}
"""
REDACT_ELSEWHERE = "{EMAIL_ADDRESS: {action: redact, jurisdictions: {EU: allow}}}"


def start(
    factory: Callable[..., RunningGateway],
    eu: DevUpstream,
    us: DevUpstream,
    tmp_path: Path,
    entities: str = REDACT_ELSEWHERE,
) -> RunningGateway:
    gw = factory(two_region_config(eu, us), write_bundle(tmp_path, BUNDLE.format(entities=entities)))
    eu.fail_status = 503  # the EU model is down: only the DPA fallback could answer
    return gw


def ask(gw: RunningGateway, subject: str, content: str = f"Mail {EMAIL} about it") -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gw.key()}"},
        timeout=10,
        json={"model": "mistral-7b", "user": subject, "messages": [{"role": "user", "content": content}]},
    )


def grant(gw: RunningGateway, subject: str, **kw: Any) -> None:
    kw.setdefault("tenant", "acme")
    kw.setdefault("purpose", PURPOSE)
    consent.grant(gw.gateway.engine, subject=gw.gateway.pseudonym(subject), **kw)


def assert_refused(resp: httpx.Response, us: DevUpstream) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "consent.required"
    assert us.received == []


def test_an_active_consent_opens_the_fallback(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    # The control case: without it, every refusal below could be a fallback that never works.
    gw = start(gateway_factory, upstream, upstream_b, tmp_path)
    subject = uuid.uuid4().hex
    grant(gw, subject, expires_in=timedelta(hours=1))
    resp = ask(gw, subject)
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "us-gpt4"
    assert len(upstream_b.received) == 1


def test_an_expired_consent_does_not_open_the_fallback(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    gw = start(gateway_factory, upstream, upstream_b, tmp_path)
    subject = uuid.uuid4().hex
    grant(gw, subject, expires_in=timedelta(seconds=-1))
    assert_refused(ask(gw, subject), upstream_b)
    assert upstream.received  # the EU deployment was tried first


def test_a_consent_that_expires_stops_the_fallback_even_while_cached(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    gw = start(gateway_factory, upstream, upstream_b, tmp_path)
    subject = uuid.uuid4().hex
    grant(gw, subject, expires_in=timedelta(seconds=1.5))
    assert ask(gw, subject).status_code == 200  # the registry's answer is now cached for 2 s
    time.sleep(1.6)
    sent = len(upstream_b.received)
    refused = ask(gw, subject)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "consent.required"
    assert len(upstream_b.received) == sent


def test_a_consent_given_in_another_tenant_does_not_open_the_fallback(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    gw = start(gateway_factory, upstream, upstream_b, tmp_path)
    subject = uuid.uuid4().hex
    grant(gw, subject, tenant="other")
    assert_refused(ask(gw, subject), upstream_b)


def test_a_consent_for_another_purpose_does_not_open_the_fallback(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    gw = start(gateway_factory, upstream, upstream_b, tmp_path)
    subject = uuid.uuid4().hex
    grant(gw, subject, purpose="marketing_analytics")
    assert_refused(ask(gw, subject), upstream_b)


def test_a_consent_of_another_subject_does_not_open_the_fallback(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    gw = start(gateway_factory, upstream, upstream_b, tmp_path)
    grant(gw, "alice")
    assert_refused(ask(gw, "bob"), upstream_b)


# --- the DPA floor: the consented hop gets every detected type redacted ---------------------------------

FLOOR_CASES = {
    # entity map -> what the EU hop may see in the clear
    "allowed everywhere": "{EMAIL_ADDRESS: allow}",
    "allowed in the EU, masked elsewhere": "{EMAIL_ADDRESS: {action: mask, jurisdictions: {EU: allow}}}",
    "allowed in the EU, hashed elsewhere": "{EMAIL_ADDRESS: {action: hash, jurisdictions: {EU: allow}}}",
    "allowed for the US too, without a reason": "{EMAIL_ADDRESS: {action: allow, jurisdictions: {US: allow}}}",
    "not in the entity map at all": "{IBAN_CODE: redact}",
}


def audit_decisions(gw: RunningGateway, request_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while (row := audit.fetch(gw.gateway.engine, request_id)) is None:
        assert time.monotonic() < deadline, "no audit record"
        time.sleep(0.05)
    return list(orjson.loads(row.decisions))


@pytest.mark.parametrize("entities", list(FLOOR_CASES.values()), ids=list(FLOOR_CASES))
def test_the_consented_hop_gets_a_type_the_policy_allows_redacted(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
    entities: str,
) -> None:
    gw = start(gateway_factory, upstream, upstream_b, tmp_path, entities)
    grant(gw, "alice")
    resp = ask(gw, "alice")
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "us-gpt4"
    assert EMAIL in str(upstream.received[-1].body)  # the EU hop: the policy allows it there, in the clear
    us_body = str(upstream_b.received[-1].body)
    assert EMAIL not in us_body
    assert "<EMAIL_ADDRESS_1>" in us_body
    floor = [
        d
        for d in audit_decisions(gw, resp.headers["x-gateway-request-id"])
        if d["policy"] == "pii_redaction" and d["action"] == "floor_redact"
    ]
    assert [(d["facts"]["hop"], d["facts"]["entities"]) for d in floor] == [("us-gpt4", {"EMAIL_ADDRESS": 1})]


def test_a_rule_with_a_documented_reason_lifts_the_floor_for_its_jurisdiction(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    # The one documented way around the floor; without this case, "always redact" would pass the test above.
    entities = (
        '{EMAIL_ADDRESS: {action: redact, jurisdictions: {US: allow}, reason: "DPA annex 2 covers e-mail"}}'
    )
    gw = start(gateway_factory, upstream, upstream_b, tmp_path, entities)
    grant(gw, "alice")
    resp = ask(gw, "alice")
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "us-gpt4"
    assert EMAIL in str(upstream_b.received[-1].body)
