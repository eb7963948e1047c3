"""pii_redaction: no raw PII leaves the gateway where the policy says it must not.

Every outgoing text (messages, tool arguments and results, embeddings input, injected RAG
context) is analysed once per request in ``on_request``; each hop then gets its own copy with
that hop's jurisdiction's actions applied in ``on_attempt``. Placeholders are restored in the
answer, streamed or not. Analysis failure or timeout rejects with 503 ``pii.unavailable``.
The settings are ``gateway.pii.settings``; operator guide: docs/pii.md; compliance guide:
policies/README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from typing_extensions import override

from gateway.errors import PolicyDenied
from gateway.pii import settings
from gateway.pii.actions import Action, Applier
from gateway.pii.analyzer import Analyzer, AnalyzerUnavailable, Span, resolve_overlaps
from gateway.pii.placeholders import Vault, json_escape
from gateway.pii.settings import DPA_FLOOR, ENTITY_TYPES, PiiSettings
from gateway.pii.stream import OutputScanner, StreamEditor
from gateway.pii.texts import Unscannable, collect, map_json_text, map_request, map_response
from gateway.policies import register
from gateway.policy import Context, Policy, Run, Target
from gateway.sse import Event

_KEY = secrets.token_bytes(32)  # only without Services (unit use): hashes stable per process only


def _ephemeral_hmac(value: str) -> str:
    return hmac.new(_KEY, value.encode(), hashlib.sha256).hexdigest()


@register
class PiiRedaction(Policy["PiiRedaction.Config"]):
    """Detects PII in every outgoing text and redacts, masks, hashes, blocks or allows it per type and per
    destination jurisdiction; placeholders are restored in the answer, streamed or not."""

    name = "pii_redaction"

    class Config(PiiSettings):
        """Detection, actions per type and jurisdiction, output scanning and limits."""

    @classmethod
    def normalize(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return settings.normalize(raw)

    @classmethod
    def loosened(cls, before: Any, after: Any) -> list[tuple[tuple[str | int, ...], str]]:
        return settings.loosened(before, after)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.cfg = cfg
        ner = {lang: m for lang, m in cfg.ner_models.items() if lang in cfg.languages}
        self.analyzer = Analyzer(
            {e: r.threshold for e, r in cfg.entities.items()},
            allow_list=cfg.allow_list,
            phone_regions=cfg.phone_regions,
            ner_models=ner,
            timeout_s=cfg.timeout_ms / 1000,
        )
        self._inflight: dict[str, int] = {}  # API key id -> characters under analysis now
        # Floor types the entity map does not name are looked for only on a consented hop (rare).
        unnamed = {e: 0.5 for e in DPA_FLOOR if e not in cfg.entities}
        self._floor_analyzer = (
            Analyzer(
                unnamed,
                allow_list=cfg.allow_list,
                phone_regions=cfg.phone_regions,
                timeout_s=cfg.timeout_ms / 1000,
            )
            if unnamed
            else None
        )
        Vault(
            ENTITY_TYPES
        )  # compiles the placeholder pattern (and loads `regex`) now, not on the first request

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

    async def _floor_spans(
        self, ctx: Context, request: dict[str, Any], spans: dict[str, tuple[Span, ...]]
    ) -> dict[str, tuple[Span, ...]]:
        if self._floor_analyzer is None:
            return spans
        try:
            extra = await self._floor_analyzer.analyze(collect(request, ctx.endpoint))
        except AnalyzerUnavailable:
            raise PolicyDenied(
                503, "pii.unavailable", "PII analysis is unavailable; nothing was sent."
            ) from None
        return {text: resolve_overlaps((*spans.get(text, ()), *found)) for text, found in extra.items()}

    def _actions(self, jurisdiction: str) -> dict[str, Action]:
        return {e: r.jurisdictions.get(jurisdiction, r.action) for e, r in self.cfg.entities.items()}

    def _pseudonym(self, ctx: Context) -> Callable[[str], str]:
        keyed = self.services.pseudonym if self.services is not None else _ephemeral_hmac
        return lambda value: keyed(f"pii:{ctx.principal.tenant}:{value}")

    async def _analyze(self, ctx: Context, request: dict[str, Any]) -> dict[str, tuple[Span, ...]]:
        try:
            texts = collect(request, ctx.endpoint)
        except Unscannable:
            raise PolicyDenied(
                400, "pii.unscannable_input", "Token-id input cannot be checked for PII."
            ) from None
        size = sum(map(len, texts))
        if size > self.cfg.max_chars:
            raise PolicyDenied(
                413,
                "pii.too_large",
                f"The request has more than {self.cfg.max_chars} characters of text to check for PII.",
            )
        key = ctx.principal.key_id
        busy = self._inflight.get(key, 0)
        if busy and busy + size > self.cfg.max_inflight_chars_per_key:
            raise PolicyDenied(
                429,
                "pii.busy",
                "This API key has too much text under PII analysis; retry shortly.",
                headers={"Retry-After": "1"},
            )
        self._inflight[key] = busy + size
        try:
            return await self.analyzer.analyze(texts)
        except AnalyzerUnavailable:
            raise PolicyDenied(
                503, "pii.unavailable", "PII analysis is unavailable; nothing was sent."
            ) from None
        finally:
            left = self._inflight[key] - size
            if left:
                self._inflight[key] = left
            else:
                del self._inflight[key]

    @staticmethod
    def _blocked(types: set[str]) -> PolicyDenied:
        return PolicyDenied(
            400, "pii.blocked", f"The request contains blocked PII types: {', '.join(sorted(types))}."
        )

    @override
    def start(self, ctx: Context) -> Run:
        return _Request(self)

    def _record(
        self, ctx: Context, counts: Counter[tuple[str, Action]], floored: Collection[str] = (), **facts: Any
    ) -> None:
        """One decision per action, its facts naming the count per type (which gateway_pii_entities_total counts);
        redactions the DPA floor added are recorded apart, as `floor_redact`."""
        by_action: dict[str, dict[str, int]] = {}
        for (entity, action), n in sorted(counts.items()):
            label: str = "floor_redact" if entity in floored and action == "redact" else action
            by_action.setdefault(label, {})[entity] = n
        for decided, entities in by_action.items():
            ctx.record(self.name, decided, entities=entities, **facts)

    def _output_applier(self, ctx: Context) -> Applier:
        return Applier(
            dict.fromkeys(self.cfg.entities, self.cfg.output.action),
            Vault(()),
            self._pseudonym(ctx),
            self.cfg.mask_keep_last,
        )

    def _output_decision(self, ctx: Context, apply: Applier) -> None:
        self._record(ctx, apply.counts, scope="output")
        blocked = sorted({e for e, action in apply.counts if action == "block"})
        if blocked:
            raise PolicyDenied(
                502, "pii.output_blocked", f"The answer contained blocked PII types: {', '.join(blocked)}."
            )


class _Request(Run):
    """One request under the policy: the text found in it, and the placeholders its answer gets back."""

    __slots__ = ("policy", "spans", "vault")

    def __init__(self, policy: PiiRedaction) -> None:
        self.policy = policy
        self.vault = Vault(ENTITY_TYPES)
        self.spans: dict[str, tuple[Span, ...]] = {}

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        p = self.policy
        self.spans = await p._analyze(ctx, request)
        found = {s.entity for found in self.spans.values() for s in found}
        hops = [p._actions(t.jurisdiction) for t in ctx.candidates] or [p._actions("")]
        blocked = {e for e in found if all(h[e] == "block" for h in hops)}
        if blocked:
            raise p._blocked(blocked)
        return request

    async def on_attempt(self, ctx: Context, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        p = self.policy
        self.spans.update(await p._analyze(ctx, request))  # cache hits unless a policy added text
        actions = p._actions(target.jurisdiction)
        spans, raised = self.spans, set[str]()
        if target.name in ctx.consents:
            # A hop allowed only by consent (the DPA fallback) never gets a detected type in the clear.
            actions, raised = p._floor(actions, target.jurisdiction)
            spans = await p._floor_spans(ctx, request, spans)
        apply = Applier(actions, self.vault, p._pseudonym(ctx), p.cfg.mask_keep_last)
        edited = map_request(request, ctx.endpoint, lambda t: apply(t, spans.get(t, ())))
        p._record(ctx, apply.counts, raised, hop=target.name, jurisdiction=target.jurisdiction)
        blocked = {e for e, action in apply.counts if action == "block"}
        if blocked:
            raise p._blocked(blocked)
        return edited

    def reads_response(self, ctx: Context) -> bool:
        return ctx.endpoint == "chat" and (self.policy.cfg.output.enabled or bool(self.vault))

    async def on_response(self, ctx: Context, response: dict[str, Any]) -> dict[str, Any]:
        p = self.policy
        if p.cfg.output.enabled:
            texts: list[str] = []

            def keep(text: str) -> str:
                texts.append(text)
                return text

            map_response(response, keep, lambda raw: map_json_text(raw, keep))
            try:
                spans = await p.analyzer.analyze(texts)
            except AnalyzerUnavailable:
                raise PolicyDenied(503, "pii.unavailable", "PII analysis of the answer failed.") from None
            apply = p._output_applier(ctx)

            def scan(text: str) -> str:
                return apply(text, spans.get(text, ()))

            map_response(response, scan, lambda raw: map_json_text(raw, scan))
            p._output_decision(ctx, apply)
        if self.vault:
            vault = self.vault
            map_response(
                response,
                vault.restore,
                lambda raw: map_json_text(raw, vault.restore, lambda r: vault.restore(r, json_escape)),
            )
        return response

    def on_stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        return self._stream(ctx, events) if self.reads_response(ctx) else events

    async def _stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        p = self.policy
        apply = p._output_applier(ctx)
        scanner: Callable[[], OutputScanner] | None = (
            (lambda: OutputScanner(p.analyzer, apply)) if p.cfg.output.enabled else None
        )
        editor = StreamEditor(self.vault, scanner)
        block = p.cfg.output.action == "block"
        try:
            async for event in events:
                if event.is_done and (tail := await editor.tail()) is not None:
                    yield Event.of(tail)
                chunk = event.json
                if isinstance(chunk, dict) and await editor.edit(chunk):
                    event.json = chunk
                if block and apply.counts:
                    p._output_decision(ctx, apply)  # raises before the chunk goes out
                yield event
            if (tail := await editor.tail()) is not None:
                yield Event.of(tail)
            if apply.counts:
                p._output_decision(ctx, apply)
        except AnalyzerUnavailable:
            raise PolicyDenied(503, "pii.unavailable", "PII analysis of the answer failed.") from None
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
