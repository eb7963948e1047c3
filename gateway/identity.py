"""Subject pseudonyms: the one place a data subject's id is turned into what the gateway stores.

Consent rows, audit records and ledger rows hold ``pseudonym(subject)``, never the subject id.
The pseudonym is an HMAC-SHA256 of the id under ``server.secret_key``, so it is stable for one
deployment and cannot be recomputed without the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

DEV_SECRET = "execai-dev-secret-change-me"  # used when server.secret_key is empty (development only)


def pseudonymiser(secret_key: str) -> Callable[[str], str]:
    """The subject pseudonym function for a configured secret."""
    key = (secret_key or DEV_SECRET).encode()
    return lambda subject: hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()[:32]


def signer(secret_key: str, purpose: bytes) -> Callable[[bytes], str]:
    """HMAC-SHA256 (hex) under a key derived from the secret for one ``purpose`` (erasure receipts, audit
    checkpoints): a signature made for one purpose never verifies for another."""
    key = hmac.new((secret_key or DEV_SECRET).encode(), purpose, hashlib.sha256).digest()
    return lambda message: hmac.new(key, message, hashlib.sha256).hexdigest()
