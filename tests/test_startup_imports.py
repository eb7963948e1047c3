"""Start-up cost (issue #13): validating a bundle loads no policy engine; a chain loads only what it uses.

Each check runs in a fresh interpreter, since this one has imported everything already.
Figures: bench/startup.py and docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import tokens

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "spacy",
    "presidio_analyzer",
    "presidio_anonymizer",
    "weaviate",
    "litellm",
    "sqlalchemy",
    "sqlmodel",
    "numpy",
    "redis",
    "mistral_common",
    "phonenumbers",
    "regex",
)

_SCRIPT = """
import sys
from gateway.bundle import load_bundle
from gateway.config import load_config

HEAVY = {heavy!r}

def loaded():
    return sorted(m for m in HEAVY if m in sys.modules)

config = load_config("config.yaml")
bundle = load_bundle(["policies"])
print("validated", loaded())
bundle.chain_for("finance", "reports")
print("defaults chain", loaded())
bundle.chain_for("hr", "chatbot")
print("hr/chatbot chain", loaded())
from gateway import tokens
tokens.load("mistral-v3")
print("mistral-v3 tokenizer", loaded())
"""


def test_the_shipped_bundle_loads_engines_only_for_the_chains_that_use_them() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "DATABASE_URL", "REDIS_URL")}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(heavy=HEAVY)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    steps = {line.split(" [")[0]: line.split(" [")[1].rstrip("]") for line in out.stdout.splitlines()}
    # `gateway config check` and `policy check` only validate: no engine at all.
    assert steps["validated"] == ""
    # Structured identifiers only: the fast recognizer's validators, no spaCy, no Presidio.
    assert steps["defaults chain"] == "'phonenumbers', 'regex'"
    # PERSON for hr/chatbot: spaCy (and numpy under it, and the embedded RAG index), still no Presidio.
    assert "'spacy'" in steps["hr/chatbot chain"]
    assert "presidio" not in steps["hr/chatbot chain"]
    assert not {"'weaviate'", "'litellm'", "'sqlalchemy'", "'redis'"} & set(
        steps["hr/chatbot chain"].split(", ")
    )
    # Token counting for Mistral 7B: sentencepiece alone.
    assert "mistral_common" not in steps["mistral-v3 tokenizer"]


@pytest.mark.parametrize("family", sorted(tokens._SENTENCEPIECE))
def test_sentencepiece_counts_are_mistral_commons(family: str) -> None:
    import mistral_common
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = Path(mistral_common.__file__).parent / "data" / tokens._MISTRAL_FILES[family]
    reference = MistralTokenizer.from_file(str(path)).instruct_tokenizer.tokenizer
    lean = tokens._load(family)
    assert lean.exact
    for text in [
        "Bonjour, combien coûte cette requête ?",
        "Hello world",
        "  leading spaces and\nnew lines\t",
        "日本語のテキスト",
        "emoji 🎉",
        "[INST] hi [/INST] <s> </s> <unk>",
        "a" * 1000,
    ]:
        assert lean.count(text) == len(reference.encode(text, bos=False, eos=False)), text
