"""Placeholders come back in any chunking, in the forms models produce, and nothing leaks."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pii.placeholders import MAX_HOLD, StreamRestorer, Vault, json_escape
from gateway.pii.settings import ENTITY_TYPES


def vault() -> Vault:
    v = Vault(ENTITY_TYPES)
    v.placeholder("PERSON", "Anna Schmidt")
    v.placeholder("EMAIL_ADDRESS", 'anna"schmidt@example.de')
    v.placeholder("IBAN_CODE", "DE89 3704 0044 0532 0130 00")
    return v


def test_the_same_value_gets_the_same_placeholder() -> None:
    v = Vault(ENTITY_TYPES)
    assert v.placeholder("PERSON", "Anna") == v.placeholder("PERSON", "Anna") == "<PERSON_1>"
    assert v.placeholder("PERSON", "Jean") == "<PERSON_2>"


def test_tolerated_variants_are_restored() -> None:
    v = vault()
    for variant in ("<PERSON_1>", "[person 1]", "<Person_1>", "< PERSON_1 >", "{PERSON-1}", "<person1]"):
        assert v.restore(f"Dear {variant},") == "Dear Anna Schmidt,", variant
    assert v.restore("[email address 1]") == 'anna"schmidt@example.de'


def test_unknown_and_untolerated_forms_stay_as_they_are() -> None:
    v = vault()
    for text in ("<PERSON_7>", "PERSON_1", "&lt;PERSON_1&gt;", "<PER SON_1>", "a < b and c > d"):
        assert v.restore(text) == text


def test_restored_values_are_json_escaped_inside_tool_arguments() -> None:
    v = vault()
    raw = v.restore('{"to": "<EMAIL_ADDRESS_1>"}', json_escape)
    assert orjson.loads(raw) == {"to": 'anna"schmidt@example.de'}


_FORMS = ["<PERSON_1>", "[person 1]", "< Person_1 >", "{EMAIL_ADDRESS_1}", "<iban code 1>", "<PERSON_9>"]
_TEXT = st.lists(
    st.one_of(st.sampled_from(_FORMS), st.text(alphabet="ab <>[]{}_1 PERSON\n", max_size=12)), max_size=12
).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=_TEXT, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_any_chunking_restores_exactly_what_the_whole_text_restores(text: str, cuts: list[int]) -> None:
    v = vault()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    restorer = StreamRestorer(v)
    out = []
    for a, b in itertools.pairwise(bounds):
        out.append(restorer.feed(text[a:b]))
        assert len(restorer.held) <= MAX_HOLD
        # What went out is final: it is a prefix of the fully restored text.
        assert v.restore(text).startswith("".join(out))
    out.append(restorer.flush())
    assert "".join(out) == v.restore(text)
    assert "<PERSON_1>" not in "".join(out)
