"""Every PII value the tests send. The session-wide log check fails the run if any shows up in a log."""

from __future__ import annotations

# (sentence, [(entity type, value)]) - a hand-labelled EU set with valid check digits.
EU_SENTENCES: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Meine Steuer-ID ist 36574261809 und meine IBAN lautet DE89 3704 0044 0532 0130 00.",
        [("DE_TAX_ID", "36574261809"), ("IBAN_CODE", "DE89 3704 0044 0532 0130 00")],
    ),
    (
        "Rechnung an USt-IdNr. DE136695976, Rückfragen unter +49 30 12345678.",
        [("EU_VAT", "DE136695976"), ("PHONE_NUMBER", "+49 30 12345678")],
    ),
    (
        "Herr Weber ist geboren am 12.03.1985 und per Mail an klaus.weber@beispiel.de erreichbar.",
        [("DATE_OF_BIRTH", "12.03.1985"), ("EMAIL_ADDRESS", "klaus.weber@beispiel.de")],
    ),
    (
        "Mon numéro de sécurité sociale est 2 95 10 99 126 111 93, né le 3 mars 1985.",
        [("FR_NIR", "2 95 10 99 126 111 93"), ("DATE_OF_BIRTH", "3 mars 1985")],
    ),
    (
        "Virement sur FR14 2004 1010 0505 0001 3M02 606, TVA FR40303265045, téléphone +33 1 42 68 53 00.",
        [
            ("IBAN_CODE", "FR14 2004 1010 0505 0001 3M02 606"),
            ("EU_VAT", "FR40303265045"),
            ("PHONE_NUMBER", "+33 1 42 68 53 00"),
        ],
    ),
    (
        "Il codice fiscale del cliente è RCCMNL83S18D969H, IBAN IT60 X054 2811 1010 0000 0123 456.",
        [("IT_FISCAL_CODE", "RCCMNL83S18D969H"), ("IBAN_CODE", "IT60 X054 2811 1010 0000 0123 456")],
    ),
    (
        "Partita IVA IT00743110157, chiamare il +39 06 6982 0000.",
        [("EU_VAT", "IT00743110157"), ("PHONE_NUMBER", "+39 06 6982 0000")],
    ),
    (
        "Mi DNI es 54362315K y el NIE de mi esposa es X2482300W.",
        [("ES_NIF", "54362315K"), ("ES_NIE", "X2482300W")],
    ),
    (
        "Transferencia a ES91 2100 0418 4502 0005 1332, teléfono +34 912 345 678.",
        [("IBAN_CODE", "ES91 2100 0418 4502 0005 1332"), ("PHONE_NUMBER", "+34 912 345 678")],
    ),
    (
        "Mijn BSN is 111222333 en mijn rekening NL91 ABNA 0417 1643 00.",
        [("NL_BSN", "111222333"), ("IBAN_CODE", "NL91 ABNA 0417 1643 00")],
    ),
    (
        "Bel me op 06 12345678 of mail naar j.devries@voorbeeld.nl.",
        [("PHONE_NUMBER", "06 12345678"), ("EMAIL_ADDRESS", "j.devries@voorbeeld.nl")],
    ),
    (
        "Mój PESEL to 44051401359, konto PL61 1090 1014 0000 0712 1981 2874.",
        [("PL_PESEL", "44051401359"), ("IBAN_CODE", "PL61 1090 1014 0000 0712 1981 2874")],
    ),
    (
        "NIP PL5260250995, telefon +48 22 123 45 67, karta 4111 1111 1111 1111.",
        [
            ("EU_VAT", "PL5260250995"),
            ("PHONE_NUMBER", "+48 22 123 45 67"),
            ("CREDIT_CARD", "4111 1111 1111 1111"),
        ],
    ),
    (
        "The server at 192.168.17.42 was accessed from 2001:db8::8a2e:370:7334 yesterday.",
        [("IP_ADDRESS", "192.168.17.42"), ("IP_ADDRESS", "2001:db8::8a2e:370:7334")],
    ),
]

EMAIL = "anna.schmidt@example.de"
IBAN = "DE89 3704 0044 0532 0130 00"
CARD = "4111 1111 1111 1111"
PERSON = "Anna Schmidt"
# Synthetic names in the person-cue tests of test_pii_ner.py.
CUE_PEOPLE = ["Oskarina Vellemo", "Ilvaro Quennet", "Ysolde", "Perrine", "Varsenka", "Brunhald Okkerveen"]

PII_VALUES: list[str] = sorted(
    {EMAIL, IBAN, CARD, PERSON, *CUE_PEOPLE}
    | {value for _, labels in EU_SENTENCES for _, value in labels}
    | {value.replace(" ", "") for _, labels in EU_SENTENCES for _, value in labels if len(value) > 12}
)
