"""The DPA fallback of the seed: a non-EU model only with explicit, recorded consent."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import PolicyDenied
from gateway.policies import register
from gateway.policy import Context, Policy, Target


@register
class ConsentFallback(Policy):
    """Adds a fallback deployment (e.g. GPT-4 in the US under a DPA) after the allowed ones.

    Deny by default. The fallback is added only when the request names a data subject (the
    OpenAI `user` field or `X-Subject-Id`) who has an active consent for `purpose` in the
    consent registry. When the fallback hop is actually tried, PII redaction must be enforced
    for the request (`pii_redaction` in the chain, not in shadow mode), or the hop is refused;
    on that hop every detected type is redacted, even types the policy otherwise allows.
    """

    name: ClassVar[str] = "consent_fallback"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        target: str = Field(..., min_length=1, description="Deployment name (config.yaml) used as the fallback.")
        purpose: str = Field(
            "llm_fallback_gpt4", min_length=1, description="Consent purpose the data subject must have granted."
        )
        require_consent: bool = Field(
            True, description="Require an active consent. `false` is flagged by `gateway policy check` under strict residency."
        )
        models: list[str] = Field(
            [], description="Public models (aliases) this fallback applies to; empty means every chat model."
        )

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        cfg: ConsentFallback.Config = self.config  # type: ignore[assignment]
        if ctx.endpoint != "chat" or (cfg.models and ctx.model not in cfg.models):
            return request
        services = self.services
        deployment = services.config.deployments.get(cfg.target) if services else None
        if deployment is None:
            ctx.record(self.name, "not_eligible", reason="unknown_target", target=cfg.target)
            return request
        ref = "not-required"
        if cfg.require_consent:
            if ctx.subject is None:
                ctx.record(self.name, "not_eligible", reason="no_subject", target=cfg.target)
                return request
            assert services is not None
            try:
                consent = await services.consents.active(ctx.principal.tenant, ctx.subject, cfg.purpose)
            except Exception:
                # Deny by default: an unreadable registry means no consent.
                ctx.record(self.name, "not_eligible", reason="registry_unavailable", target=cfg.target)
                return request
            if consent is None:
                ctx.record(self.name, "not_eligible", reason="no_consent", target=cfg.target, purpose=cfg.purpose)
                return request
            ref = consent.id
        if self.mode == "shadow":
            ctx.record(self.name, "would_add", target=cfg.target, consent_ref=ref)
            return request
        ctx.consents[cfg.target] = ref
        if all(t.name != cfg.target for t in ctx.candidates):
            ctx.candidates = [*ctx.candidates, Target(cfg.target, deployment)]
        ctx.record(self.name, "eligible", target=cfg.target, consent_ref=ref, purpose=cfg.purpose)
        return request

    async def on_attempt(self, ctx: Context, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        cfg: ConsentFallback.Config = self.config  # type: ignore[assignment]
        if target.name != cfg.target or target.name not in ctx.consents:
            return request
        if not ctx.pii_guard:
            ctx.record(self.name, "refused", target=target.name, reason="pii_redaction_off")
            raise PolicyDenied(403, "consent_fallback.pii_redaction_required",
                               "The DPA fallback needs PII redaction, which is not enforced for this request.")
        ctx.record(self.name, "fallback", target=target.name, consent_ref=ctx.consents[target.name])
        return request
