"""Bad request shapes get a 400 in OpenAI's format, before anything is sent or scanned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config

HELLO = [{"role": "user", "content": "hi"}]


def post(
    gw: RunningGateway,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    endpoint: str = "chat/completions",
) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/{endpoint}",
        json=body,
        timeout=10,
        headers={"Authorization": f"Bearer {gw.key()}", **(headers or {})},
    )


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (
            {"messages": [{"role": "user", "content": 5}]},
            "invalid_request.invalid_value",
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": "x"}]},
            "invalid_request.invalid_value",
            "messages[0].tool_calls",
        ),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_request.invalid_value", "messages[0]"),
        (
            {"messages": [{"role": "user", "content": "x", "mood": "happy"}]},
            "invalid_request.unknown_field",
            "messages[0].mood",
        ),
        ({"messages": HELLO, "n": -1}, "invalid_request.invalid_value", "n"),
        ({"messages": HELLO, "n": 1_000_000}, "invalid_request.invalid_value", "n"),
        ({"messages": HELLO, "max_tokens": -5}, "invalid_request.invalid_value", "max_tokens"),
        ({"messages": HELLO, "temperature": 3}, "invalid_request.invalid_value", "temperature"),
        ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "invalid_request.invalid_value", "stop"),
        ({"messages": HELLO, "made_up": 1}, "invalid_request.unknown_field", "made_up"),
        ({"messages": HELLO, "metadata": nested(300)}, "invalid_request.too_deep", None),
        ({"messages": []}, "invalid_request.invalid_value", "messages"),
        ({}, "invalid_request.missing_field", "messages"),
    ],
)
def test_a_malformed_chat_request_gets_a_400_naming_the_field(
    gw: RunningGateway, upstream: DevUpstream, body: dict[str, Any], code: str, param: str | None
) -> None:
    resp = post(gw, {"model": "mistral-7b", **body})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert upstream.received == []


def test_a_gateway_bug_is_a_500_in_openai_format_and_recorded_as_500_not_zero(
    gw: RunningGateway, upstream: DevUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import audit

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.gateway.router, "send", broken)
    resp = post(gw, {"model": "mistral-7b", "messages": HELLO})
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"
    assert "a bug" not in resp.text
    request_id = resp.headers["x-gateway-request-id"]
    gw.stop()  # a clean shutdown drains the writer
    record = audit.fetch(gw.gateway.engine, request_id)
    assert record is not None
    assert record.status == 500


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-Data-Class": "x" * 1_000}, "invalid_request.data_class"),  # (a 64 KiB head gets 431 first)
        ({"X-Data-Class": "Maria Schneider"}, "invalid_request.data_class"),
        ({"X-Subject-Id": "s" * 257}, "invalid_request.subject_id"),
    ],
)
def test_headers_that_would_reach_the_record_are_bounded(
    gw: RunningGateway, upstream: DevUpstream, headers: dict[str, str], code: str
) -> None:
    resp = post(gw, {"model": "mistral-7b", "messages": HELLO}, headers=headers)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == code
    assert upstream.received == []


def test_an_embeddings_request_for_a_chat_model_says_so(gw: RunningGateway) -> None:
    resp = post(gw, {"model": "mistral-7b", "input": "x"}, endpoint="embeddings")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "model_wrong_endpoint"
    assert resp.json()["error"]["message"] == "mistral-7b is a chat model; embeddings models: mistral-embed."


@pytest.mark.parametrize(
    ("mode", "status", "forwarded"), [("reject", 400, None), ("drop", 200, False), ("scan", 200, True)]
)
def test_unknown_top_level_fields_follow_server_unknown_fields(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    tmp_path: Path,
    mode: str,
    status: int,
    forwarded: bool | None,
) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bundle.yaml").write_text(
        "version: 1\ndefaults:\n  pii_redaction:\n    entities: {EMAIL_ADDRESS: redact}\n"
    )
    gw = gateway_factory(
        make_config(upstream, server={"policies_dir": "/nonexistent", "unknown_fields": mode}), tmp_path / "p"
    )
    resp = post(
        gw, {"model": "mistral-7b", "messages": HELLO, "vendor_hint": {"note": "mail ann@example.org"}}
    )
    assert resp.status_code == status, resp.text
    if status == 400:
        assert resp.json()["error"] == {
            "message": "Unknown field 'vendor_hint'.",
            "type": "invalid_request_error",
            "param": "vendor_hint",
            "code": "invalid_request.unknown_field",
        }
        return
    body = upstream.received[-1].body
    assert ("vendor_hint" in body) is forwarded
    assert "ann@example.org" not in str(body)
    if forwarded:
        assert "EMAIL_ADDRESS" in body["vendor_hint"]["note"]


def test_a_provider_extension_goes_only_to_the_deployment_that_lists_it(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, upstream_b: DevUpstream
) -> None:
    config = make_config(upstream)
    deployments = config.model_dump()["deployments"]
    deployments["eu-primary"]["extra_fields"] = ["top_k"]
    deployments["eu-secondary"] = {
        **deployments["eu-primary"],
        "base_url": upstream_b.url,
        "extra_fields": [],
    }
    models = {**config.model_dump()["models"], "mistral-7b": {"deployments": ["eu-primary", "eu-secondary"]}}
    gw = gateway_factory(make_config(upstream, deployments=deployments, models=models))
    assert post(gw, {"model": "mistral-7b", "messages": HELLO, "top_k": 5}).status_code == 200
    assert upstream.received[-1].body["top_k"] == 5
    upstream.fail_status = 503
    assert post(gw, {"model": "mistral-7b", "messages": HELLO, "top_k": 5}).status_code == 200
    assert "top_k" not in upstream_b.received[-1].body  # the fallback does not speak vLLM's extension


def test_pii_analysis_has_a_size_bound_and_a_per_key_bound(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bundle.yaml").write_text(
        "version: 1\ndefaults:\n  pii_redaction:\n    max_chars: 5000\n    entities: {EMAIL_ADDRESS: redact}\n"
    )
    gw = gateway_factory(make_config(upstream), tmp_path / "p")
    big = post(gw, {"model": "mistral-7b", "messages": [{"role": "user", "content": "a " * 3000}]})
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "pii.too_large"
    assert upstream.received == []
    assert (
        post(gw, {"model": "mistral-7b", "messages": [{"role": "user", "content": "a " * 2000}]}).status_code
        == 200
    )


def test_a_client_over_its_rate_limit_is_refused_before_any_pii_analysis(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.pii.analyzer import Analyzer

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bundle.yaml").write_text(  # the shipped order: accounting, then PII
        "version: 1\norder: [token_accounting, pii_redaction]\n"
        "defaults:\n  token_accounting:\n    rate_limits: [{scope: key, rpm: 2}]\n"
        "  pii_redaction:\n    entities: {EMAIL_ADDRESS: redact}\n"
    )
    gw = gateway_factory(make_config(upstream), tmp_path / "p")
    analysed: list[int] = []
    real = Analyzer.analyze

    async def counting(self: Analyzer, texts: Any, **kw: Any) -> Any:
        analysed.append(1)
        return await real(self, texts, **kw)

    monkeypatch.setattr(Analyzer, "analyze", counting)
    key = gw.key()
    body = {"model": "mistral-7b", "messages": [{"role": "user", "content": "mail ann@example.org " * 2000}]}
    import time

    if time.time() % 60 > 50:  # rpm windows are clock minutes: do not straddle one
        time.sleep(61 - time.time() % 60)
    statuses = [
        httpx.post(
            f"{gw.base_url}/chat/completions",
            json=body,
            timeout=10,
            headers={"Authorization": f"Bearer {key}"},
        ).status_code
        for _ in range(4)
    ]
    assert statuses[:2] == [200, 200]
    assert statuses[2:] == [429, 429]
    assert 0 < len(analysed) <= 2 * 2  # request + hop analyses of the two admitted requests only


def test_a_data_class_no_policy_names_is_refused(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bundle.yaml").write_text(
        "version: 1\ndefaults:\n  residency: {allow: [EU], data_classes: {health: [EU]}}\n"
        "tenants:\n  other:\n    residency: {data_classes: {internal: [EU]}}\n"
    )
    gw = gateway_factory(make_config(upstream), tmp_path / "p")
    body = {"model": "mistral-7b", "messages": HELLO}
    assert post(gw, body, headers={"X-Data-Class": "health"}).status_code == 200
    refused = post(gw, body, headers={"X-Data-Class": "secret"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_request.data_class"
    assert "health, internal" in refused.json()["error"]["message"]
    # Named by another tenant's rule: a class this tenant's residency does not list (unknown_data_class).
    assert (
        post(gw, body, headers={"X-Data-Class": "internal"}).json()["error"]["code"]
        == "residency.unknown_data_class"
    )
