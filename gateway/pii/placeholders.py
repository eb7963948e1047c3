"""Reversible placeholders: ``<PERSON_1>`` out, the original value back in the answer.

A ``Vault`` lives for one request. It hands out one placeholder per distinct (type, value)
and restores placeholders in model output, tolerating what models do to them:

- any letter case: ``<person_1>``, ``<Person_1>``;
- any of the brackets ``<>``, ``[]``, ``{}`` on either side, mixed or not: ``[PERSON_1]``;
- up to two spaces or tabs inside the brackets: ``< PERSON_1 >``;
- ``_``, ``-``, a space or nothing between the words and before the number:
  ``[person 1]``, ``<EMAIL-ADDRESS-2>``, ``<EmailAddress2>``.

Bare ``PERSON_1`` without brackets, doubled brackets ``<<PERSON_1>>`` (the inner one is
restored, the outer brackets stay) and HTML-escaped ``&lt;PERSON_1&gt;`` are not restored.

``StreamRestorer`` does the same on a stream of text fragments: it emits everything at once
except a trailing possible placeholder prefix, which is never longer than ``MAX_HOLD``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    import regex

MAX_HOLD = 64


def json_escape(value: str) -> str:
    """The value as it must appear inside a JSON string literal."""
    return orjson.dumps(value).decode()[1:-1]


_SEPARATORS = re.compile(r"[ _-]")


def _name_pattern(name: str) -> str:
    return "[ _-]?".join(re.escape(part) for part in name.split("_"))


class Vault:
    """One request's placeholder <-> value map. Never logged, never stored."""

    def __init__(self, entity_types: Iterable[str]) -> None:
        names = sorted(set(entity_types), key=len, reverse=True)
        alternatives = "|".join(_name_pattern(n) for n in names)
        import regex  # with the first vault (pii_redaction makes one when a chain is built), not on import

        self.pattern = regex.compile(
            rf"[<\[{{][ \t]{{0,2}}(?P<name>(?i:{alternatives}))[ _-]?(?P<num>\d{{1,4}})[ \t]{{0,2}}[>\]}}]"
        )
        self._placeholder: dict[tuple[str, str], str] = {}
        self._value: dict[str, str] = {}  # normalised key ("EMAILADDRESS2") -> value
        self._count: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._value)

    def placeholder(self, entity: str, value: str) -> str:
        """The placeholder for this value; the same value always gets the same one."""
        found = self._placeholder.get((entity, value))
        if found is None:
            n = self._count[entity] = self._count.get(entity, 0) + 1
            found = self._placeholder[(entity, value)] = f"<{entity}_{n}>"
            self._value[f"{entity.replace('_', '')}{n}"] = value
        return found

    def _lookup(self, m: regex.Match[str], escape: Callable[[str], str] | None) -> str:
        key = _SEPARATORS.sub("", m["name"]).upper() + str(int(m["num"]))
        value = self._value.get(key)
        if value is None:
            return str(m[0])
        return escape(value) if escape else value

    def restore(self, text: str, escape: Callable[[str], str] | None = None) -> str:
        """Replace every placeholder this vault issued; ``escape`` encodes values (e.g. for JSON)."""
        if not self._value or not text:
            return text
        return str(self.pattern.sub(lambda m: self._lookup(m, escape), text))

    def hold_from(self, text: str) -> int:
        """Index where a possible placeholder prefix starts at the end of ``text`` (len if none)."""
        start = max(0, len(text) - MAX_HOLD)
        for i in range(start, len(text)):
            if text[i] in "<[{":
                m = self.pattern.fullmatch(text, i, partial=True)
                if m is not None and m.partial:
                    return i
        return len(text)


class StreamRestorer:
    """Restores placeholders across fragment boundaries, holding back at most MAX_HOLD chars."""

    __slots__ = ("_escape", "_held", "_vault")

    def __init__(self, vault: Vault, escape: Callable[[str], str] | None = None) -> None:
        self._vault = vault
        self._escape = escape
        self._held = ""

    @property
    def held(self) -> str:
        return self._held

    def feed(self, fragment: str) -> str:
        """Text that can be sent now, placeholders restored."""
        buf = self._held + fragment
        cut = self._vault.hold_from(buf)
        self._held = buf[cut:]
        return self._vault.restore(buf[:cut], self._escape)

    def flush(self) -> str:
        """Whatever is held back, at the end of the stream."""
        rest, self._held = self._held, ""
        return self._vault.restore(rest, self._escape)
