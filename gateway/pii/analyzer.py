"""PII detection for the gateway: the fast structured-identifier recognizer and, only when NER
types are asked for, a spaCy NER recognizer.

The two are combined as Presidio's ``AnalyzerEngine`` combined them on its no-op NLP engine (no
lemmas, no context enhancer), without importing Presidio: per language, the recognizers that
serve the asked-for types run, duplicates and same-type results contained in a better one are
dropped (``EntityRecognizer.remove_duplicates``), then thresholds and the allow list apply and
overlaps are resolved. ``tests/test_pii_presidio_parity.py`` checks the findings against Presidio's
engine. ``Analyzer.analyze`` is the async entry point:

- results are cached per text content hash, so chat history is analysed once;
- new text that may take more than about 2 ms (NER, or long text) runs in a worker thread,
  never on the event loop;
- any error or a timeout raises ``AnalyzerUnavailable``; callers fail closed on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from gateway import forgetting
from gateway.pii.entities import DEFAULT_PHONE_REGIONS, NER_ENTITIES, STRUCTURED
from gateway.pii.ner import SpacyNerRecognizer

if TYPE_CHECKING:
    from gateway.pii.recognizers import Hit

# Presidio is not used, but it is installed, and a spaCy model that needs a component from a
# package's entry point imports it (gateway.pii.ner): then too, nothing is fetched (its e-mail
# recognizer's suffix list) and its DEBUG logs stay quiet.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
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


def remove_duplicates(hits: Iterable[Hit]) -> list[Hit]:
    """Presidio's ``EntityRecognizer.remove_duplicates``: drop repeated and zero-score results, and a
    result contained in another of the same type with an equal or higher score."""
    ordered = sorted(set(hits), key=lambda h: (h[0], h[1], -(h[2] - h[1]), -h[3]))
    kept: list[Hit] = []
    for _, group in itertools.groupby(ordered, key=lambda h: h[0]):
        active: list[Hit] = []
        for hit in group:
            if hit[3] == 0:
                continue
            active = [a for a in active if a[2] >= hit[1]]  # only these can contain it
            if not any(hit[1] >= a[1] and hit[2] <= a[2] and hit[3] <= a[3] for a in active):
                kept.append(hit)
                active.append(hit)
    return kept


def resolve_overlaps(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Keep the best of overlapping spans, returned in text order: validated structured hits beat
    NER guesses (spaCy often calls a URL or an e-mail an ORG), then higher score, then longer."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.entity in _GUESSED, -s.score, s.start - s.end)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return tuple(sorted(kept, key=lambda s: s.start))


class Analyzer:
    _fast_types = frozenset(STRUCTURED)  # FastRecognizer.supported_entities
    _ner_types = frozenset(SpacyNerRecognizer.supported_entities)

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
        forgetting.register(self)
        wanted = set(self.thresholds)
        # NER runs only for the NER types; once it runs, its dates count too (as Presidio's do).
        self.ner_entities = sorted(wanted & set(NER_ENTITIES))
        self.ner_extra = ["DATE_TIME"] if self.ner_entities and "DATE_TIME" in wanted else []
        self.fast_entities = sorted(wanted - set(NER_ENTITIES))
        # Imported here, not with the module: the validators (phonenumbers, python-stdnum) load with the
        # first analyzer a chain makes, never for validating a bundle.
        from gateway.pii.recognizers import FastRecognizer

        self._fast = FastRecognizer(phone_regions)
        self._wanted = frozenset(self.fast_entities)
        self._ner: dict[str, SpacyNerRecognizer] = {}
        self.ner_languages: list[str] = []
        if self.ner_entities:
            for lang, model in (ner_models or {}).items():
                self._ner[lang] = SpacyNerRecognizer(model, supported_language=lang)
                self.ner_languages.append(lang)

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
            spans += (
                s._replace(start=s.start + start, end=s.end + start)
                for s in self._analyze_chunk(text[start : start + CHUNK_CHARS])
            )
            time.sleep(0)  # let the event loop's thread run between chunks
        return resolve_overlaps(spans)

    def _analyze_chunk(self, text: str) -> tuple[Span, ...]:
        if not self.ner_languages:
            # Structured types only: the recognizer's own scan, without Presidio's per-call machinery
            # (about 0.13 ms a call, which chunked analysis would pay once per chunk).
            return resolve_overlaps(
                Span(e, s, t, score)
                for e, s, t, score in self._fast.scan(text, self._wanted)
                if score >= self.thresholds.get(e, 1.1) and text[s:t].casefold() not in self.allow
            )
        results: list[Hit] = []
        if self.fast_entities or "en" in self.ner_languages:
            entities = self.fast_entities + (self.ner_entities if "en" in self.ner_languages else [])
            results += self._recognize(text, "en", entities)
        for lang in self.ner_languages:
            if lang != "en":
                results += self._recognize(text, lang, self.ner_entities + self.ner_extra)
        spans = (
            Span(e, s, t, score)
            for e, s, t, score in results
            if score >= self.thresholds.get(e, 1.1) and text[s:t].casefold() not in self.allow
        )
        return resolve_overlaps(spans)

    def _recognize(self, text: str, language: str, entities: list[str]) -> list[Hit]:
        """One language's pass, as ``AnalyzerEngine.analyze(text, language, entities)`` made it: every
        recognizer of the language serving one of ``entities`` runs, then duplicates are removed."""
        hits: list[Hit] = []
        if language == self._fast.supported_language and not self._fast_types.isdisjoint(entities):
            hits += self._fast.scan(text, frozenset(entities))
        ner = self._ner.get(language)
        if ner is not None and not self._ner_types.isdisjoint(entities):
            hits += ner.analyze(text, entities)
        return remove_duplicates(hits)

    def _analyze_many(self, texts: Sequence[str], deadline: float | None = None) -> list[tuple[Span, ...]]:
        return [self.analyze_text(t, deadline) for t in texts]

    def forget(self) -> None:
        """Drop every cached result (a subject was erased; the cache is keyed by text hashes)."""
        self._cache.clear()

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
                job = loop.run_in_executor(
                    pool(), self._analyze_many, batch, time.monotonic() + self.timeout_s
                )
                results = await asyncio.wait_for(job, self.timeout_s)
            else:
                results = self._analyze_many(batch)
        except Exception as exc:  # any engine failure is 'analyzer unavailable'  # noqa: BLE001
            raise AnalyzerUnavailable(type(exc).__name__) from None
        for key, text, spans in zip(todo, batch, results, strict=True):
            out[text] = spans
            if cache:
                self._cache[key] = spans
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
