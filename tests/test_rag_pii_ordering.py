"""rag_context runs before pii_redaction: PII in a retrieved chunk is redacted before a non-EU hop,
even a type the policy allows everywhere (the DPA floor of the consented hop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from gateway.config import load_config
from gateway.dev import DevUpstream
from gateway.store import consent
from tests.conftest import RunningGateway
from tests.test_rag_gateway import ingest

CHUNK = "Escalations go to the works council secretary, reachable at council.secretary@example.eu."
EMAIL = "council.secretary@example.eu"


def test_pii_in_a_retrieved_chunk_is_redacted_before_it_reaches_a_non_eu_hop(
    tmp_path: Path,
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    eu = {"kind": "openai_compatible", "base_url": upstream.url, "jurisdiction": "EU", "region": "fr-par"}
    eu_chat_upstream = DevUpstream(fail_status=503).start()  # the EU chat model is down
    config = {
        "deployments": {
            "eu-chat": {**eu, "base_url": eu_chat_upstream.url, "model": "mistral-7b"},
            "eu-embed": {**eu, "model": "mistral-embed"},
            "us-gpt4": {
                "kind": "openai_compatible",
                "base_url": upstream_b.url,
                "model": "gpt-4o",
                "jurisdiction": "US",
                "region": "us-east",
                "dpa": True,
            },
        },
        "models": {
            "mistral-7b": {"deployments": ["eu-chat"]},
            "mistral-embed": {"type": "embeddings", "deployments": ["eu-embed"]},
        },
        "storage": {"database_url": f"sqlite:///{tmp_path / 'gateway.db'}"},
        "server": {"policies_dir": str(tmp_path / "none"), "secret_key": "test-secret"},
        "rag": {
            "embedding_model": "mistral-embed",
            "collections": {"handbook": {"tenants": ["acme"]}},
            "embedded": {"path": str(tmp_path / "index")},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "escalation.md").write_text(CHUNK)
    assert ingest(tmp_path / "config.yaml", docs).exit_code == 0
    bundle = {
        "version": 1,
        "defaults": {
            "residency": {"allow": ["EU"]},
            "consent_fallback": {"target": "us-gpt4"},
            "rag_context": {"collection": "handbook", "top_k": 1},
            # Allowed everywhere: on the consented (US) hop only the DPA floor redacts it, and only if the
            # retrieved chunk was in the request when pii_redaction analysed it.
            "pii_redaction": {"entities": {"EMAIL_ADDRESS": "allow"}},
        },
    }
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump(bundle, sort_keys=False))
    gw = gateway_factory(load_config(tmp_path / "config.yaml"), policies=tmp_path / "bundle.yaml")
    consent.grant(
        gw.gateway.engine, tenant="acme", subject=gw.gateway.pseudonym("alice"), purpose="llm_fallback_gpt4"
    )
    try:
        resp = httpx.post(
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {gw.key()}"},
            json={
                "model": "mistral-7b",
                "user": "alice",
                "messages": [{"role": "user", "content": "Who handles escalations?"}],
            },
            timeout=20,
        )
    finally:
        eu_chat_upstream.stop()
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-gateway-deployment"] == "us-gpt4"
    eu_chat = eu_chat_upstream.received
    assert eu_chat
    assert EMAIL in str(eu_chat[-1].body)
    us_body = str(upstream_b.received[-1].body)
    assert "works council secretary" in us_body  # the retrieved chunk reached the DPA hop ...
    assert EMAIL not in us_body
    assert "<EMAIL_ADDRESS_1>" in us_body
