"""PII detection for the gateway: Presidio's AnalyzerEngine with the gateway's recognizers.

The engine runs the fast structured-identifier recognizer and, only when NER types are asked
for, a spaCy NER recognizer, on Presidio's no-op NLP engine (no lemmas, no context enhancer).
``Analyzer.analyze`` is the async entry point:

- results are cached per text content hash, so chat history is analysed once;
- new text that may take more than about 2 ms (NER, or long text) runs in a worker thread,
  never on the event loop;
- any error or a timeout raises ``AnalyzerUnavailable``; callers fail closed on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")  # never fetch the suffix list

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import NoOpNlpEngine

from gateway.pii.ner import NER_ENTITIES, SpacyNerRecognizer
from gateway.pii.recognizers import DEFAULT_PHONE_REGIONS, FastRecognizer

# Presidio logs every operation at DEBUG; kept quiet so an operator's DEBUG level cannot put
# detection details next to request ids, and so the hot path does not format log records.
for _name in ("presidio-analyzer", "presidio-anonymizer"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# The fast path scans about 5 chars per microsecond here; past this it goes to a worker.
INLINE_MAX_CHARS = 8000
# Longer texts are analysed in chunks this long, overlapping by more than any structured identifier.
CHUNK_CHARS = 1500
CHUNK_OVERLAP = 256
_GUESSED = frozenset(NER_ENTITIES)
_pool: ThreadPoolExecutor | None = None


class Span(NamedTuple):
    entity: str
    start: int
    end: int
    score: float


class AnalyzerUnavailable(Exception):
    """Analysis failed or timed out; the text must not be forwarded."""


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="pii")
    return _pool


def resolve_overlaps(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Keep the best of overlapping spans, returned in text order: validated structured hits beat
    NER guesses (spaCy often calls a URL or an e-mail an ORG), then higher score, then longer."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.entity in _GUESSED, -s.score, s.start - s.end)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return tuple(sorted(kept, key=lambda s: s.start))


class Analyzer:
    def __init__(
        self,
        thresholds: Mapping[str, float],
        *,
        allow_list: Iterable[str] = (),
        phone_regions: Iterable[str] = DEFAULT_PHONE_REGIONS,
        ner_models: Mapping[str, str] | None = None,
        timeout_s: float = 1.0,
        cache_size: int = 4096,
    ) -> None:
        self.thresholds = dict(thresholds)
        self.allow = frozenset(term.casefold() for term in allow_list)
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[Span, ...]] = OrderedDict()
        wanted = set(self.thresholds)
        # NER runs only for the NER types; once it runs, its dates count too (as Presidio's do).
        self.ner_entities = sorted(wanted & set(NER_ENTITIES))
        self.ner_extra = ["DATE_TIME"] if self.ner_entities and "DATE_TIME" in wanted else []
        self.fast_entities = sorted(wanted - set(NER_ENTITIES))
        self._fast = FastRecognizer(phone_regions)
        self._wanted = frozenset(self.fast_entities)
        recognizers: list[EntityRecognizer] = [self._fast]
        self.ner_languages: list[str] = []
        if self.ner_entities:
            for lang, model in (ner_models or {}).items():
                recognizers.append(SpacyNerRecognizer(model, supported_language=lang))
                self.ner_languages.append(lang)
        languages = sorted({"en", *self.ner_languages})
        nlp = NoOpNlpEngine(models=[{"lang_code": lang, "model_name": "none"} for lang in languages])
        nlp.load()
        self.engine = AnalyzerEngine(
            nlp_engine=nlp, registry=RecognizerRegistry(recognizers, supported_languages=languages),
            supported_languages=languages,
        )

    @property
    def uses_ner(self) -> bool:
        return bool(self.ner_languages)

    def analyze_text(self, text: str, deadline: float | None = None) -> tuple[Span, ...]:
        """Detected spans above their thresholds, not allow-listed, overlaps resolved (blocking).

        With a ``deadline`` (``time.monotonic()``; the worker-thread path), long text is analysed in
        overlapping chunks: between chunks the GIL is given up, so the event loop is not starved by
        one long scan, and the deadline is checked, so a timed-out analysis stops instead of holding
        a pool thread (raises TimeoutError). This costs about 2.4x the CPU of one pass on long text."""
        if deadline is None or len(text) <= CHUNK_CHARS:
            return self._analyze_chunk(text)  # inline (short) analysis: one pass, nothing to yield to
        spans: list[Span] = []
        step = CHUNK_CHARS - CHUNK_OVERLAP
        for start in range(0, len(text) - CHUNK_OVERLAP, step):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("PII analysis passed its deadline")
            spans += (s._replace(start=s.start + start, end=s.end + start)
                      for s in self._analyze_chunk(text[start:start + CHUNK_CHARS]))
            time.sleep(0)  # let the event loop's thread run between chunks
        return resolve_overlaps(spans)

    def _analyze_chunk(self, text: str) -> tuple[Span, ...]:
        if not self.ner_languages:
            # Structured types only: the recognizer's own scan, without Presidio's per-call machinery
            # (about 0.13 ms a call, which chunked analysis would pay once per chunk).
            return resolve_overlaps(
                Span(e, s, t, score) for e, s, t, score in self._fast.scan(text, self._wanted)
                if score >= self.thresholds.get(e, 1.1) and text[s:t].casefold() not in self.allow)
        results = []
        if self.fast_entities or "en" in self.ner_languages:
            entities = self.fast_entities + (self.ner_entities if "en" in self.ner_languages else [])
            results += self.engine.analyze(text, language="en", entities=entities)
        for lang in self.ner_languages:
            if lang != "en":
                results += self.engine.analyze(text, language=lang, entities=self.ner_entities + self.ner_extra)
        spans = (
            Span(r.entity_type, r.start, r.end, r.score) for r in results
            if r.score >= self.thresholds.get(r.entity_type, 1.1)
            and text[r.start:r.end].casefold() not in self.allow
        )
        return resolve_overlaps(spans)

    def _analyze_many(self, texts: Sequence[str], deadline: float | None = None) -> list[tuple[Span, ...]]:
        return [self.analyze_text(t, deadline) for t in texts]

    async def analyze(self, texts: Iterable[str], *, cache: bool = True) -> dict[str, tuple[Span, ...]]:
        """Spans per distinct text; raises AnalyzerUnavailable on any failure or timeout.

        ``cache=False`` for text that will not come again (stream windows)."""
        out: dict[str, tuple[Span, ...]] = {}
        todo: dict[bytes, str] = {}
        for text in texts:
            if text in out or not text:
                out.setdefault(text, ())
                continue
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                out[text] = cached
            else:
                todo[key] = text
        if not todo:
            return out
        batch = list(todo.values())
        try:
            if self.uses_ner or sum(map(len, batch)) > INLINE_MAX_CHARS:
                loop = asyncio.get_running_loop()
                job = loop.run_in_executor(pool(), self._analyze_many, batch, time.monotonic() + self.timeout_s)
                results = await asyncio.wait_for(job, self.timeout_s)
            else:
                results = self._analyze_many(batch)
        except Exception as exc:
            raise AnalyzerUnavailable(type(exc).__name__) from None
        for key, text, spans in zip(todo, batch, results, strict=True):
            out[text] = spans
            if cache:
                self._cache[key] = spans
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
