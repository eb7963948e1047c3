"""The fast path: structured identifiers found in one combined regex pass, then validated.

One compiled pattern finds candidates for every structured type at once; each candidate is
then checked with the library that knows its format (python-stdnum check digits, Luhn,
``phonenumbers`` metadata for the configured regions, ``ipaddress``). Cheap context words
in the 48 characters before a candidate raise the score of weakly validated types (BSN,
PESEL, Steuer-ID, phones without a country code).

``FastRecognizer`` is called through ``gateway.pii.analyzer``; it has no Presidio dependency.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

import phonenumbers
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.eu import vat
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel

from gateway.pii.entities import DEFAULT_PHONE_REGIONS, STRUCTURED
from gateway.pii.patterns import COMBINED, DAY_YEAR, MONTH_BEFORE, NUM, SSN, digits_of, has_context

__all__ = ["DEFAULT_PHONE_REGIONS", "STRUCTURED", "FastRecognizer", "Hit"]

Hit = tuple[str, int, int, float]  # (entity, start, end, score)


class FastRecognizer:
    """Every structured type in one regex pass; validators decide what a candidate is."""

    name = "gateway_fast"
    supported_entities = STRUCTURED

    def __init__(
        self, phone_regions: Iterable[str] = DEFAULT_PHONE_REGIONS, supported_language: str = "en"
    ) -> None:
        self.phone_regions = tuple(r.upper() for r in phone_regions)
        self.supported_language = supported_language

    def scan(self, text: str, wanted: frozenset[str]) -> list[Hit]:
        """Validated hits for the ``wanted`` types, in text order; overlaps already resolved."""
        hits: list[Hit] = []
        for m in COMBINED.finditer(text):
            kind = m.lastgroup
            assert kind is not None
            hit = _CLASSIFY[kind](self, text, m.start(), m.end())
            if hit is not None and hit[0] in wanted:
                hits.append(hit)
            elif hit is not None and hit[0] == "DATE_OF_BIRTH" and "DATE_TIME" in wanted:
                hits.append(("DATE_TIME", hit[1], hit[2], hit[3]))
        return hits

    # --- classifiers: (text, start, end) -> hit or None -----------------------------------------

    def _email(self, _text: str, s: int, e: int) -> Hit | None:
        return ("EMAIL_ADDRESS", s, e, 1.0)

    def _url(self, _text: str, s: int, e: int) -> Hit | None:
        return ("URL", s, e, 0.6)

    def _iban(self, text: str, s: int, e: int) -> Hit | None:
        # Greedy groups may swallow a following word; drop trailing groups until the checksum holds.
        cand = text[s:e]
        while len(cand.replace(" ", "")) >= 15:
            if iban.is_valid(cand.upper()):
                return ("IBAN_CODE", s, s + len(cand), 1.0)
            cut = cand.rfind(" ")
            if cut < 0:
                break
            cand = cand[:cut]
        return self._vat(text, s, e)

    def _cf(self, text: str, s: int, e: int) -> Hit | None:
        return ("IT_FISCAL_CODE", s, e, 1.0) if codicefiscale.is_valid(text[s:e]) else None

    def _vat(self, text: str, s: int, e: int) -> Hit | None:
        return ("EU_VAT", s, e, 0.9) if vat.is_valid(text[s:e]) else None

    def _nie(self, text: str, s: int, e: int) -> Hit | None:
        return ("ES_NIE", s, e, 1.0) if nie.is_valid(text[s:e]) else None

    def _dni(self, text: str, s: int, e: int) -> Hit | None:
        return ("ES_NIF", s, e, 1.0) if dni.is_valid(text[s:e]) else None

    def _dl(self, text: str, s: int, e: int) -> Hit | None:
        return ("US_DRIVER_LICENSE", s, e, 0.8) if has_context(text, s, "US_DRIVER_LICENSE") else None

    def _ipv6(self, text: str, s: int, e: int) -> Hit | None:
        try:
            ipaddress.IPv6Address(text[s:e])
        except ValueError:
            return None
        return ("IP_ADDRESS", s, e, 0.9)

    def _ipv4(self, text: str, s: int, e: int) -> Hit | None:
        try:
            ipaddress.IPv4Address(text[s:e])
        except ValueError:
            return self._num(text, s, e)
        return ("IP_ADDRESS", s, e, 0.9)

    def _date(self, text: str, s: int, e: int) -> Hit | None:
        if DAY_YEAR.fullmatch(text, s, e):
            # "March 3, 1985": the month comes before the digits that started the candidate; without
            # it, the digits may still be a phone number ("06 1234 5678").
            month = MONTH_BEFORE.search(text, max(0, s - 12), s)
            if month is None:
                num = NUM.match(text, s)
                return self._num(text, s, num.end()) if num else None
            s = month.start()
        if has_context(text, s, "DATE_OF_BIRTH"):
            return ("DATE_OF_BIRTH", s, e, 0.9)
        return ("DATE_TIME", s, e, 0.6)

    def _num(self, text: str, s: int, e: int) -> Hit | None:
        # A run of digits and separators can hold a number followed by a short count
        # ("call 030 1234567 12 times"); failing everything, retry once without that count.
        hit = self._number(text, s, e)
        cut = text.rfind(" ", s, e)
        if hit is None and cut > s and e - cut <= 3:
            hit = self._number(text, s, cut)
        return hit

    def _number(self, text: str, s: int, e: int) -> Hit | None:
        cand = text[s:e]
        digits = digits_of(cand)
        n = len(digits)
        seps = {c for c in cand if not c.isdigit()}
        plain = not seps or seps <= {" "} or seps <= {"-"}
        if 12 <= n <= 19 and plain and luhn.is_valid(digits) and not cand.startswith("+"):
            # 12-digit Maestro numbers look like too many other things to count without "card" nearby.
            card_context = has_context(text, s, "CREDIT_CARD")
            if n > 12 or card_context:
                return ("CREDIT_CARD", s, e, 1.0 if n >= 15 or card_context else 0.6)
        if n == 15 and nir.is_valid(digits):
            return ("FR_NIR", s, e, 1.0)
        if n == 11 and plain:
            if pesel.is_valid(digits):
                return ("PL_PESEL", s, e, 0.95 if has_context(text, s, "PL_PESEL") else 0.6)
            if idnr.is_valid(digits):
                return ("DE_TAX_ID", s, e, 0.95 if has_context(text, s, "DE_TAX_ID") else 0.6)
        if 5 <= n <= 16 and has_context(text, s, "US_DRIVER_LICENSE"):
            return ("US_DRIVER_LICENSE", s, e, 0.8)  # US licence numbers have no check digit
        ssn_context = n == 9 and has_context(text, s, "US_SSN")
        if n == 9 and (seps or ssn_context) and SSN.fullmatch(cand) and _ssn_ok(digits):
            return ("US_SSN", s, e, 0.85 if ssn_context else 0.5)
        if n == 9 and (not seps or seps == {"."}) and bsn.is_valid(digits):
            return ("NL_BSN", s, e, 0.95 if has_context(text, s, "NL_BSN") else 0.4)
        return self._phone(text, s, e, cand, n)

    def _phone(self, text: str, s: int, e: int, cand: str, n: int) -> Hit | None:
        if not 6 <= n <= 15:
            return None
        context = has_context(text, s, "PHONE_NUMBER")
        international = cand.startswith("+") or cand.startswith("00")
        first = len(cand.split()[0]) if " " in cand else 0
        if not context and (cand.isdigit() or n < 9 or (first == 5 and n < 10)):
            # A bare digit run is too often an order or account number, and a short grouped one a
            # postcode and house number; national numbers in the EU have 9 or more digits.
            return None
        regions: tuple[str | None, ...] = (None,) if international else self.phone_regions
        for region in regions:
            try:
                number = phonenumbers.parse(cand, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return ("PHONE_NUMBER", s, e, 0.9 if context or international else 0.7)
        # Many national formats are not in the configured regions; with a phone word nearby, a
        # plausibly grouped number is still a phone.
        if context and n >= 7 and (not cand.isdigit() or international or n >= 9):
            return ("PHONE_NUMBER", s, e, 0.6)
        return None


def _ssn_ok(digits: str) -> bool:
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_CLASSIFY: dict[str, Callable[[FastRecognizer, str, int, int], Hit | None]] = {
    "EMAIL": FastRecognizer._email,
    "URL": FastRecognizer._url,
    "IBAN": FastRecognizer._iban,
    "CF": FastRecognizer._cf,
    "VAT": FastRecognizer._vat,
    "DL": FastRecognizer._dl,
    "NIE": FastRecognizer._nie,
    "DNI": FastRecognizer._dni,
    "IPV6": FastRecognizer._ipv6,
    "IPV4": FastRecognizer._ipv4,
    "DATE": FastRecognizer._date,
    "NUM": FastRecognizer._num,
}
