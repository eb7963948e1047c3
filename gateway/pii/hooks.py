"""The ``pii_redaction`` policy's hooks: detection, per-hop actions, restore, output scanning.

``gateway.policies.pii_redaction`` holds the policy's Config side and registration; making a
``PiiRedaction`` gives an instance of ``PiiRedactionHooks``, defined here, so the engine is imported
only when a bundle's chain actually has the policy. How it works: that module's docstring and
docs/pii.md.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

from gateway import metrics
from gateway.errors import PolicyDenied
from gateway.pii.actions import Action, Applier
from gateway.pii.analyzer import Analyzer, AnalyzerUnavailable, Span, resolve_overlaps
from gateway.pii.placeholders import Vault, json_escape
from gateway.pii.stream import OutputScanner, StreamEditor
from gateway.pii.texts import Unscannable, collect, map_json_text, map_request, map_response
from gateway.policies.pii_redaction import DPA_FLOOR, ENTITY_TYPES, PiiRedaction
from gateway.policy import Context, Target
from gateway.sse import Event

_KEY = secrets.token_bytes(32)  # only without Services (unit use): hashes stable per process only


def _ephemeral_hmac(value: str) -> str:
    return hmac.new(_KEY, value.encode(), hashlib.sha256).hexdigest()


@dataclass
class _Request:
    vault: Vault
    spans: dict[str, tuple[Span, ...]]


class PiiRedactionHooks(PiiRedaction):
    """``pii_redaction`` with its hooks (see ``PiiRedaction``); made by ``PiiRedaction(...)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
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
