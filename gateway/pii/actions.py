"""Applying per-type actions to detected spans.

``redact`` puts in the request's reversible placeholder, ``hash`` a keyed HMAC pseudonym
(``<EMAIL_ADDRESS:3f9a...>``, stable per tenant), ``mask`` masks all but the last characters
with ``*``, ``allow`` keeps the value. ``block`` never reaches here.

Spans are applied as Presidio's ``AnonymizerEngine.anonymize`` applied them (with
``merge_entities_with_spaces=False``), without importing Presidio: intersecting spans of one
type are merged, a span contained in another (or with the same indices and a lower score) is
dropped, and replacements are made from the end of the text to its start. A type without an
action becomes ``<TYPE>`` (Presidio's default operator). ``tests/test_pii_presidio_parity.py``
checks the output against Presidio's engine.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.pii.entities import ACTIONS, Action

if TYPE_CHECKING:
    from gateway.pii.analyzer import Span
    from gateway.pii.placeholders import Vault

__all__ = ["ACTIONS", "Action", "Applier", "mask"]

Operator = Callable[[str], str]


def mask(value: str, keep_last: int) -> str:
    """Presidio's mask operator with ``*``, from the start, leaving the last ``keep_last`` characters."""
    n = min(len(value), max(len(value) - keep_last, 0))
    return "*" * n + value[n:]


def _keep(value: str) -> str:
    return value


def _placeholder(vault: Vault, entity: str) -> Operator:
    return lambda value: vault.placeholder(entity, value)


def _hashed(pseudonym: Callable[[str], str], entity: str) -> Operator:
    return lambda value: f"<{entity}:{pseudonym(f'{entity}:{value}')[:16]}>"


class Applier:
    """Rewrites texts for one hop: ``actions`` maps entity type to what happens to it."""

    def __init__(
        self,
        actions: Mapping[str, Action],
        vault: Vault,
        pseudonym: Callable[[str], str],
        mask_keep_last: int = 4,
    ) -> None:
        self.counts: Counter[tuple[str, Action]] = Counter()
        self._actions = actions
        self._operators: dict[str, Operator] = {}
        for entity, action in actions.items():
            if action == "redact":
                self._operators[entity] = _placeholder(vault, entity)
            elif action == "hash":
                self._operators[entity] = _hashed(pseudonym, entity)
            elif action == "mask":
                self._operators[entity] = functools.partial(mask, keep_last=mask_keep_last)
            else:
                self._operators[entity] = _keep

    def __call__(self, text: str, spans: Sequence[Span]) -> str:
        """The text with every span's action applied; counts what was done."""
        if not spans:
            return text
        changed = False
        for span in spans:
            action = self._actions.get(span.entity, "allow")
            self.counts[(span.entity, action)] += 1
            changed = changed or action != "allow"
        if not changed:
            return text
        return self._apply(text, spans)

    def _apply(self, text: str, spans: Sequence[Span]) -> str:
        for span in spans:
            if not 0 <= span.start <= span.end <= len(text):
                raise ValueError(f"span {span.start}:{span.end} outside a text of {len(text)} characters")
        results = _without_conflicts(
            sorted((_Result(*span) for span in spans), key=lambda r: (r.start, r.end))
        )
        # Presidio's TextReplaceBuilder: from the last span back, each replacing the original text
        # up to where the one after it began.
        out, last = text, len(text)
        for r in sorted(results, key=lambda r: r.start, reverse=True):
            op = self._operators.get(r.entity)
            value = text[r.start : r.end]
            out = (
                out[: r.start] + (op(value) if op is not None else f"<{r.entity}>") + out[min(r.end, last) :]
            )
            last = r.start
        return out


@dataclass(slots=True)
class _Result:
    entity: str
    start: int
    end: int
    score: float

    def intersection(self, other: _Result) -> int:
        if self.end < other.start or other.end < self.start:
            return 0
        return min(self.end, other.end) - max(self.start, other.start)


def _without_conflicts(results: list[_Result]) -> list[_Result]:
    """Presidio's conflict removal (``MERGE_SIMILAR_OR_CONTAINED``) of results sorted by (start, end)."""
    if all(r.start < r.end for r in results) and all(
        a.end <= b.start for a, b in itertools.pairwise(results)
    ):
        return results  # the usual case: resolved spans are never empty and never overlap
    # Intersecting results of one type become one: the union of the spans, with the highest score,
    # at the position of the last result merged into it.
    by_type: dict[str, list[tuple[int, _Result]]] = {}
    for position, r in enumerate(results):
        by_type.setdefault(r.entity, []).append((position, r))
    kept: list[tuple[int, _Result]] = []
    for group in by_type.values():
        group.sort(key=lambda item: (item[1].start, item[1].end))
        position, current = group[0]
        for next_position, r in group[1:]:
            if current.intersection(r) == 0:
                kept.append((position, current))
                position, current = next_position, r
                continue
            current.start, current.end = min(current.start, r.start), max(current.end, r.end)
            current.score = max(current.score, r.score)
            position = max(position, next_position)
        kept.append((position, current))
    kept.sort(key=lambda item: item[0])
    merged = [r for _, r in kept]
    # A result contained in another is dropped; of results with equal indices the highest score
    # survives (the last one on a tie).
    order = sorted(range(len(merged)), key=lambda i: (merged[i].start, -merged[i].end))
    dropped: set[int] = set()
    largest_end: int | None = None
    i = 0
    while i < len(order):
        first = merged[order[i]]
        j = i
        while j < len(order) and (merged[order[j]].start, merged[order[j]].end) == (first.start, first.end):
            j += 1
        same = order[i:j]
        if largest_end is not None and largest_end >= first.end:
            dropped.update(same)
        else:
            survivor = max(same, key=lambda k: (merged[k].score, k))
            dropped.update(k for k in same if k != survivor)
        if largest_end is None or first.end > largest_end:
            largest_end = first.end
        i = j
    return [r for k, r in enumerate(merged) if k not in dropped]
