"""The entity types and actions of the PII engine, without the engine.

The ``pii_redaction`` policy's Config validates against these; importing this module costs
nothing (no regex library, no validators, no spaCy), so ``gateway config check`` and
``gateway policy check`` never load the engine.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

# Found by the fast path (``gateway.pii.recognizers``).
STRUCTURED = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "URL",
    "US_SSN",
    "US_DRIVER_LICENSE",
    "DATE_TIME",
    "DATE_OF_BIRTH",
    "EU_VAT",
    "DE_TAX_ID",
    "FR_NIR",
    "IT_FISCAL_CODE",
    "ES_NIF",
    "ES_NIE",
    "NL_BSN",
    "PL_PESEL",
)
DEFAULT_PHONE_REGIONS = ("DE", "FR", "IT", "ES", "NL", "PL", "AT", "BE", "GB", "IE", "PT", "SE", "CH", "US")
# Found by spaCy NER (``gateway.pii.ner``), only when one of them is asked for.
NER_ENTITIES = ("PERSON", "LOCATION", "ORGANIZATION", "NRP")

Action = Literal["redact", "mask", "hash", "block", "allow"]
ACTIONS: tuple[Action, ...] = ("redact", "mask", "hash", "block", "allow")


def model_installed(name: str) -> bool:
    """Whether the spaCy model package ``name`` is installed (found, not imported)."""
    return importlib.util.find_spec(name) is not None
