"""Signed erasure receipts: the JSON an erasure returns, and how ``gateway subject verify-receipt``
checks it.

The signature is an HMAC-SHA256 over the receipt's canonical JSON (sorted keys, no whitespace,
without the ``signature`` member), under a key derived from ``server.secret_key``. Whoever holds the
gateway's secret can check a receipt; a changed count, time, tenant or job id fails.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from gateway.identity import signer

KIND = "execai.subject_erasure.v1"
ALG = "HMAC-SHA256"


class ReceiptError(ValueError):
    """The receipt is malformed, or its signature does not match."""


PURPOSE = b"execai erasure receipt v1"


def _canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign(body: dict[str, Any], secret_key: str) -> dict[str, Any]:
    """The receipt: ``body`` (JSON values only) with its signature."""
    digest = signer(secret_key, PURPOSE)(_canonical(body))
    return {**body, "signature": {"alg": ALG, "value": digest}}


def verify(raw: bytes, secret_key: str) -> dict[str, Any]:
    """The receipt in ``raw`` once its signature checks; raises ReceiptError saying what is wrong."""
    try:
        receipt = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReceiptError(f"not JSON ({exc})") from None
    if not isinstance(receipt, dict):
        raise ReceiptError("not a JSON object")
    if receipt.get("kind") != KIND:
        raise ReceiptError(f"'kind' is not {KIND!r}")
    signature = receipt.get("signature")
    if (
        not isinstance(signature, dict)
        or signature.get("alg") != ALG
        or not isinstance(signature.get("value"), str)
    ):
        raise ReceiptError(f'\'signature\' must be {{"alg": {ALG!r}, "value": <hex>}}')
    body = {k: v for k, v in receipt.items() if k != "signature"}
    expected = signer(secret_key, PURPOSE)(_canonical(body))
    if not hmac.compare_digest(expected, signature["value"]):
        raise ReceiptError(
            "the signature does not match: the receipt was changed, or signed with another secret"
        )
    return receipt
