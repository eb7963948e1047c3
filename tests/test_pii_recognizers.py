"""The fast path finds EU identifiers with valid check digits and rejects near misses."""

from __future__ import annotations

import pytest

from gateway.pii.recognizers import STRUCTURED, FastRecognizer
from tests.pii_values import EU_SENTENCES

fast = FastRecognizer()


def found(text: str) -> list[tuple[str, str]]:
    return [(e, text[s:t]) for e, s, t, score in fast.scan(text, frozenset(STRUCTURED)) if score >= 0.5]


@pytest.mark.parametrize(("sentence", "labels"), EU_SENTENCES, ids=[s[:30] for s, _ in EU_SENTENCES])
def test_hand_labelled_eu_sentence_is_found_exactly(sentence: str, labels: list[tuple[str, str]]) -> None:
    assert sorted(found(sentence)) == sorted(labels)


@pytest.mark.parametrize(
    "text",
    [
        "IBAN DE89 3704 0044 0532 0130 01",  # wrong check digits
        "Steuer-ID 36574261808",  # wrong check digit
        "card 4111 1111 1111 1112",  # fails Luhn
        "codice fiscale RCCMNL83S18D969A",  # wrong control letter
        "DNI 54362315A",  # wrong letter
        "version 1.2.3.4.5 and 999.1.1.1",  # not IP addresses
    ],
)
def test_invalid_check_digits_are_not_reported(text: str) -> None:
    assert found(text) == []


def test_dates_count_as_birth_dates_only_with_birth_context() -> None:
    assert found("Meeting on 12.03.2025.") == [("DATE_TIME", "12.03.2025")]
    assert found("She was born on March 3, 1985.") == [("DATE_OF_BIRTH", "March 3, 1985")]


def test_a_national_phone_number_needs_a_configured_region_or_context() -> None:
    assert FastRecognizer(phone_regions=["US"]).scan("06 12345678", frozenset({"PHONE_NUMBER"})) == []
    assert found("Bel 06 12345678") == [("PHONE_NUMBER", "06 12345678")]


def test_only_the_asked_types_are_returned() -> None:
    text = EU_SENTENCES[0][0]
    assert [h[0] for h in fast.scan(text, frozenset({"IBAN_CODE"}))] == ["IBAN_CODE"]
