"""Named entities (people, places, organisations) from a spaCy model.

Only the pipeline steps NER needs run: the model is loaded without tagger, parser, attribute
ruler, lemmatizer and senter, the shared tok2vec is dropped when NER does not listen to it, and
Presidio's lemma context enhancer is not used.
Models are loaded from installed packages only; nothing is downloaded. spaCy itself is imported
only when a model is loaded (a policy that asks for an NER type), never by importing this module.

The small English model often calls a (non-English) person name an ORG, GPE or LOC, or misses it.
``labelled_entities`` corrects that with person cues around a name-shaped span: an honorific before it
(``Mr``, ``Frau``, ``ms.``), a phrase before it (``my name is``, ``call me``, ``Dear``,
``last name:``, ``my daughter``), or a verb after it (``said``, ``lives``, ``'s wife``); and the
same string elsewhere in the text already labelled PERSON. Only cue words are looked at, no
gazetteer, so the cost is a few regex passes per text.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
from collections.abc import Iterator
from functools import cache
from typing import Any

from gateway.pii.entities import NER_ENTITIES, model_installed
from gateway.pii.ner_cues import AFTER_RE, BEFORE_RE, NOT_NAMES, STRONG_RE, THINGS, WORD, WORD_BEFORE

__all__ = ["NER_ENTITIES", "SpacyNerRecognizer", "labelled_entities", "load_model", "model_installed"]

_LABELS = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
    "NORP": "NRP",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
_UNNEEDED = ["tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
SCORE = 0.85  # what Presidio's spaCy recognizer gives every NER hit
DATE_SCORE = 0.55


_RELABELLED = frozenset({"ORG", "GPE", "LOC", "NORP", "FAC", "PRODUCT", "WORK_OF_ART"})
_MAX_NAME_TOKENS = 4


def _false_cue(text: str, cue: re.Match[str]) -> bool:
    word = cue.group().strip().casefold()
    before = WORD_BEFORE.search(text, max(0, cue.start() - 30), cue.start())
    if word in ("called", "named"):
        return before is not None and before.group(1).casefold() in THINGS
    return word == "dr" and before is not None and before.group(1)[0].isupper()


def _name_token(tok: Any) -> bool:
    text = tok.text
    return text[0].isupper() and text not in NOT_NAMES and WORD.fullmatch(text) is not None


def _name_shaped(span: Any) -> bool:
    return 1 <= len(span) <= _MAX_NAME_TOKENS and all(_name_token(t) for t in span)


def labelled_entities(doc: Any) -> list[tuple[str, int, int]]:
    """spaCy's entities as (label, start, end), with person cues applied (see the module doc)."""
    text = doc.text
    ents = [[e.label_, e.start_char, e.end_char, _name_shaped(e)] for e in doc.ents]
    for e in ents:
        if e[0] in _RELABELLED and e[3]:
            before = BEFORE_RE.search(text, max(0, e[1] - 30), e[1])
            if (before and not _false_cue(text, before)) or AFTER_RE.match(text, e[2]):
                e[0] = "PERSON"
    starts = [t.idx for t in doc]
    added: list[tuple[int, int]] = []
    for m in STRONG_RE.finditer(text):
        if _false_cue(text, m):
            continue
        i = bisect.bisect_left(starts, m.end())
        if i < len(doc) and starts[i] == m.end():
            j = i
            while (
                j < len(doc)
                and j - i < _MAX_NAME_TOKENS
                and not doc[j].ent_type_
                and _name_token(doc[j])
                and (j == i or doc[j - 1].whitespace_)
            ):
                j += 1
            if j > i:
                added.append((doc[i].idx, doc[j - 1].idx + len(doc[j - 1])))
    for m in AFTER_RE.finditer(text):
        i = bisect.bisect_left(starts, m.start())  # the token right after the name
        if i == 0 or starts[i - 1] + len(doc[i - 1]) != m.start():
            continue
        j = i
        while (
            j > 0
            and i - j < _MAX_NAME_TOKENS
            and not doc[j - 1].ent_type_
            and _name_token(doc[j - 1])
            and doc[j - 1].whitespace_
        ):
            j -= 1
        if j < i and (j == 0 or not _name_token(doc[j - 1])):
            added.append((doc[j].idx, doc[i - 1].idx + len(doc[i - 1])))
    # The same name elsewhere in the text: "Directed by Ana Dias and starring Dias".
    names = {text[e[1] : e[2]] for e in ents if e[0] == "PERSON" and e[3]} | {text[s:e] for s, e in added}
    if names:
        parts = {p for n in names for p in n.split() if len(p) > 2}
        for e in ents:
            if e[0] in _RELABELLED and e[3] and all(p in parts for p in text[e[1] : e[2]].split()):
                e[0] = "PERSON"
        for name in names:
            added += [(m.start(), m.end()) for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", text)]
    out = [(str(e[0]), int(e[1]), int(e[2])) for e in ents]
    for start, end in sorted(set(added)):
        if all(end <= o[1] or start >= o[2] for o in out):
            out.append(("PERSON", start, end))
    return out


@contextlib.contextmanager
def _without_entry_point_factories() -> Iterator[None]:
    """Every new spaCy pipeline imports each installed package that declares a ``spacy_factories``
    entry point, to register its components (``Language.__init__``). The pipelines loaded here use
    spaCy's own components only; Presidio (installed, though the gateway no longer imports it; tests
    and benchmarks compare against it) declares one, and importing it costs about 0.5 s and 13 MB
    here. Within this block such packages are not imported."""
    from spacy.util import registry

    factories = getattr(registry, "_entry_point_factories", None)
    if factories is None or getattr(factories, "entry_points", None) is not True:
        yield  # another spaCy than the one this was written for: load as spaCy does
        return
    factories.entry_points = False
    try:
        yield
    finally:
        factories.entry_points = True


@cache
def load_model(name: str) -> Any:
    """The installed spaCy package ``name`` with only tok2vec and ner; loaded once per process."""
    import spacy

    if not model_installed(name):
        raise RuntimeError(f"spaCy model package {name!r} is not installed")
    try:
        with _without_entry_point_factories():
            nlp = spacy.load(name, exclude=_UNNEEDED)
    except ValueError:  # a component from another package's entry point (E002): load as spaCy does
        nlp = spacy.load(name, exclude=_UNNEEDED)
    # In the small English pipelines NER embeds its own tok2vec; the shared one then only costs time
    # (about a third of the NER path, measured in bench/pii_speed.py).
    if "tok2vec" in nlp.pipe_names and "ner" not in getattr(
        nlp.get_pipe("tok2vec"), "listening_components", []
    ):
        nlp.remove_pipe("tok2vec")
    return nlp


class SpacyNerRecognizer:
    """PERSON, LOCATION, ORGANIZATION and NRP from spaCy NER, person cues applied.

    The model is loaded when the recognizer is made (with the chain that holds the policy), once per
    process."""

    supported_entities = (*NER_ENTITIES, "DATE_TIME")

    def __init__(self, model: str, supported_language: str = "en") -> None:
        self.model_name = model
        self.name = f"spacy_ner_{model}"
        self.supported_language = supported_language
        # spaCy pipelines are not documented as thread-safe; one document at a time per model.
        self._lock = threading.Lock()
        self.load()

    def load(self) -> None:
        self.nlp = load_model(self.model_name)

    def analyze(self, text: str, entities: list[str]) -> list[tuple[str, int, int, float]]:
        """``(entity, start, end, score)`` for every entity of the ``entities`` types (all NER types if empty)."""
        wanted = set(entities or NER_ENTITIES)
        with self._lock:
            doc = self.nlp(text)
        out = []
        for spacy_label, start, end in labelled_entities(doc):
            label = _LABELS.get(spacy_label)
            if label in wanted:
                # spaCy dates are guesses; any validated structured hit on the same text wins.
                score = DATE_SCORE if label == "DATE_TIME" else SCORE
                out.append((label, start, end, score))
        return out
