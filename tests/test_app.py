"""HTTP behaviour of the gateway beyond what the SDK exercises."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config, with_secondary


def post(
    gw: RunningGateway, path: str, content: bytes, key: str | None = None, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{gw.url}{path}",
        content=content,
        headers={"Authorization": f"Bearer {key or gw.key()}", **headers},
        timeout=10,
    )


def test_malformed_json_is_a_400_in_openai_format(gw: RunningGateway) -> None:
    resp = post(gw, "/v1/chat/completions", b"{not json")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_json"
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_body_must_be_an_object(gw: RunningGateway) -> None:
    resp = post(gw, "/v1/chat/completions", b"[1, 2]")
    assert resp.status_code == 400


def test_oversized_body_is_a_413(gateway_factory, upstream: DevUpstream) -> None:
    gw = gateway_factory(
        make_config(upstream, server={"max_body_bytes": 2048, "policies_dir": "/nonexistent"})
    )
    big = b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "' + b"x" * 4096 + b'"}]}'
    resp = post(gw, "/v1/chat/completions", big)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_oversized_chunked_body_is_a_413_too(gateway_factory, upstream: DevUpstream) -> None:
    gw = gateway_factory(
        make_config(upstream, server={"max_body_bytes": 2048, "policies_dir": "/nonexistent"})
    )

    def chunks():
        yield b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1024
        yield b'"}]}'

    resp = httpx.post(
        f"{gw.url}/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {gw.key()}"},
        timeout=10,
    )
    assert resp.status_code == 413


def test_unknown_path_is_a_404_and_wrong_method_a_405(gw: RunningGateway) -> None:
    assert httpx.get(f"{gw.url}/v1/nothing").status_code == 404
    resp = httpx.get(f"{gw.url}/v1/chat/completions")
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == "method_not_allowed"


def test_healthz_readyz_and_metrics(gw: RunningGateway) -> None:
    assert httpx.get(f"{gw.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gw.url}/readyz").json()
    assert ready["status"] == "ready"
    assert ready["checks"]["database"] == "ok"
    assert len(ready["policy_bundle"]) == 16
    post(
        gw,
        "/v1/chat/completions",
        b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]}',
    )
    text = httpx.get(f"{gw.url}/metrics").text
    assert (
        'gateway_requests_total{app="chat",deployment="eu-primary",endpoint="chat",jurisdiction="EU",'
        'model="mistral-7b"' in text
    )
    assert "gateway_overhead_seconds_bucket" in text


def test_subject_ids_never_reach_metrics_or_headers(gw: RunningGateway) -> None:
    resp = post(
        gw,
        "/v1/chat/completions",
        b'{"model": "mistral-7b", "user": "jane.doe@example.com", "messages": [{"role": "user", "content": "x"}]}',
    )
    assert resp.status_code == 200
    assert "jane.doe" not in str(resp.headers)
    assert "jane.doe" not in httpx.get(f"{gw.url}/metrics").text


def test_client_disconnect_mid_stream_cancels_the_upstream_request(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    upstream.chunks = 40
    upstream.chunk_delay_s = 0.05
    key = gw.key()
    body = b'{"model": "mistral-7b", "stream": true, "messages": [{"role": "user", "content": "long story"}]}'
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    first = sock.recv(65536)
    assert b"200 OK" in first
    sock.close()
    deadline = time.monotonic() + 5
    while upstream.streams_aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    upstream.chunks = 5
    assert upstream.streams_aborted == 1
    assert upstream.streams_completed == 0


def test_fallback_to_next_deployment_before_first_byte(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream
) -> None:
    gw = gateway_factory(with_secondary(upstream, upstream_b))
    upstream.fail_status = 503
    resp = post(
        gw, "/v1/chat/completions", b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]}'
    )
    assert resp.status_code == 200
    assert resp.headers["x-gateway-deployment"] == "eu-secondary"
    assert resp.headers["x-gateway-fallback"] == "upstream_5xx"
    assert resp.json()["choices"][0]["message"]["content"] == upstream_b.reply


def test_connect_error_falls_back_and_unreachable_only_is_a_502(
    gateway_factory, upstream: DevUpstream
) -> None:
    config = make_config(upstream)
    deployments = dict(config.model_dump()["deployments"])
    deployments["dead"] = {**deployments["eu-primary"], "base_url": "http://127.0.0.1:9/v1"}
    gw = gateway_factory(
        make_config(
            upstream,
            deployments=deployments,
            models={
                "mistral-7b": {"deployments": ["dead", "eu-primary"]},
                "dead-only": {"deployments": ["dead"]},
            },
        )
    )
    ok = post(
        gw, "/v1/chat/completions", b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]}'
    )
    assert ok.status_code == 200
    assert ok.headers["x-gateway-fallback"] == "connect_error"
    bad = post(
        gw, "/v1/chat/completions", b'{"model": "dead-only", "messages": [{"role": "user", "content": "x"}]}'
    )
    assert bad.status_code == 502
    assert "127.0.0.1:9" not in bad.text


def test_upstream_client_errors_are_not_retried(
    gateway_factory, upstream: DevUpstream, upstream_b: DevUpstream
) -> None:
    gw = gateway_factory(with_secondary(upstream, upstream_b))
    upstream.fail_status = 400
    upstream.fail_body = b'{"error": {"message": "temperature must be <= 2 (see http://internal:8000)"}}'
    resp = post(
        gw, "/v1/chat/completions", b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]}'
    )
    assert resp.status_code == 400
    assert "internal:8000" not in resp.text
    assert "temperature must be" in resp.text
    assert upstream_b.received == []


def test_revoked_key_stops_working_within_five_seconds(gw: RunningGateway) -> None:
    from gateway import auth

    key = gw.key()
    body = b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]}'
    assert post(gw, "/v1/chat/completions", body, key).status_code == 200
    key_id = key.removeprefix("sk-gw-").split("-")[0]
    assert auth.revoke_key(gw.gateway.engine, key_id)
    revoked_at = time.monotonic()
    while post(gw, "/v1/chat/completions", body, key).status_code == 200:
        assert time.monotonic() - revoked_at < 5
        time.sleep(0.1)
    assert post(gw, "/v1/chat/completions", body, key).status_code == 401


@pytest.mark.parametrize("header", ["", "Basic abc", "Bearer sk-gw-short", "Bearer sk-gw-0123456789ab-wrong"])
def test_bad_authorization_headers_are_401(gw: RunningGateway, header: str) -> None:
    resp = httpx.post(f"{gw.url}/v1/chat/completions", content=b"{}", headers={"Authorization": header})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"


def test_admin_api_needs_admin_scope_and_manages_keys(gw: RunningGateway) -> None:
    user = gw.key()
    assert httpx.get(f"{gw.url}/admin/keys", headers={"Authorization": f"Bearer {user}"}).status_code == 403
    admin = {"Authorization": f"Bearer {gw.key(tenant='hr', scopes=('admin',))}"}
    created = httpx.post(
        f"{gw.url}/admin/keys", headers=admin, json={"tenant": "hr", "app": "bot", "models": ["mistral-7b"]}
    )
    assert created.status_code == 201
    new_key = created.json()["key"]
    listed = httpx.get(f"{gw.url}/admin/keys?tenant=hr", headers=admin).json()
    assert created.json()["key_id"] in [k["key_id"] for k in listed]
    assert {k["tenant"] for k in listed} == {"hr"}
    assert "key" not in listed[0]
    assert "secret_hash" not in listed[0]
    assert (
        post(
            gw,
            "/v1/chat/completions",
            b'{"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]}',
            new_key,
        ).status_code
        == 200
    )
    assert httpx.delete(f"{gw.url}/admin/keys/{created.json()['key_id']}", headers=admin).status_code == 204
    bad = httpx.post(
        f"{gw.url}/admin/keys", headers=admin, json={"tenant": "hr", "app": "bot", "scopes": ["root"]}
    )
    assert bad.status_code == 400
    assert "root" in bad.json()["error"]["message"]


def test_the_gateway_rag_extension_never_reaches_an_upstream(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    resp = post(
        gw,
        "/v1/chat/completions",
        b'{"model": "mistral-7b", "gateway_rag": {"top_k": 2}, '
        b'"messages": [{"role": "user", "content": "x"}]}',
    )
    assert resp.status_code == 200
    assert "gateway_rag" not in upstream.received[-1].body
