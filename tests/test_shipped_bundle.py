"""The shipped configuration, end to end: config.yaml and policies/ as shipped, through the OpenAI SDK.

The real gateway runs with the repository's ``config.yaml`` (loaded by ``load_config``; only the
deployments' base URLs, from their documented environment variables, and the storage differ) and
the repository's ``policies/`` directory, unchanged. Three recording loopback upstreams stand in
for the self-hosted Mistral (EU), the Mistral API (EU) and OpenAI GPT-4 (US); every test checks
the JSON body each of them actually received.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.config import Config, Storage, load_config
from gateway.dev import DevUpstream
from tests.conftest import RunningGateway

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "config.yaml"
SHIPPED_POLICIES = REPO / "policies"

PURPOSE = "llm_fallback_gpt4"
SUBJECT = "emp-0042"  # the employee who consented; the raw id must never leave the gateway
US_REPLY = "Answer from GPT-4 in the US."

NAME = "Maria Schneider"
EMAIL = "maria.schneider@example.de"
PHONE = "+49 30 1234567"
IBAN = "DE89 3704 0044 0532 0130 00"
CARD = "4111 1111 1111 1111"
VAT = "DE136695976"
IP = "192.0.2.17"
SSN = "078-05-1120"

FULL_PROMPT = (
    f"Draft a reply to {NAME}: mail {EMAIL} or {PHONE}, pay {IBAN} with card {CARD}, VAT {VAT}, from {IP}"
)
# Every spelling of each identifier the US hop must not see: as written, without spaces, and the
# card's leading digits (a masked card would still show them).
NEVER_IN_THE_US = (
    NAME,
    "Schneider",
    "schneider",
    EMAIL,
    PHONE,
    "+49301234567",
    "1234567",
    IBAN,
    IBAN.replace(" ", ""),
    "3704 0044",
    CARD,
    CARD.replace(" ", ""),
    "4111 1111",
    "4111",
    VAT,
    "136695976",
    IP,
)
# Placeholders proving the prompt did reach the US hop, redacted.
US_PLACEHOLDERS = (
    "<PERSON_1>",
    "<EMAIL_ADDRESS_1>",
    "<PHONE_NUMBER_1>",
    "<IBAN_CODE_1>",
    "<CREDIT_CARD_1>",
    "<EU_VAT_1>",
    "<IP_ADDRESS_1>",
)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _us_server() -> Iterator[DevUpstream]:
    server = DevUpstream(reply=US_REPLY).start()
    yield server
    server.stop()


@pytest.fixture(name="upstream_us")
def upstream_us_fixture(_us_server: DevUpstream) -> DevUpstream:
    """The third recording upstream: OpenAI GPT-4 in the US (reset for every test)."""
    _us_server.reset()
    return _us_server


@pytest.fixture(name="shipped_config")
def shipped_config_fixture(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    upstream_us: DevUpstream,
) -> Config:
    """config.yaml as shipped, its deployments pointed at the loopback upstreams through its env vars."""
    monkeypatch.setenv("MISTRAL_7B_URL", upstream.url)
    monkeypatch.setenv("MISTRAL_API_URL", upstream_b.url)
    monkeypatch.setenv("OPENAI_BASE_URL", upstream_us.url)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", upstream_b.base)  # gpt-4o in Sweden Central
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-test-azure")
    monkeypatch.setenv("MISTRAL_7B_API_KEY", "sk-test-selfhosted")
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-test-mistral")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")
    monkeypatch.setenv("GATEWAY_SECRET", "shipped-bundle-test-secret")
    for name in ("DATABASE_URL", "REDIS_URL", "MISTRAL_7B_MODEL"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(SHIPPED_CONFIG)
    deployments = config.deployments
    assert deployments["mistral-7b-selfhosted"].base_url == upstream.url
    assert deployments["mistral-api"].base_url == upstream_b.url
    assert deployments["openai-gpt4"].base_url == upstream_us.url
    assert deployments["azure-gpt4o-swedencentral"].base_url == upstream_b.base
    assert deployments["openai-gpt4"].jurisdiction == "US"
    assert config.models["mistral-7b"].deployments == ["mistral-7b-selfhosted", "mistral-api"]
    storage = Storage(
        database_url=f"sqlite:///{tmp_path / 'shipped.db'}", redis_url=None, spool_dir=str(tmp_path / "spool")
    )
    server = config.server.model_copy(update={"policies_dir": str(SHIPPED_POLICIES)})
    return config.model_copy(update={"storage": storage, "server": server})


@pytest.fixture(name="gw")
def shipped_gw(gateway_factory: Callable[..., RunningGateway], shipped_config: Config) -> RunningGateway:
    return gateway_factory(shipped_config, SHIPPED_POLICIES)


# --- helpers ----------------------------------------------------------------------------------


def client(gw: RunningGateway, *, tenant: str = "hr", app: str = "chatbot") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.base_url, api_key=gw.key(tenant=tenant, app=app), max_retries=0, timeout=30
    )


def grant(gw: RunningGateway, *, tenant: str = "hr", subject: str = SUBJECT, purpose: str = PURPOSE) -> None:
    admin = {"Authorization": f"Bearer {gw.key(tenant='ops', app='admin', scopes=('global_admin',))}"}
    resp = httpx.post(
        f"{gw.url}/admin/consents",
        headers=admin,
        timeout=10,
        json={"tenant": tenant, "subject_id": subject, "purpose": purpose, "evidence_ref": "form-17"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["subject"] != subject  # only the pseudonym is stored


def eu_down(*eu: DevUpstream) -> None:
    for server in eu:
        server.fail_status = 503


def sent(server: DevUpstream) -> list[str]:
    """What the upstream received: each request's JSON body, serialised."""
    return [json.dumps(r.body, ensure_ascii=False) for r in server.received]


def user_message(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), dict), body
    return body["error"]


def assert_no_identifier(body: str) -> None:
    leaked = [value for value in NEVER_IN_THE_US if value in body]
    assert not leaked, f"identifiers sent to the US: {leaked}"
    missing = [p for p in US_PLACEHOLDERS if p not in body]
    assert not missing, f"the US hop did not get the redacted prompt (missing {missing}): {body}"


# --- 1. the normal EU path ----------------------------------------------------------------------


def test_the_hr_chatbot_is_answered_in_the_eu_with_placeholders_for_identifiers(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream
) -> None:
    grant(gw)  # consent changes nothing while the EU answers
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mistral-7b",
        user=SUBJECT,
        messages=user_message(f"Write to {NAME} ({EMAIL}, {PHONE}) about the refund to {IBAN}"),
    )
    completion = raw.parse()
    assert raw.headers["x-gateway-deployment"] == "mistral-7b-selfhosted"
    assert raw.headers["x-gateway-jurisdiction"] == "EU"
    assert completion.choices[0].message.content == upstream.reply
    [body] = sent(upstream)
    for value in (EMAIL, PHONE, "+49301234567", IBAN, IBAN.replace(" ", "")):
        assert value not in body
    for placeholder in ("<EMAIL_ADDRESS_1>", "<PHONE_NUMBER_1>", "<IBAN_CODE_1>"):
        assert placeholder in body
    assert NAME in body  # the bundle lets names through to EU hops only; the US test relies on that
    assert upstream.received[0].headers["authorization"] == "Bearer sk-test-selfhosted"
    assert upstream_b.received == []
    assert upstream_us.received == []


# --- 2. EU down, consent given: GPT-4 in the US, with nothing identifying ------------------------


def test_consented_fallback_sends_no_identifier_to_the_us(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream
) -> None:
    grant(gw)
    eu_down(upstream, upstream_b)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mistral-7b", user=SUBJECT, messages=user_message(FULL_PROMPT)
    )
    completion = raw.parse()
    assert raw.headers["x-gateway-deployment"] == "openai-gpt4"
    assert raw.headers["x-gateway-jurisdiction"] == "US"
    assert raw.headers["x-gateway-fallback"] == "upstream_5xx"
    assert completion.choices[0].message.content == US_REPLY
    assert len(upstream.received) == 1
    assert len(upstream_b.received) == 1
    [body] = sent(upstream_us)
    assert_no_identifier(body)
    assert upstream_us.received[0].body["model"] == "gpt-4o"
    assert upstream_us.received[0].headers["authorization"] == "Bearer sk-test-openai"
    assert NAME in sent(upstream)[0]  # the same prompt did carry the name to the EU hop


def test_consented_streaming_fallback_sends_no_identifier_to_the_us(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream
) -> None:
    grant(gw)
    eu_down(upstream, upstream_b)
    with client(gw).chat.completions.with_streaming_response.create(
        model="mistral-7b", user=SUBJECT, messages=user_message(FULL_PROMPT), stream=True
    ) as response:
        assert response.headers["x-gateway-deployment"] == "openai-gpt4"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
    assert text == US_REPLY
    assert len(upstream.received) == 1
    assert len(upstream_b.received) == 1
    [body] = sent(upstream_us)
    assert upstream_us.received[0].body["stream"] is True
    assert_no_identifier(body)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_consented_fallback_does_not_forward_the_raw_subject_id_to_the_us(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream, stream: bool
) -> None:
    grant(gw)
    eu_down(upstream, upstream_b)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="mistral-7b", user=SUBJECT, messages=user_message("When does my leave start?"), stream=stream
    )
    assert raw.headers["x-gateway-deployment"] == "openai-gpt4"
    answer = raw.parse()
    if isinstance(answer, openai.Stream):
        text = "".join(chunk.choices[0].delta.content or "" for chunk in answer if chunk.choices)
    else:
        text = answer.choices[0].message.content or ""
    assert text == US_REPLY
    [body] = sent(upstream_us)
    assert "When does my leave start?" in body
    assert SUBJECT not in body, (
        f"the raw subject id reached the US: user={upstream_us.received[0].body.get('user')!r}"
    )


# --- 3. a blocked type stays blocked on the fallback path ----------------------------------------


def test_a_us_ssn_is_refused_on_the_consented_fallback_path(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream
) -> None:
    grant(gw)
    eu_down(upstream, upstream_b)
    sdk = client(gw)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(
            model="mistral-7b", user=SUBJECT, messages=user_message(f"My SSN is {SSN}")
        )
    assert refused.value.status_code == 400
    error = error_of(refused.value)
    assert error["code"] == "pii.blocked"
    assert "US_SSN" in error["message"]
    assert SSN not in refused.value.response.text
    assert upstream_us.received == []
    assert upstream.received == []
    assert upstream_b.received == []
    # Control: without the SSN, the same subject and key do reach the US.
    completion = sdk.chat.completions.create(
        model="mistral-7b", user=SUBJECT, messages=user_message("My leave?")
    )
    assert completion.choices[0].message.content == US_REPLY
    assert len(upstream_us.received) == 1
    assert SSN not in "".join(sent(upstream_us) + sent(upstream) + sent(upstream_b))


# --- 4. no consent: a 503 that says why, and nothing in the US ----------------------------------


@pytest.mark.parametrize(
    "who",
    ["subject_without_consent", "consent_in_another_tenant", "consent_for_another_purpose", "no_subject"],
)
def test_without_consent_the_fallback_is_refused_with_consent_required(
    gw: RunningGateway, upstream: DevUpstream, upstream_b: DevUpstream, upstream_us: DevUpstream, who: str
) -> None:
    grant(gw)  # SUBJECT has consent; the request below names someone else, or nobody
    other = "emp-0099"
    if who == "consent_in_another_tenant":
        grant(gw, tenant="finance", subject=other)
    elif who == "consent_for_another_purpose":
        grant(gw, subject=other, purpose="analytics")
    eu_down(upstream, upstream_b)
    sdk = client(gw)
    extra: dict[str, Any] = {} if who == "no_subject" else {"user": other}
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model="mistral-7b", messages=user_message(f"Call me at {PHONE}"), **extra)
    assert refused.value.status_code == 503
    assert error_of(refused.value)["code"] == "consent.required"
    assert refused.value.response.headers.get("retry-after", "").isdigit()
    assert len(upstream.received) == 1
    assert len(upstream_b.received) == 1
    assert upstream_us.received == []
    # Control: the consented subject, on the same gateway and key, does reach the US.
    completion = sdk.chat.completions.create(model="mistral-7b", user=SUBJECT, messages=user_message("hello"))
    assert completion.choices[0].message.content == US_REPLY
    assert len(upstream_us.received) == 1


# --- 5. tenants without the DPA fallback never leave the EU --------------------------------------


@pytest.mark.parametrize(("tenant", "app"), [("finance", "reports"), ("hr", "payroll")])
def test_a_tenant_without_the_dpa_fallback_never_reaches_the_us_even_with_consent(
    gw: RunningGateway,
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    upstream_us: DevUpstream,
    tenant: str,
    app: str,
) -> None:
    grant(gw, tenant=tenant)
    grant(gw, tenant="hr")
    eu_down(upstream, upstream_b)
    with pytest.raises(openai.APIStatusError) as failed:
        client(gw, tenant=tenant, app=app).chat.completions.create(
            model="mistral-7b", user=SUBJECT, messages=user_message("Summarise the Q3 report")
        )
    # The EU failure itself, as for any tenant without a fallback (bundle_test.yaml: upstream_5xx).
    assert failed.value.status_code == 502
    assert error_of(failed.value)["code"] == "upstream_5xx"
    assert "sk-internal-secret" not in failed.value.response.text  # the upstream's error text stays inside
    assert len(upstream.received) == 1
    assert len(upstream_b.received) == 1
    assert upstream_us.received == []
    # Control: the hr chatbot, same subject, same gateway, does fall back to the US.
    completion = client(gw).chat.completions.create(
        model="mistral-7b", user=SUBJECT, messages=user_message("hi")
    )
    assert completion.choices[0].message.content == US_REPLY
    assert len(upstream_us.received) == 1
