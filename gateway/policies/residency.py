"""Keeps requests in the jurisdictions a tenant or app allows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import override

from gateway.errors import PolicyDenied
from gateway.jurisdictions import Jurisdiction
from gateway.policies import register
from gateway.policy import Context, Policy, Target

if TYPE_CHECKING:
    from gateway.config import Config as OperatorConfig


@register
class Residency(Policy["Residency.Config"]):
    """Narrows the candidate deployments to the allowed jurisdictions (chat and embeddings).

    The allowed set is written to ``ctx.allowed_jurisdictions`` for later policies (RAG, PII).
    Every hop is checked again before it is sent: a deployment outside the allowed set is
    vetoed unless ``consent_fallback`` recorded a consent for exactly that deployment.
    """

    name: ClassVar[str] = "residency"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        allow: list[Jurisdiction] = Field(
            ["EU"],
            min_length=1,
            description="Jurisdictions requests may be sent to, e.g. `[EU]` or `[EU, CH]`.",
        )
        data_classes: dict[str, list[Jurisdiction]] = Field(
            {},
            description=(
                "Per data class (request header `X-Data-Class`), the jurisdictions allowed instead of `allow`, "
                "e.g. `{health: [EU], public: [EU, US]}`."
            ),
        )
        unknown_data_class: str = Field(
            "deny",
            pattern="^(deny|default)$",
            description="A data class not listed in `data_classes`: `deny` (403) or `default` (use `allow`).",
        )
        strict: bool = Field(
            True,
            description=(
                "Strict residency: `gateway policy check` flags any fallback outside `allow` that does not "
                "require consent."
            ),
        )

    @classmethod
    @override
    def strictly_allows(cls, config: Residency.Config) -> frozenset[str] | None:
        return frozenset(config.allow) if config.strict else None

    @classmethod
    @override
    def check(
        cls, operator: OperatorConfig, config: Residency.Config, allowed: frozenset[str] | None
    ) -> list[str]:
        return [
            f"warning: residency.allow {sorted(config.allow)} leaves model {name!r} with no deployment"
            for name, alias in operator.models.items()
            if not any(operator.deployments[d].jurisdiction in config.allow for d in alias.deployments)
        ]

    @staticmethod
    def allowed_by(cfg: Residency.Config, data_class: str | None) -> frozenset[str] | None:
        """The allowed jurisdictions for a data class; None when the class is refused."""
        if data_class is None:
            return frozenset(cfg.allow)
        if data_class in cfg.data_classes:
            return frozenset(cfg.data_classes[data_class])
        return frozenset(cfg.allow) if cfg.unknown_data_class == "default" else None

    def allowed(self, data_class: str | None) -> frozenset[str]:
        """The allowed jurisdictions for a data class; raises PolicyDenied for an unknown class."""
        allowed = self.allowed_by(self.config, data_class)
        if allowed is None:
            raise PolicyDenied(
                403, "residency.unknown_data_class", "The request's data class has no residency rule."
            )
        return allowed

    @classmethod
    def header_values(cls, config: Any) -> dict[str, frozenset[str]]:
        return {"x-data-class": frozenset(config.data_classes)}

    @classmethod
    def loosened(cls, before: Any, after: Any) -> list[tuple[tuple[str | int, ...], str]]:
        if before is None:
            return []
        out: list[tuple[tuple[str | int, ...], str]] = []
        # Every data class either config names, plus "no class" and "a class neither names".
        classes: list[str | None] = [None, *sorted({*before.data_classes, *after.data_classes}), "\0other"]
        for data_class in classes:
            was = cls.allowed_by(before, data_class) or frozenset()
            now = cls.allowed_by(after, data_class) or frozenset()
            wider = sorted(now - was)
            if not wider:
                continue
            if data_class is None:
                out.append((("allow",), f"also allows {', '.join(wider)}"))
            elif data_class == "\0other":
                out.append(
                    (("unknown_data_class",), f"unlisted data classes now go to {', '.join(sorted(now))}")
                )
            else:
                out.append(
                    (
                        ("data_classes", data_class),
                        f"data class {data_class!r} also allows {', '.join(wider)}",
                    )
                )
        if before.strict and not after.strict:
            out.append((("strict",), "strict residency turned off"))
        return out

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        allowed = self.allowed(ctx.data_class)
        # Hops consent_fallback admitted by consent stay, whichever of the two runs first.
        kept = [t for t in ctx.candidates if t.jurisdiction in allowed or t.name in ctx.consents]
        removed = [t.name for t in ctx.candidates if t not in kept]
        ctx.record(
            self.name,
            "narrow" if removed else "allow",
            allowed=sorted(allowed),
            removed=removed,
            data_class=self._recorded(ctx.data_class),
        )
        if not kept:
            raise PolicyDenied(
                403,
                "residency.no_allowed_deployment",
                f"No deployment of model '{ctx.model}' is in an allowed jurisdiction ({', '.join(sorted(allowed))}).",
            )
        ctx.allowed_jurisdictions = allowed
        ctx.candidates = kept
        return request

    def _recorded(self, data_class: str | None) -> str | None:
        # A header value is stored only when it is a class the policy names (an enum), never as sent.
        listed = data_class is None or data_class in self.config.data_classes
        return data_class if listed else "unlisted"

    async def on_attempt(self, ctx: Context, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        allowed = ctx.allowed_jurisdictions
        if allowed is not None and target.jurisdiction not in allowed and target.name not in ctx.consents:
            raise PolicyDenied(
                403,
                "residency.hop_outside_jurisdiction",
                f"Deployment '{target.name}' is outside the allowed jurisdictions.",
            )
        return request
