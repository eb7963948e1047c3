"""Residency and the consent-gated DPA fallback, through a real gateway and real loopback upstreams."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config


def two_region_config(eu: DevUpstream, us: DevUpstream, **overrides: Any) -> Any:
    deployments = {
        "eu-primary": {
            "kind": "openai_compatible",
            "base_url": eu.url,
            "model": "mistral-7b",
            "jurisdiction": "EU",
            "region": "fr-par",
            "timeouts": {"connect_s": 1, "read_s": 5, "total_s": 10},
        },
        "us-gpt4": {
            "kind": "openai_compatible",
            "base_url": us.url,
            "model": "gpt-4o",
            "jurisdiction": "US",
            "region": "us-east",
            "dpa": True,
        },
        "eu-embed": {
            "kind": "openai_compatible",
            "base_url": eu.url,
            "model": "embed",
            "jurisdiction": "EU",
            "region": "fr-par",
        },
        "us-embed": {
            "kind": "openai_compatible",
            "base_url": us.url,
            "model": "embed",
            "jurisdiction": "US",
            "region": "us-east",
        },
    }
    models = {
        "mistral-7b": {"deployments": ["eu-primary"]},
        "mixed": {"deployments": ["us-gpt4", "eu-primary"]},
        "us-only": {"deployments": ["us-gpt4"]},
        "embed": {"type": "embeddings", "deployments": ["us-embed", "eu-embed"]},
    }
    return make_config(eu, deployments=deployments, models=models, **overrides)


def write_bundle(tmp_path: Path, body: str) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "bundle.yaml").write_text(body)
    return directory


def consent_for(gw: RunningGateway, subject: str) -> None:
    from gateway.store import consent

    consent.grant(
        gw.gateway.engine, tenant="acme", subject=gw.gateway.pseudonym(subject), purpose="llm_fallback_gpt4"
    )


def chat(gw: RunningGateway, key: str, model: str = "mistral-7b", **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **extra.pop("headers", {})}
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        headers=headers,
        timeout=10,
        json={"model": model, "messages": [{"role": "user", "content": "hello"}], **extra},
    )


RESIDENCY = "version: 1\ndefaults:\n  residency:\n    allow: [EU]\n"
FALLBACK = (
    RESIDENCY
    + """\
tenants:
  acme:
    apps:
      chat:
        consent_fallback:
          target: us-gpt4
          purpose: llm_fallback_gpt4
        pii_redaction:
          mode: {pii}
          entities:
            EMAIL_ADDRESS: {{action: redact, jurisdictions: {{EU: allow}}}}
"""
)


def test_residency_skips_deployments_outside_allowed_jurisdictions(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    gw = gateway_factory(two_region_config(upstream, upstream_b), write_bundle(tmp_path, RESIDENCY))
    resp = chat(gw, gw.key(), "mixed")
    assert resp.status_code == 200
    assert resp.headers["x-gateway-jurisdiction"] == "EU"
    assert upstream_b.received == []


def test_no_allowed_deployment_is_a_403_with_a_stable_code(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    gw = gateway_factory(two_region_config(upstream, upstream_b), write_bundle(tmp_path, RESIDENCY))
    resp = chat(gw, gw.key(), "us-only")
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "residency.no_allowed_deployment"
    assert upstream_b.received == []


def test_residency_applies_to_embeddings(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    gw = gateway_factory(two_region_config(upstream, upstream_b), write_bundle(tmp_path, RESIDENCY))
    resp = httpx.post(
        f"{gw.base_url}/embeddings",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "embed", "input": "hello"},
    )
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "eu-embed"
    assert upstream_b.received == []


def test_data_class_rules_override_the_default(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    bundle = RESIDENCY + "    data_classes:\n      public: [EU, US]\n      health: [EU]\n"
    gw = gateway_factory(two_region_config(upstream, upstream_b), write_bundle(tmp_path, bundle))
    key = gw.key()
    assert chat(gw, key, "us-only", headers={"X-Data-Class": "public"}).status_code == 200
    assert chat(gw, key, "us-only", headers={"X-Data-Class": "health"}).status_code == 403
    unknown = chat(gw, key, "mistral-7b", headers={"X-Data-Class": "secret"})  # no rule names it
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "invalid_request.data_class"


def test_eu_prompt_never_reaches_us_upstream_without_consent(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    gw = gateway_factory(
        two_region_config(upstream, upstream_b), write_bundle(tmp_path, FALLBACK.format(pii="enforce"))
    )
    upstream.fail_status = 503
    resp = chat(gw, gw.key(), user="subject-without-consent")
    # Not an upstream-looking 502: the client learns that a fallback existed but was not allowed.
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    error = resp.json()["error"]
    assert error["code"] == "consent.required"
    assert "has not consented" in error["message"]
    assert upstream_b.received == []


def test_dpa_fallback_is_used_with_active_consent_and_stops_after_withdrawal(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    gw = gateway_factory(
        two_region_config(upstream, upstream_b), write_bundle(tmp_path, FALLBACK.format(pii="enforce"))
    )
    admin = {"Authorization": f"Bearer {gw.key(scopes=('admin',))}"}
    granted = httpx.post(
        f"{gw.url}/admin/consents",
        headers=admin,
        json={
            "tenant": "acme",
            "subject_id": "alice",
            "purpose": "llm_fallback_gpt4",
            "evidence_ref": "form-17",
        },
    )
    assert granted.status_code == 201
    assert granted.json()["subject"] != "alice"
    upstream.fail_status = 503
    key = gw.key()
    resp = chat(gw, key, user="alice")
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "us-gpt4"
    assert resp.headers["x-gateway-fallback"] == "upstream_5xx"
    assert chat(gw, key, user="bob").json()["error"]["code"] == "consent.required"
    no_subject = chat(gw, key)  # no subject, no fallback
    assert no_subject.status_code == 503
    assert "names no data subject" in no_subject.json()["error"]["message"]

    withdrawn = httpx.delete(
        f"{gw.url}/admin/consents",
        headers=admin,
        params={"tenant": "acme", "subject_id": "alice", "purpose": "llm_fallback_gpt4"},
    )
    assert withdrawn.json() == {"withdrawn": 1}
    withdrawn_at, sent_before = time.monotonic(), len(upstream_b.received)
    ttl = gw.gateway.services.consents.ttl_s  # each worker may answer from its cache this long
    still_served = 0
    while (resp := chat(gw, key, user="alice")).status_code == 200:
        assert resp.headers["x-gateway-deployment"] == "us-gpt4"
        still_served += 1
        assert time.monotonic() - withdrawn_at < ttl + 1, f"withdrawal not effective within {ttl} s"
        time.sleep(0.2)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "consent.required"
    # Every request that reached the US after the withdrawal was one the cache still answered, no other.
    assert len(upstream_b.received) == sent_before + still_served
    refused = chat(gw, key, user="alice")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "consent.required"
    assert len(upstream_b.received) == sent_before + still_served  # nothing more reached the US


@pytest.mark.parametrize("pii_mode", ["shadow", "off"])
def test_a_reload_that_stops_enforcing_pii_under_the_dpa_fallback_is_refused(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path, pii_mode: str
) -> None:
    directory = write_bundle(tmp_path, FALLBACK.format(pii="enforce"))
    config = two_region_config(upstream, upstream_b, server={"policies_dir": str(directory)})
    gw = gateway_factory(config, directory)
    consent_for(gw, "alice")
    before, failures = gw.gateway.bundle.current.hash, reload_failures(gw.url)
    (directory / "bundle.yaml").write_text(FALLBACK.format(pii=pii_mode))
    deadline = time.monotonic() + 5
    while reload_failures(gw.url) != failures + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gw.gateway.bundle.current.hash == before
    upstream.fail_status = 503
    resp = chat(
        gw, gw.key(), user="alice", messages=[{"role": "user", "content": "Mail jane.roe@example.org"}]
    )
    assert resp.headers["x-gateway-deployment"] == "us-gpt4"
    assert "jane.roe@example.org" not in str(
        upstream_b.received[-1].body
    )  # the last good bundle still redacts


# The consented (US) hop's own action is allow, or weaker than redact: only the DPA floor redacts there.
FLOOR_RULES = {
    "allow": "allow",
    "mask": "{action: mask, jurisdictions: {EU: allow}}",
    "us_allow_without_reason": "{action: allow, jurisdictions: {EU: allow, US: allow}}",
}


@pytest.mark.parametrize("rule", list(FLOOR_RULES.values()), ids=list(FLOOR_RULES))
def test_pii_the_policy_allows_on_eu_hops_is_redacted_on_the_dpa_hop(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path, rule: str
) -> None:
    bundle = FALLBACK.format(pii="enforce").replace("{action: redact, jurisdictions: {EU: allow}}", rule)
    assert f"EMAIL_ADDRESS: {rule}" in bundle
    gw = gateway_factory(two_region_config(upstream, upstream_b), write_bundle(tmp_path, bundle))
    consent_for(gw, "alice")
    message = {"role": "user", "content": "Mail jane.roe@example.org about it"}
    upstream.fail_status = 503
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-7b", "user": "alice", "messages": [message]},
    )
    assert resp.headers["x-gateway-deployment"] == "us-gpt4"
    assert "jane.roe@example.org" in str(upstream.received[-1].body)  # EU hop: allowed by the policy
    assert "jane.roe@example.org" not in str(upstream_b.received[-1].body)
    assert "<EMAIL_ADDRESS_1>" in str(upstream_b.received[-1].body)  # redacted: not masked, not in the clear


def test_audit_record_explains_the_route_without_prompt_text(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    gw = gateway_factory(
        two_region_config(upstream, upstream_b), write_bundle(tmp_path, FALLBACK.format(pii="enforce"))
    )
    consent_for(gw, "alice")
    upstream.fail_status = 503
    resp = chat(gw, gw.key(), user="alice")
    request_id = resp.headers["x-gateway-request-id"]
    admin = {"Authorization": f"Bearer {gw.key(scopes=('admin',))}"}
    deadline = time.monotonic() + 5
    while (record := httpx.get(f"{gw.url}/admin/audit/{request_id}", headers=admin)).status_code == 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    body = record.json()
    assert body["deployment"] == "us-gpt4"
    assert body["fallback"] == "upstream_5xx"
    assert body["consent_ref"]
    assert body["policy_hash"] == gw.gateway.bundle.current.hash
    assert [a[0] for a in body["attempts"]] == ["eu-primary", "us-gpt4"]
    assert {(d["policy"], d["action"]) for d in body["decisions"]} >= {
        ("residency", "allow"),
        ("consent_fallback", "eligible"),
        ("consent_fallback", "fallback"),
    }
    assert "hello" not in record.text
    assert "alice" not in record.text


def reload_failures(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r"^gateway_policy_reload_failures_total ([0-9.e+]+)$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("edit", ["valid", "invalid"])
def test_hot_reload_swaps_valid_bundles_and_keeps_the_last_good_one(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path, edit: str
) -> None:
    directory = write_bundle(tmp_path, RESIDENCY)
    config = two_region_config(
        upstream, upstream_b, server={"policies_dir": str(directory), "key_refresh_s": 0.5}
    )
    gw = gateway_factory(config, directory)
    key = gw.key()
    before = httpx.get(f"{gw.url}/readyz").json()["policy_bundle"]
    failures = reload_failures(gw.url)  # the counter is per process, and other tests reload too
    assert chat(gw, key, "us-only").status_code == 403
    text = RESIDENCY.replace("[EU]", "[EU, US]") if edit == "valid" else RESIDENCY.replace("[EU]", "[EUR]")
    (directory / "bundle.yaml").write_text(text)
    deadline = time.monotonic() + 5
    if edit == "valid":
        while httpx.get(f"{gw.url}/readyz").json()["policy_bundle"] == before:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert chat(gw, key, "us-only").status_code == 200
    else:
        while reload_failures(gw.url) != failures + 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{gw.url}/readyz").json()["policy_bundle"] == before
        assert chat(gw, key, "us-only").status_code == 403


def test_requests_in_flight_finish_under_the_bundle_they_started_with(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    directory = write_bundle(tmp_path, RESIDENCY)
    config = two_region_config(
        upstream, upstream_b, server={"policies_dir": str(directory), "key_refresh_s": 0.5}
    )
    gw = gateway_factory(config, directory)
    key = gw.key()
    before = httpx.get(f"{gw.url}/readyz").json()["policy_bundle"]
    upstream.delay_s = 1.0
    with ThreadPoolExecutor(8) as pool:
        in_flight = [pool.submit(chat, gw, key) for _ in range(8)]
        time.sleep(0.3)
        (directory / "bundle.yaml").write_text(RESIDENCY.replace("[EU]", "[CH]"))
        deadline = time.monotonic() + 5
        while httpx.get(f"{gw.url}/readyz").json()["policy_bundle"] == before:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert all(f.result().status_code == 200 for f in in_flight)
    upstream.delay_s = 0
    assert chat(gw, key).json()["error"]["code"] == "residency.no_allowed_deployment"
