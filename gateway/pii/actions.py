"""Applying per-type actions to detected spans, with Presidio's anonymizer operators.

``redact`` puts in the request's reversible placeholder, ``hash`` a keyed HMAC pseudonym
(``<EMAIL_ADDRESS:3f9a...>``, stable per tenant), ``mask`` Presidio's mask operator keeping
the last characters, ``allow`` Presidio's keep operator. ``block`` never reaches here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult
from presidio_anonymizer.operators import Mask

from gateway.pii.analyzer import Span
from gateway.pii.placeholders import Vault

Action = Literal["redact", "mask", "hash", "block", "allow"]
ACTIONS: tuple[Action, ...] = ("redact", "mask", "hash", "block", "allow")

_engine = AnonymizerEngine()
_mask = Mask()


class Applier:
    """Rewrites texts for one hop: ``actions`` maps entity type to what happens to it."""

    def __init__(self, actions: Mapping[str, Action], vault: Vault, pseudonym: Callable[[str], str],
                 mask_keep_last: int = 4) -> None:
        self.counts: Counter[tuple[str, Action]] = Counter()
        self._actions = actions
        self._operators: dict[str, OperatorConfig] = {}
        for entity, action in actions.items():
            if action == "redact":
                op = OperatorConfig("custom", {"lambda": lambda v, e=entity: vault.placeholder(e, v)})
            elif action == "hash":
                op = OperatorConfig("custom", {"lambda": lambda v, e=entity: f"<{e}:{pseudonym(f'{e}:{v}')[:16]}>"})
            elif action == "mask":
                op = OperatorConfig("custom", {"lambda": lambda v: _mask.operate(v, {
                    "masking_char": "*", "chars_to_mask": max(len(v) - mask_keep_last, 0), "from_end": False})})
            else:
                op = OperatorConfig("keep")
            self._operators[entity] = op

    def __call__(self, text: str, spans: Sequence[Span]) -> str:
        """The text with every span's action applied; counts what was done."""
        if not spans:
            return text
        results = []
        changed = False
        for span in spans:
            action = self._actions.get(span.entity, "allow")
            self.counts[(span.entity, action)] += 1
            changed = changed or action != "allow"
            results.append(RecognizerResult(span.entity, span.start, span.end, span.score))
        if not changed:
            return text
        return str(_engine.anonymize(text, results, self._operators, merge_entities_with_spaces=False).text)
