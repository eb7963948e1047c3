"""The fast recognizer's patterns: one combined regex for every structured type, and the context words.

``gateway.pii.recognizers`` runs them and validates each candidate; this module holds only the
compiled patterns (stdlib ``re``) and two small helpers, so it is cheap to import.
"""

from __future__ import annotations

import re

_MONTHS = (
    "jan(?:uary|uar|vier|naio|eiro)?|feb(?:ruary|ruar)?|févr(?:ier)?|fevr(?:ier)?|febbraio|febrero|mar(?:ch|s|zo)?|"
    "märz|maart|apr(?:il|ile)?|avr(?:il)?|abril|may|mai|mei|maggio|mayo|jun(?:e|i|io)?|juin|giugno|jul(?:y|i|io)?|"
    "juil(?:let)?|luglio|aug(?:ust|ustus)?|août|agosto|sep(?:t|tember|tembre|tiembre)?|settembre|oct(?:ober|obre)?|"
    "okt(?:ober)?|ottobre|octubre|nov(?:ember|embre)?|dec(?:ember|embre)?|dez(?:ember)?|déc(?:embre)?|dicembre|"
    "diciembre|stycz(?:nia|eń)|lut(?:ego|y)|marca|kwietnia|maja|czerwca|lipca|sierpnia|września|października|"
    "listopada|grudnia"
)
_VAT_PREFIX = "AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK|XI"
_TLDS = (
    "com|org|net|edu|gov|info|biz|io|ai|app|dev|eu|de|fr|it|es|nl|pl|at|be|ch|uk|ie|pt|se|dk|fi|no|cz|sk|hu|ro|"
    "bg|gr|hr|si|ee|lv|lt|lu|mt|cy|is|li|us|ca|br|au|jp|cn|in|ru"
)

# Branch order matters only where one text could start two branches at the same offset.
# Every candidate starts after a non-word character and its token holds a digit, "@" or "."; the
# guard in front lets the engine skip plain words without trying each branch (measured 6x faster).
COMBINED = re.compile(
    r"(?<!\w)(?=\S{0,80}?[\d@.])(?:"
    r"(?P<EMAIL>\b[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,4}\.[A-Za-z]{2,24}\b)"
    r"|(?P<URL>\b(?:https?://|www\.)[^\s<>\"'()\[\]{}]{2,200}[^\s<>\"'()\[\]{}.,;:!?]"
    rf"|\b[A-Za-z0-9-]{{1,63}}(?:\.[A-Za-z0-9-]{{1,63}}){{0,3}}\.(?:{_TLDS})\b(?![.@-]\w))"
    r"|(?P<IBAN>\b[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?\b)"
    r"|(?P<CF>\b[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]\b)"
    rf"|(?P<VAT>\b(?:{_VAT_PREFIX})[ ]?[0-9A-Z][0-9A-Z.]{{7,13}}\b)"
    r"|(?P<DL>\b[A-Z]\d{6,14}\b)"
    r"|(?P<NIE>\b[XYZ][ -]?\d{7}[ -]?[A-Z]\b)"
    r"|(?P<DNI>\b\d{8}[ -]?[A-Z]\b)"
    r"|(?P<IPV6>(?<![\w:])(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]))"
    r"|(?P<IPV4>\b(?:\d{1,3}\.){3}\d{1,3}\b(?!\.\d))"
    r"|(?P<DATE>\b\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?\b"
    r"|\b\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})\b(?![/.-]\d)"
    rf"|\b\d{{1,2}}(?:st|nd|rd|th|er)?\.?[ ](?i:{_MONTHS})\.?,?[ ]\d{{4}}\b"
    r"|\b\d{1,2}(?:st|nd|rd|th)?,?[ ]\d{4}\b)"
    r"|(?P<NUM>(?:(?<![\w+.-])\+\(?|(?<![\w(])\(|\b)\d[\d \-./()]{4,24}\d\b(?:[ ]?(?:x|ext\.?)[ ]?\d{1,5}\b)?))",
)
MONTH_BEFORE = re.compile(rf"\b(?i:{_MONTHS})\.?[ ]$")
SSN = re.compile(r"\d{3}([- .]?)\d{2}\1\d{4}")
DAY_YEAR = re.compile(r"\d{1,2}(?:st|nd|rd|th)?,?[ ]\d{4}")
NUM = re.compile(COMBINED.pattern.rsplit("(?P<NUM>", 1)[1][:-2])

_CONTEXT: dict[str, tuple[str, ...]] = {
    "PHONE_NUMBER": (
        "phone",
        "tel",
        "mobile",
        "cell",
        "call",
        "fax",
        "desk",
        "number",
        "contact",
        "reach",
        "whatsapp",
        "sms",
        "message",
        "answering",
        "dial",
        "ring",
        "telefon",
        "handy",
        "rufnummer",
        "téléphone",
        "telephone",
        "portable",
        "appel",
        "telefono",
        "cellulare",
        "teléfono",
        "móvil",
        "llamar",
        "telefoon",
        "mobiel",
        "bellen",
        "komórk",
        "numer",
        "zadzwo",
    ),
    "US_SSN": ("ssn", "social security", "social-security"),
    "US_DRIVER_LICENSE": (
        "driver's license",
        "drivers license",
        "driver license",
        "driving licence",
        "driver's licence",
        "dl#",
        "dl no",
    ),
    "DE_TAX_ID": ("steuer", "idnr", "identifikationsnummer", "tax id", "tin", "steuernummer"),
    "NL_BSN": ("bsn", "burgerservicenummer", "sofinummer", "sofi"),
    "PL_PESEL": ("pesel",),
    "FR_NIR": ("nir", "sécurité sociale", "securite sociale", "insee", "numéro de sécu", "carte vitale"),
    "CREDIT_CARD": (
        "card",
        "credit",
        "visa",
        "mastercard",
        "amex",
        "cc",
        "karte",
        "carte",
        "tarjeta",
        "carta",
        "kaart",
        "karta",
    ),
    "DATE_OF_BIRTH": (
        "born",
        "birth",
        "dob",
        "d.o.b",
        "birthday",
        "geboren",
        "geburt",
        "né le",
        "née le",
        "naissance",
        "nato il",
        "nata il",
        "nascita",
        "nacido",
        "nacida",
        "nacimiento",
        "geboortedatum",
        "urodzon",
        "data urodzenia",
    ),
}


# Context words must start a word ("tel" is not in "Intelius").
_CONTEXT_RE = {
    e: re.compile(r"(?<![^\W\d_])(?:" + "|".join(map(re.escape, words)) + ")")
    for e, words in _CONTEXT.items()
}


def has_context(text: str, start: int, entity: str) -> bool:
    return _CONTEXT_RE[entity].search(text[max(0, start - 48) : start].lower()) is not None


def digits_of(s: str) -> str:
    return "".join(c for c in s if c.isdigit())
