"""The DPA fallback of the seed: a non-EU model only with explicit, recorded consent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import override

from gateway.errors import PolicyDenied
from gateway.policies import register
from gateway.policy import Context, Policy, Target

if TYPE_CHECKING:
    from gateway.config import Config as OperatorConfig
    from gateway.store.consent import ConsentRef

_FALLBACK_REFUSED = "Every allowed deployment failed. A DPA fallback exists for this model, but "
_WITHHELD = {
    "no_subject": PolicyDenied(
        503,
        "consent.required",
        _FALLBACK_REFUSED
        + ("the request names no data subject (OpenAI `user` or X-Subject-Id), so it cannot be used."),
    ),
    "no_consent": PolicyDenied(
        503, "consent.required", _FALLBACK_REFUSED + ("the data subject has not consented to it.")
    ),
    "registry_unavailable": PolicyDenied(
        503,
        "consent.unavailable",
        _FALLBACK_REFUSED + ("the consent registry could not be read, so it was not used."),
    ),
}


@register
class ConsentFallback(Policy["ConsentFallback.Config"]):
    """Adds a fallback deployment (e.g. GPT-4 in the US under a DPA) after the allowed ones.

    Deny by default. The fallback is added only when the request names a data subject (the
    OpenAI `user` field or `X-Subject-Id`) who has an active consent for `purpose` in the
    consent registry. A bundle that enforces it must enforce `pii_redaction` for the same apps
    (``requires``; checked when the bundle loads), and on the fallback hop every detected type is
    redacted, even types that policy otherwise allows.
    """

    name: ClassVar[str] = "consent_fallback"
    requires: ClassVar[tuple[str, ...]] = ("pii_redaction",)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        target: str = Field(
            ..., min_length=1, description="Deployment name (config.yaml) used as the fallback."
        )
        purpose: str = Field(
            "llm_fallback_gpt4",
            min_length=1,
            description="Consent purpose the data subject must have granted.",
        )
        require_consent: bool = Field(
            True,
            description="Require an active consent. `false` is flagged by `gateway policy check` under strict residency.",
        )
        models: list[str] = Field(
            [], description="Public models (aliases) this fallback applies to; empty means every chat model."
        )

    @classmethod
    def loosened(cls, before: Any, after: Any) -> list[tuple[tuple[str | int, ...], str]]:
        if before is None:
            return [
                (
                    ("target",),
                    f"adds a fallback to {after.target!r}, which may be outside the allowed jurisdictions",
                )
            ]
        out: list[tuple[tuple[str | int, ...], str]] = []
        if after.target != before.target:
            out.append((("target",), f"fallback target {before.target!r} -> {after.target!r}"))
        if before.require_consent and not after.require_consent:
            out.append((("require_consent",), "the fallback no longer needs consent"))
        if before.models and (not after.models or set(after.models) - set(before.models)):
            out.append((("models",), "the fallback applies to more models"))
        return out

    @classmethod
    @override
    def check(
        cls, operator: OperatorConfig, config: ConsentFallback.Config, allowed: frozenset[str] | None
    ) -> list[str]:
        out = []
        deployment = operator.deployments.get(config.target)
        if deployment is None:
            out.append(f"consent_fallback.target: unknown deployment {config.target!r}")
        out += [
            f"consent_fallback.models: unknown model {m!r}" for m in config.models if m not in operator.models
        ]
        if (
            deployment is not None
            and allowed is not None
            and deployment.jurisdiction not in allowed
            and not config.require_consent
        ):
            out.append(
                f"contradiction: consent_fallback.target {config.target!r} is in {deployment.jurisdiction}, "
                f"outside residency.allow {sorted(allowed)}, with require_consent: false under strict residency"
            )
        return out

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        if ctx.endpoint != "chat" or (cfg.models and ctx.model not in cfg.models):
            return request
        services = self.services
        deployment = services.config.deployments.get(cfg.target) if services else None
        if deployment is None:
            ctx.record(self.name, "not_eligible", reason="unknown_target", target=cfg.target)
            return request
        ref = "not-required"
        if cfg.require_consent:
            reason = await self._consent(ctx, cfg)
            if isinstance(reason, str):
                ctx.record(self.name, "not_eligible", reason=reason, target=cfg.target, purpose=cfg.purpose)
                ctx.withheld.append(_WITHHELD[reason])
                return request
            ref = reason.id
        ctx.consents[cfg.target] = ref
        if all(t.name != cfg.target for t in ctx.candidates):
            ctx.candidates = [*ctx.candidates, Target(cfg.target, deployment)]
        ctx.record(self.name, "eligible", target=cfg.target, consent_ref=ref, purpose=cfg.purpose)
        return request

    async def _consent(self, ctx: Context, cfg: ConsentFallback.Config) -> ConsentRef | str:
        """The subject's active consent, or why there is none."""
        if ctx.subject is None:
            return "no_subject"
        consents = self.services.consents if self.services is not None else None
        if consents is None:
            return "registry_unavailable"
        try:
            consent = await consents.active(ctx.principal.tenant, ctx.subject, cfg.purpose)
        except Exception:  # deny by default  # noqa: BLE001
            return "registry_unavailable"  # deny by default: an unreadable registry means no consent
        return "no_consent" if consent is None else consent

    async def on_attempt(self, ctx: Context, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        if target.name != cfg.target or target.name not in ctx.consents:
            return request
        ctx.record(self.name, "fallback", target=target.name, consent_ref=ctx.consents[target.name])
        return request
