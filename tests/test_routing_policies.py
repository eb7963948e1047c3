"""residency and consent_fallback hook by hook, with exact decisions (gateway/policies/).

The end-to-end tests (test_policy_residency.py, test_consent_cases.py, test_shipped_bundle.py)
show where requests go; these pin each policy's own answers: the candidate list it leaves, the
decision it records, the refusal it raises or withholds, and what `gateway policy check` is told
a layer loosens.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.auth import Principal
from gateway.chain import Chain
from gateway.config import Config, Deployment
from gateway.errors import PolicyDenied
from gateway.policies.consent_fallback import ConsentFallback
from gateway.policies.residency import Residency
from gateway.policy import Context, Policy, Target
from gateway.services import Services
from gateway.store.consent import ConsentRef


def deployment(jurisdiction: str) -> Deployment:
    return Deployment(
        kind="openai_compatible",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        jurisdiction=jurisdiction,
        region="x",
    )


EU, CH, US = (Target(name, deployment(j)) for name, j in (("eu-1", "EU"), ("ch-1", "CH"), ("us-gpt4", "US")))


def context(
    *candidates: Target,
    subject: str | None = "pseudo-1",
    data_class: str | None = None,
    endpoint: Any = "chat",
    model: str = "mistral-7b",
) -> Context:
    return Context(
        principal=Principal("k1", "acme", "chat", frozenset(), frozenset()),
        endpoint=endpoint,
        model=model,
        candidates=list(candidates),
        subject=subject,
        data_class=data_class,
    )


def decisions(ctx: Context) -> list[tuple[str, str, dict[str, Any]]]:
    return [(d.policy, d.action, d.facts) for d in ctx.decisions]


# --- residency ----------------------------------------------------------------------------------


def residency(**config: Any) -> Residency:
    return Residency(Residency.Config(**config))


async def shadowed(policy: Policy[Any], ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` through a chain that runs ``policy`` in shadow mode."""
    return await Chain([policy], shadow=[policy]).start(ctx).request(request)


async def test_residency_keeps_allowed_hops_and_records_what_it_removed() -> None:
    ctx = context(EU, US, CH)
    await residency(allow=["EU", "CH"]).on_request(ctx, {})
    assert ctx.candidates == [EU, CH]
    assert ctx.allowed_jurisdictions == frozenset({"EU", "CH"})
    assert decisions(ctx) == [
        ("residency", "narrow", {"allowed": ["CH", "EU"], "removed": ["us-gpt4"], "data_class": None})
    ]
    ctx = context(EU)
    await residency().on_request(ctx, {})
    assert decisions(ctx) == [("residency", "allow", {"allowed": ["EU"], "removed": [], "data_class": None})]


async def test_residency_keeps_a_hop_consent_fallback_admitted_whatever_the_order() -> None:
    ctx = context(EU, US)
    ctx.consents["us-gpt4"] = "consent-1"
    await residency().on_request(ctx, {})
    assert ctx.candidates == [EU, US]
    assert await residency().on_attempt(ctx, US, {"a": 1}) == {"a": 1}


async def test_residency_refuses_when_nothing_is_left_and_in_shadow_only_records() -> None:
    with pytest.raises(PolicyDenied) as refused:
        await residency().on_request(context(US, model="gpt-4o"), {})
    assert (refused.value.status, refused.value.code) == (403, "residency.no_allowed_deployment")
    assert refused.value.message == "No deployment of model 'gpt-4o' is in an allowed jurisdiction (EU)."
    ctx = context(EU, US)
    assert await shadowed(residency(), ctx, {"r": 1}) == {"r": 1}
    assert ctx.candidates == [EU, US]
    assert ctx.allowed_jurisdictions is None
    assert decisions(ctx)[0][1] == "would_narrow"
    ctx = context(US, model="gpt-4o")
    await shadowed(residency(), ctx, {})
    assert [d[1] for d in decisions(ctx)] == ["would_narrow", "would_deny"]
    assert decisions(ctx)[1][2]["code"] == "residency.no_allowed_deployment"


async def test_residency_uses_the_data_class_and_stores_only_named_classes() -> None:
    policy = residency(allow=["EU", "CH"], data_classes={"health": ["EU"]}, unknown_data_class="default")
    ctx = context(EU, CH, data_class="health")
    await policy.on_request(ctx, {})
    assert ctx.candidates == [EU]
    assert decisions(ctx)[0][2]["data_class"] == "health"
    ctx = context(EU, CH, data_class="jane.doe@example.org")  # a header value is never stored as sent
    await policy.on_request(ctx, {})
    assert ctx.candidates == [EU, CH]
    assert decisions(ctx)[0][2]["data_class"] == "unlisted"
    with pytest.raises(PolicyDenied) as refused:
        await residency(data_classes={"health": ["EU"]}).on_request(context(EU, data_class="other"), {})
    assert (refused.value.status, refused.value.code) == (403, "residency.unknown_data_class")


def test_allowed_by_each_kind_of_data_class() -> None:
    cfg = Residency.Config(allow=["EU", "CH"], data_classes={"health": ["EU"]})
    assert Residency.allowed_by(cfg, None) == frozenset({"EU", "CH"})
    assert Residency.allowed_by(cfg, "health") == frozenset({"EU"})
    assert Residency.allowed_by(cfg, "other") is None
    default = cfg.model_copy(update={"unknown_data_class": "default"})
    assert Residency.allowed_by(default, "other") == frozenset({"EU", "CH"})
    assert Residency.header_values(cfg) == {"x-data-class": frozenset({"health"})}


async def test_residency_vetoes_each_hop_outside_the_allowed_set() -> None:
    ctx = context(EU, US)
    await residency().on_attempt(ctx, US, {})  # not narrowed (residency not in the chain): no veto
    ctx.allowed_jurisdictions = frozenset({"EU"})
    assert await residency().on_attempt(ctx, EU, {"x": 1}) == {"x": 1}
    with pytest.raises(PolicyDenied) as refused:
        await residency().on_attempt(ctx, US, {})
    assert (refused.value.status, refused.value.code) == (403, "residency.hop_outside_jurisdiction")
    assert "'us-gpt4'" in refused.value.message


def loosened_residency(
    before: dict[str, Any] | None, after: dict[str, Any]
) -> list[tuple[tuple[Any, ...], str]]:
    return Residency.loosened(
        None if before is None else Residency.Config(**before), Residency.Config(**after)
    )


def test_residency_reports_each_way_a_layer_widens_it() -> None:
    assert loosened_residency(None, {"allow": ["US"]}) == []
    assert loosened_residency({"allow": ["EU"]}, {"allow": ["EU"]}) == []
    assert loosened_residency({"allow": ["EU", "CH"]}, {"allow": ["EU"]}) == []  # narrower is fine
    assert loosened_residency({"allow": ["EU"]}, {"allow": ["EU", "US", "CH"]}) == [
        (("allow",), "also allows CH, US")
    ]
    assert loosened_residency(
        {"allow": ["EU"], "data_classes": {"health": ["EU"]}},
        {"allow": ["EU"], "data_classes": {"health": ["EU", "US"]}},
    ) == [(("data_classes", "health"), "data class 'health' also allows US")]
    assert loosened_residency({"allow": ["EU"]}, {"allow": ["EU"], "unknown_data_class": "default"}) == [
        (("unknown_data_class",), "unlisted data classes now go to EU")
    ]
    assert loosened_residency({"allow": ["EU"]}, {"allow": ["EU"], "strict": False}) == [
        (("strict",), "strict residency turned off")
    ]
    assert loosened_residency({"allow": ["EU"], "strict": False}, {"allow": ["EU"], "strict": True}) == []


# --- consent_fallback ---------------------------------------------------------------------------


class Registry:
    def __init__(self, consent: ConsentRef | None = None, fails: bool = False) -> None:
        self.consent, self.fails = consent, fails
        self.asked: list[tuple[str, str, str]] = []

    async def active(self, tenant: str, subject: str, purpose: str) -> ConsentRef | None:
        self.asked.append((tenant, subject, purpose))
        if self.fails:
            raise ConnectionError("registry down")
        return self.consent


CONSENT = ConsentRef(
    id="consent-42", purpose="llm_fallback_gpt4", expires_at=datetime(2030, 1, 1, tzinfo=UTC)
)


def fallback(registry: Registry | None = None, **config: Any) -> ConsentFallback:
    config.setdefault("target", "us-gpt4")
    cfg = Config.model_validate({"deployments": {"us-gpt4": US.deployment.model_dump()}, "models": {}})
    services = Services(config=cfg, consents=registry or Registry(CONSENT))
    return ConsentFallback(ConsentFallback.Config(**config), services=services)


async def test_a_subject_with_consent_gets_the_fallback_added_once_after_the_allowed_hops() -> None:
    registry = Registry(CONSENT)
    ctx = context(EU)
    assert await fallback(registry).on_request(ctx, {"r": 1}) == {"r": 1}
    assert [t.name for t in ctx.candidates] == ["eu-1", "us-gpt4"]
    assert ctx.consents == {"us-gpt4": "consent-42"}
    assert registry.asked == [("acme", "pseudo-1", "llm_fallback_gpt4")]
    assert decisions(ctx) == [
        (
            "consent_fallback",
            "eligible",
            {"target": "us-gpt4", "consent_ref": "consent-42", "purpose": "llm_fallback_gpt4"},
        )
    ]
    ctx = context(EU, US)  # already a candidate: not added twice
    await fallback(registry).on_request(ctx, {})
    assert [t.name for t in ctx.candidates] == ["eu-1", "us-gpt4"]


@pytest.mark.parametrize(
    ("registry", "subject", "reason", "code"),
    [
        (Registry(None), "pseudo-1", "no_consent", "consent.required"),
        (Registry(CONSENT), None, "no_subject", "consent.required"),
        (Registry(fails=True), "pseudo-1", "registry_unavailable", "consent.unavailable"),
    ],
)
async def test_without_consent_nothing_is_added_and_the_reason_is_withheld_for_the_end(
    registry: Registry, subject: str | None, reason: str, code: str
) -> None:
    ctx = context(EU, subject=subject)
    await fallback(registry, purpose="p2").on_request(ctx, {})
    assert ctx.candidates == [EU]
    assert ctx.consents == {}
    assert decisions(ctx) == [
        ("consent_fallback", "not_eligible", {"reason": reason, "target": "us-gpt4", "purpose": "p2"})
    ]
    [withheld] = ctx.withheld
    assert (withheld.status, withheld.code) == (503, code)
    assert withheld.message.startswith("Every allowed deployment failed. A DPA fallback exists")
    shadow = context(EU, subject=subject)
    await shadowed(fallback(registry), shadow, {})
    assert shadow.withheld == []
    assert shadow.candidates == [EU]


async def test_the_fallback_applies_only_to_chat_and_its_models_and_a_known_target() -> None:
    registry = Registry(CONSENT)
    for ctx, policy in [
        (context(EU, endpoint="embeddings"), fallback(registry)),
        (context(EU, model="mistral-large"), fallback(registry, models=["mistral-7b"])),
    ]:
        await policy.on_request(ctx, {})
        assert ctx.candidates == [EU]
        assert ctx.decisions == []
    assert registry.asked == []
    ctx = context(EU, model="mistral-7b")
    await fallback(registry, models=["mistral-7b"]).on_request(ctx, {})
    assert len(ctx.candidates) == 2
    ctx = context(EU)
    await fallback(registry, target="nowhere").on_request(ctx, {})
    assert ctx.candidates == [EU]
    assert decisions(ctx) == [
        ("consent_fallback", "not_eligible", {"reason": "unknown_target", "target": "nowhere"})
    ]


async def test_without_required_consent_the_fallback_is_added_with_no_reference_and_shadow_only_records() -> (
    None
):
    registry = Registry(None)
    ctx = context(EU, subject=None)
    await fallback(registry, require_consent=False).on_request(ctx, {})
    assert ctx.consents == {"us-gpt4": "not-required"}
    assert registry.asked == []
    ctx = context(EU)
    await shadowed(fallback(Registry(CONSENT)), ctx, {})
    assert ctx.candidates == [EU]
    assert ctx.consents == {}
    assert decisions(ctx) == [
        (
            "consent_fallback",
            "would_eligible",
            {"target": "us-gpt4", "consent_ref": "consent-42", "purpose": "llm_fallback_gpt4"},
        )
    ]


async def test_the_fallback_hop_is_recorded_with_its_consent() -> None:
    policy = fallback()
    ctx = context(EU)
    await policy.on_request(ctx, {})
    assert await policy.on_attempt(ctx, EU, {"a": 1}) == {"a": 1}  # not the fallback: nothing to record
    assert await policy.on_attempt(ctx, US, {"a": 2}) == {"a": 2}
    assert decisions(ctx)[-1] == (
        "consent_fallback",
        "fallback",
        {"target": "us-gpt4", "consent_ref": "consent-42"},
    )
    unconsented = context(EU, US)
    assert await policy.on_attempt(unconsented, US, {}) == {}  # no consent recorded: residency decides
    assert unconsented.decisions == []


@pytest.mark.parametrize(
    ("pii", "where", "state"),
    [
        ("", "defaults.consent_fallback", "not in the chain"),
        ("  pii_redaction: {mode: shadow}\n", "defaults.pii_redaction.mode", "in shadow mode"),
        (
            "  pii_redaction: {}\ntenants:\n  hr:\n    pii_redaction: {mode: 'off'}\n",
            "tenants.hr.pii_redaction.mode",
            "in off mode",
        ),
    ],
)
def test_a_bundle_enforcing_the_fallback_without_enforced_pii_redaction_does_not_load(
    pii: str, where: str, state: str
) -> None:
    from gateway.bundle import parse_bundle
    from gateway.yamlsrc import ConfigError, loads

    text = "version: 1\ndefaults:\n  consent_fallback: {target: us-gpt4}\n" + pii
    with pytest.raises(ConfigError) as refused:
        parse_bundle([loads(text, "b.yaml", expand_env=False)])
    assert [p.split(": ", 1)[1] for p in refused.value.problems] == [
        f"{where}: consent_fallback requires pii_redaction enforced for the same apps "
        f"({'hr' if 'hr' in where else '*'}/*), but it is {state}"
    ]
    # In shadow mode the fallback adds no hop, so it needs nothing enforced.
    assert parse_bundle(
        [
            loads(
                text.replace("consent_fallback: {", "consent_fallback: {mode: shadow, "),
                "b.yaml",
                expand_env=False,
            )
        ]
    ).hash


def loosened_fallback(
    before: dict[str, Any] | None, after: dict[str, Any]
) -> list[tuple[tuple[Any, ...], str]]:
    cfg = ConsentFallback.Config
    return ConsentFallback.loosened(None if before is None else cfg(**before), cfg(**after))


def test_consent_fallback_reports_each_way_a_layer_loosens_it() -> None:
    base = {"target": "us-gpt4", "models": ["mistral-7b"]}
    assert loosened_fallback(None, base) == [
        (("target",), "adds a fallback to 'us-gpt4', which may be outside the allowed jurisdictions")
    ]
    assert loosened_fallback(base, base) == []
    assert loosened_fallback(base, {**base, "target": "us-other"}) == [
        (("target",), "fallback target 'us-gpt4' -> 'us-other'")
    ]
    assert loosened_fallback(base, {**base, "require_consent": False}) == [
        (("require_consent",), "the fallback no longer needs consent")
    ]
    assert loosened_fallback({**base, "require_consent": False}, base) == []
    more = [(("models",), "the fallback applies to more models")]
    assert loosened_fallback(base, {**base, "models": []}) == more
    assert loosened_fallback(base, {**base, "models": ["mistral-7b", "mistral-large"]}) == more
    assert loosened_fallback(base, {**base, "models": ["mistral-7b"]}) == []
    assert loosened_fallback({**base, "models": []}, {**base, "models": ["mistral-7b"]}) == []
