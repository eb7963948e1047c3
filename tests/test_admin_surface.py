"""The admin surface: bounded bodies before authentication, no public docs, OpenAI-shaped errors, clean inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config

ROOT = Path(__file__).resolve().parent.parent


def admin_headers(gw: RunningGateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.key(scopes=('admin',))}"}


def test_an_unauthenticated_oversized_admin_body_is_refused_before_it_is_read(gw: RunningGateway) -> None:
    resp = httpx.post(
        f"{gw.url}/admin/keys",
        content=b"x" * (2 * 1024 * 1024),
        timeout=10,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_a_chunked_admin_body_is_bounded_as_it_arrives(gw: RunningGateway) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB, no Content-Length

    resp = httpx.post(f"{gw.url}/admin/keys", content=chunks(), timeout=10)
    assert resp.status_code == 413


@pytest.mark.parametrize(
    "path", ["/admin/docs", "/admin/openapi.json", "/docs", "/openapi.json", "/admin/nope"]
)
def test_no_admin_documentation_is_public_and_unknown_paths_answer_in_openai_shape(
    gw: RunningGateway, path: str
) -> None:
    resp = httpx.get(f"{gw.url}{path}", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_the_admin_schema_is_served_only_to_admin_keys_when_enabled(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    gw = gateway_factory(make_config(upstream, server={"policies_dir": "/nonexistent", "admin_docs": True}))
    assert httpx.get(f"{gw.url}/admin/openapi.json", timeout=10).status_code == 401
    chat_key = httpx.get(
        f"{gw.url}/admin/openapi.json", headers={"Authorization": f"Bearer {gw.key()}"}, timeout=10
    )
    assert chat_key.status_code == 403
    schema = httpx.get(f"{gw.url}/admin/openapi.json", headers=admin_headers(gw), timeout=10).json()
    assert "/admin/keys" in schema["paths"]


@pytest.mark.parametrize(
    "body",
    [
        {"tenant": "hr\x00", "app": "a"},
        {"tenant": "hr", "app": "a", "name": "bad\x00name"},
        {"tenant": "hr", "app": "a", "models": ["mistral 7b; drop"]},
        {"tenant": "hr", "app": "a", "scopes": ["chat\x00"]},
    ],
)
def test_admin_inputs_with_nul_bytes_or_bad_names_get_a_400(
    gw: RunningGateway, body: dict[str, object]
) -> None:
    resp = httpx.post(f"{gw.url}/admin/keys", json=body, headers=admin_headers(gw), timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "\x00" not in resp.text


def test_serve_refuses_to_start_without_a_real_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_SECRET", raising=False)
    result = CliRunner().invoke(app, ["serve", "--config", str(ROOT / "config.yaml")])
    assert result.exit_code == 2
    assert "must be at least 32 bytes outside --dev" in result.output
    assert "GATEWAY_SECRET=" in result.output
    monkeypatch.setenv("GATEWAY_SECRET", "too-short")
    assert CliRunner().invoke(app, ["serve", "--config", str(ROOT / "config.yaml")]).exit_code == 2


def test_an_admin_key_manages_only_its_own_tenant(gw: RunningGateway) -> None:
    from gateway import auth

    hr = {"Authorization": f"Bearer {gw.key(tenant='hr', scopes=('admin',))}"}
    _, finance_row = auth.create_key(
        gw.gateway.engine, tenant="finance", app="a", models=["*"], scopes=["chat"]
    )
    own = httpx.post(f"{gw.url}/admin/keys", headers=hr, json={"tenant": "hr", "app": "bot"})
    assert own.status_code == 201
    foreign = [
        httpx.get(f"{gw.url}/admin/keys", headers=hr, params={"tenant": "finance"}),
        httpx.post(
            f"{gw.url}/admin/keys",
            headers=hr,
            json={"tenant": "finance", "app": "x", "models": ["*"], "scopes": ["admin"]},
        ),
        httpx.delete(f"{gw.url}/admin/keys/{finance_row.key_id}", headers=hr),
        httpx.post(
            f"{gw.url}/admin/consents",
            headers=hr,
            json={"tenant": "marketing", "subject_id": "s", "purpose": "llm_fallback_gpt4"},
        ),
        httpx.delete(
            f"{gw.url}/admin/consents",
            headers=hr,
            params={"tenant": "marketing", "subject_id": "s", "purpose": "llm_fallback_gpt4"},
        ),
        httpx.get(f"{gw.url}/admin/consents", headers=hr, params={"tenant": "marketing"}),
        httpx.post(
            f"{gw.url}/admin/keys", headers=hr, json={"tenant": "hr", "app": "x", "scopes": ["global_admin"]}
        ),
    ]
    for resp in foreign:
        assert resp.status_code == 403, (resp.request.method, resp.request.url, resp.text)
        assert resp.json()["error"]["code"] == "admin.tenant_forbidden"
    # Without a tenant filter, an hr admin sees hr's keys only; the finance key is still active.
    listed = httpx.get(f"{gw.url}/admin/keys", headers=hr).json()
    assert {k["tenant"] for k in listed} == {"hr"}
    assert auth.get_key(gw.gateway.engine, finance_row.key_id).revoked_at is None  # type: ignore[union-attr]


def test_an_admin_key_cannot_read_another_tenants_audit_record(gw: RunningGateway) -> None:
    from gateway import audit

    finance_user = gw.key(tenant="finance")
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {finance_user}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    request_id = resp.headers["x-gateway-request-id"]
    hr = {"Authorization": f"Bearer {gw.key(tenant='hr', scopes=('admin',))}"}
    finance = {"Authorization": f"Bearer {gw.key(tenant='finance', scopes=('admin',))}"}
    import time

    deadline = time.monotonic() + 5
    while audit.fetch(gw.gateway.engine, request_id) is None:  # the writer flushes in the background
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(f"{gw.url}/admin/audit/{request_id}", headers=finance).status_code == 200
    refused = httpx.get(f"{gw.url}/admin/audit/{request_id}", headers=hr)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin.tenant_forbidden"
    glob = {"Authorization": f"Bearer {gw.key(tenant='ops', scopes=('global_admin',))}"}
    assert httpx.get(f"{gw.url}/admin/audit/{request_id}", headers=glob).status_code == 200


def test_a_database_outage_gives_503_with_retry_after_for_unknown_keys_not_500(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, postgres_url: str
) -> None:
    from tests.tcpproxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", 5432).start()
    try:
        url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        gw = gateway_factory(make_config(upstream, storage={"database_url": url}))
        known = gw.key()
        unknown = gw.key()  # valid, but never used: this worker has not cached it
        hello = {"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]}
        assert (
            httpx.post(
                f"{gw.base_url}/chat/completions",
                json=hello,
                timeout=10,
                headers={"Authorization": f"Bearer {known}"},
            ).status_code
            == 200
        )
        proxy.cut()
        assert (
            httpx.post(
                f"{gw.base_url}/chat/completions",
                json=hello,
                timeout=10,
                headers={"Authorization": f"Bearer {known}"},
            ).status_code
            == 200
        )
        for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/admin/keys", "GET")):
            resp = httpx.request(
                method,
                f"{gw.url}{path}",
                json=hello if method == "POST" else None,
                timeout=15,
                headers={"Authorization": f"Bearer {unknown}"},
            )
            assert resp.status_code == 503, (path, resp.text)
            assert resp.headers["retry-after"]
            assert resp.json()["error"]["type"] == "server_error"
    finally:
        proxy.stop()
