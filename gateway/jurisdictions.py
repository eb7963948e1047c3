"""Jurisdiction codes that policies and deployments may name."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

KNOWN = frozenset({"EU", "EEA", "CH", "UK", "US", "CA", "JP", "KR", "AU", "IN", "SG", "BR", "CN"})


def _check(value: str) -> str:
    if value not in KNOWN:
        raise ValueError(f"unknown jurisdiction {value!r} (known: {', '.join(sorted(KNOWN))})")
    return value


Jurisdiction = Annotated[str, AfterValidator(_check)]
