"""Subject pseudonyms (gateway/identity.py): stable per secret, unlinkable across secrets."""

from __future__ import annotations

from gateway.identity import pseudonymiser


def test_a_pseudonym_is_the_hmac_of_the_subject_under_the_secret() -> None:
    # Pinned: consent rows and audit records written by earlier versions must keep matching.
    assert pseudonymiser("")("alice") == "246c27524d0378251cf430860357d530"  # the development secret
    assert pseudonymiser("k1")("alice") == "aff3e2227d2581aeb66e413f8c39d1e2"
    assert pseudonymiser("k1")("alice") != pseudonymiser("k2")("alice")
    assert pseudonymiser("k1")("bob") != pseudonymiser("k1")("alice")
