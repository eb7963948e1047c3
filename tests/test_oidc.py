"""Sign-in with OpenID Connect, against a real certified provider (panva/oidc-provider on Node.js).

``tests/oidc/provider.mjs`` runs the provider on loopback; tokens come from its token endpoint
(client credentials, with a resource indicator for the audience). One provider shapes its claims
like Keycloak, the other like Auth0. The gateway is configured with ``auth.oidc`` and reached with
the OpenAI SDK, the token as the API key.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import ValidationError

from gateway.config import Config
from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, free_port, make_config

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
AUDIENCE = "https://gateway.execai.example"


class Provider:
    def __init__(self, style: str) -> None:
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("run `npm ci --prefix tests/oidc` (make test does) to install the OpenID provider")
        node = shutil.which("node")
        assert node, "Node.js is needed for the OpenID provider tests"
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [node, str(OIDC_DIR / "provider.mjs"), str(self.port), style],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 20
        for line in self.proc.stdout:
            if line.startswith("ready"):
                break
            assert time.monotonic() < deadline, "the OpenID provider did not start"

    def token(self, client: str = "hr-chatbot", resource: str = AUDIENCE) -> str:
        resp = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client,
                "client_secret": client,
                "resource": resource,
                "scope": "chat embeddings",
            },
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token

    def rotate(self) -> None:
        assert httpx.post(f"{self.issuer}/__rotate", timeout=10).status_code == 204

    def jwks(self) -> bytes:
        return httpx.get(f"{self.issuer}/jwks", timeout=10).content

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def keycloak() -> Iterator[Provider]:
    provider = Provider("keycloak")
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def auth0() -> Iterator[Provider]:
    provider = Provider("auth0")
    yield provider
    provider.stop()


def _issuer(provider: Provider, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": provider.issuer,
        "audience": [AUDIENCE],
        "jwks_url": f"{provider.issuer}/jwks",
        "algorithms": ["ES256"],
        "leeway_s": 0,
        "jwks_refresh_min_s": 0.2,
        "preset": "keycloak",
        **extra,
    }


@pytest.fixture
def gw(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, keycloak: Provider, auth0: Provider
) -> RunningGateway:
    issuers = [
        _issuer(keycloak),
        _issuer(auth0, preset="auth0", namespace="https://execai.example/", models=["mistral-7b"]),
    ]
    return gateway_factory(make_config(upstream, auth={"oidc": issuers}))


def _chat(gw: RunningGateway, token: str) -> Any:
    client = openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(
        model="mistral-7b", messages=[{"role": "user", "content": "hi"}]
    )


def _refusal(gw: RunningGateway, token: str) -> tuple[int, str]:
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert token not in resp.text  # the token is never echoed
    return resp.status_code, resp.json()["error"]["code"]


def _recorded_principal(gw: RunningGateway, request_id: str) -> tuple[str, str, str]:
    """Tenant, app and key id of the request's audit record."""
    from gateway import audit

    deadline = time.monotonic() + 10
    while (row := audit.fetch(gw.gateway.engine, request_id)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return row.tenant, row.app, row.key_id


def test_a_keycloak_token_signs_in_with_its_tenant_and_client(gw: RunningGateway, keycloak: Provider) -> None:
    raw = _chat(gw, keycloak.token())
    assert raw.parse().choices[0].message.content
    tenant, app, key_id = _recorded_principal(gw, raw.headers["x-gateway-request-id"])
    assert (tenant, app) == ("hr", "hr-chatbot")  # Keycloak preset: the app is `azp`
    assert key_id.startswith("oidc-")
    assert len(key_id) <= 32


def test_an_auth0_token_signs_in_through_its_namespaced_claims(gw: RunningGateway, auth0: Provider) -> None:
    raw = _chat(gw, auth0.token())
    tenant, app, _ = _recorded_principal(gw, raw.headers["x-gateway-request-id"])
    assert (tenant, app) == ("hr", "chatbot")


def test_admin_rights_come_from_the_role_claim_and_stay_in_the_tenant(
    gw: RunningGateway, keycloak: Provider
) -> None:
    admin = {"Authorization": f"Bearer {keycloak.token('hr-admin')}"}
    own = httpx.get(f"{gw.url}/admin/keys", headers=admin, timeout=10)
    assert own.status_code == 200, own.text
    other = httpx.get(f"{gw.url}/admin/keys", headers=admin, params={"tenant": "sales"}, timeout=10)
    assert other.status_code == 403
    user = {"Authorization": f"Bearer {keycloak.token()}"}
    assert httpx.get(f"{gw.url}/admin/keys", headers=user, timeout=10).status_code == 403


def _forge(token: str, header: dict[str, Any] | None = None, payload: dict[str, Any] | None = None) -> str:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    def unb64(part: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return out

    h, p, s = token.split(".")
    return ".".join([b64({**unb64(h), **(header or {})}), b64({**unb64(p), **(payload or {})}), s])


def test_each_bad_token_gets_a_401_with_its_own_code(
    gw: RunningGateway,
    keycloak: Provider,
    auth0: Provider,
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
) -> None:
    good = keycloak.token()
    cases = [
        ("oidc.wrong_audience", keycloak.token(resource="https://another-api.example")),
        ("oidc.alg_not_allowed", _forge(good, header={"alg": "none"}).rsplit(".", 1)[0] + "."),
        ("oidc.alg_not_allowed", _forge(good, header={"alg": "HS256"})),  # HMAC keyed with the public key
        ("oidc.bad_signature", _forge(good, payload={"tenant": "sales"})),  # tampered claims
        ("oidc.malformed", "not.a.jwt"),
    ]
    for code, token in cases:
        assert _refusal(gw, token) == (401, code), code
    short = keycloak.token("short-lived")
    time.sleep(2.2)  # its 1 s lifetime, and leeway_s 0
    assert _refusal(gw, short) == (401, "oidc.expired")
    # A real token of an issuer this gateway does not trust.
    only_keycloak = gateway_factory(make_config(upstream, auth={"oidc": [_issuer(keycloak)]}))
    assert _refusal(only_keycloak, auth0.token()) == (401, "oidc.wrong_issuer")


def test_a_key_rotation_at_the_provider_is_followed(gw: RunningGateway, keycloak: Provider) -> None:
    before = keycloak.token()
    assert _chat(gw, before).status_code == 200
    verifier = gw.gateway.oidc
    assert verifier is not None
    keys = verifier.keys[keycloak.issuer]
    fetches = keys.fetches
    keycloak.rotate()
    time.sleep(0.25)  # past jwks_refresh_min_s (0.2 s) since the first fetch
    after = keycloak.token()
    assert _chat(gw, after).status_code == 200  # a new kid: the JWKS is fetched again
    assert keys.fetches == fetches + 1
    # The old key is gone from the provider's JWKS: a token it signed no longer passes, once cached
    # verifications expire (a fresh gateway has none).
    assert json.loads(keycloak.jwks())["keys"][0]["kid"] != _kid(before)
    verifier._verified.clear()
    assert _refusal(gw, before) == (401, "oidc.unknown_kid")
    # Unknown kids do not hammer the provider: one refresh per jwks_refresh_min_s at most.
    fetches, started = keys.fetches, time.monotonic()
    for i in range(20):
        assert _refusal(gw, _forge(after, header={"kid": f"made-up-{i}"})) == (401, "oidc.unknown_kid")
    allowed = int((time.monotonic() - started) / 0.2) + 1  # jwks_refresh_min_s is 0.2 here
    assert keys.fetches - fetches <= min(allowed, 19)


def _kid(token: str) -> str:
    head = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]
    return kid


def test_an_air_gapped_site_reads_the_keys_from_a_file(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, keycloak: Provider, tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(keycloak.jwks())
    issuer = {**_issuer(keycloak), "jwks_url": None, "jwks_file": str(jwks)}
    gw = gateway_factory(make_config(upstream, auth={"oidc": [issuer]}))
    assert _chat(gw, keycloak.token()).status_code == 200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algorithms": ["none"]}, "algorithms.0"),
        ({"algorithms": ["HS256"]}, "algorithms.0"),
        ({"jwks_url": None}, "exactly one of jwks_url and jwks_file"),
        ({"jwks_file": "/etc/jwks.json"}, "exactly one of jwks_url and jwks_file"),
        ({"preset": "auth0"}, "namespace"),
        ({"leeway_s": -1}, "leeway_s"),
    ],
)
def test_unsafe_or_incomplete_issuer_settings_are_refused(
    upstream: DevUpstream, change: dict[str, Any], message: str
) -> None:
    issuer = {
        "issuer": "https://sso.example/realms/execai",
        "audience": [AUDIENCE],
        "jwks_url": "https://sso.example/certs",
        **change,
    }
    with pytest.raises(ValidationError) as exc:
        Config.model_validate(
            {**orjson.loads(make_config(upstream).model_dump_json()), "auth": {"oidc": [issuer]}}
        )
    assert message in str(exc.value)


def test_a_subject_claim_names_the_data_subject_over_the_user_field(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, keycloak: Provider
) -> None:
    from gateway import audit

    issuer = _issuer(keycloak, claims={"subject": "sub"})
    gw = gateway_factory(make_config(upstream, auth={"oidc": [issuer]}))
    client = openai.OpenAI(base_url=gw.base_url, api_key=keycloak.token(), max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-7b", user="someone-else", messages=[{"role": "user", "content": "hi"}]
    )
    request_id = raw.headers["x-gateway-request-id"]
    deadline = time.monotonic() + 10
    while (row := audit.fetch(gw.gateway.engine, request_id)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    token_subject = gw.gateway.pseudonym("hr-chatbot")  # the token's `sub`
    assert gw.gateway.subjects._keys.keys() == {("hr", token_subject)}  # not the body's `user`
    assert row.subject == gw.gateway.subjects.link("hr", token_subject)


def test_missing_claims_and_an_unreachable_jwks_are_told_apart(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, keycloak: Provider, auth0: Provider
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks"  # nothing listens there
    issuers = [
        _issuer(auth0, preset="keycloak"),  # Auth0-shaped claims read with Keycloak's paths: no tenant
        _issuer(keycloak, jwks_url=dead),
    ]
    gw = gateway_factory(make_config(upstream, auth={"oidc": issuers}))
    assert _refusal(gw, auth0.token()) == (401, "oidc.claim_missing")
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {keycloak.token()}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert resp.status_code == 503  # the provider is away: retry, not "your token is bad"
    assert resp.json()["error"]["code"] == "oidc.jwks_unavailable"
    assert resp.headers["retry-after"] == "5"


def test_claim_paths_read_namespaced_names_first_then_nested_objects() -> None:
    from gateway.oidc import _words, claim

    claims = {
        "https://execai.example/tenant": "hr",
        "realm_access": {"roles": ["gateway-admin", {"odd": 1}, 7]},
        "a.b": "top-level wins",
        "a": {"b": "nested"},
        "scope": "chat  embeddings admin",
    }
    assert claim(claims, "https://execai.example/tenant") == "hr"
    assert claim(claims, "a.b") == "top-level wins"
    assert claim(claims, "realm_access.roles") == ["gateway-admin", {"odd": 1}, 7]
    assert claim(claims, "realm_access.missing") is None
    assert claim(claims, "scope.deeper") is None  # a string has no members
    assert claim(claims, None) is None
    assert _words(claim(claims, "realm_access.roles")) == ["gateway-admin"]  # non-strings ignored, no crash
    assert _words(claims["scope"]) == ["chat", "embeddings", "admin"]
    assert _words({"not": "a list"}) == []
