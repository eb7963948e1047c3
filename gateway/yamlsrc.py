"""YAML loading that remembers where every value came from.

Validation errors must name the file, the line and the dotted path of the bad value, so we
compose the YAML node tree once and keep a ``path -> line`` map beside the plain data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration file is invalid; ``str()`` lists ``file:line: dotted.path: reason`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Source:
    path: str
    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        # Walk up: a missing key is reported at its parent mapping.
        while True:
            if loc in self.lines:
                return self.lines[loc]
            if not loc:
                return None
            loc = loc[:-1]

    def where(self, loc: tuple[str | int, ...]) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else self.path


def dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _expand_env(value: str, loc: tuple[str | int, ...], missing: list[tuple[str | int, ...]]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        missing.append((*loc, name))
        return ""

    return _ENV.sub(sub, value)


def load(path: str | Path, *, expand_env: bool = True) -> Source:
    """Parse ``path``; raise ConfigError for YAML syntax errors or unset ``${VARS}``."""
    text = Path(path).read_text(encoding="utf-8")
    return loads(text, str(path), expand_env=expand_env)


def loads(text: str, name: str, *, expand_env: bool = True) -> Source:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"{name}{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    lines: dict[tuple[str | int, ...], int] = {}
    missing: list[tuple[str | int, ...]] = []

    def build(n: yaml.Node | None, loc: tuple[str | int, ...]) -> Any:
        if n is None:
            return None
        lines[loc] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            # `<<: *anchor` merge keys: PyYAML's own flattening, which keeps each merged node's line.
            try:
                yaml.SafeLoader(" ").flatten_mapping(n)
            except yaml.constructor.ConstructorError as exc:
                raise ConfigError([f"{name}:{lines[loc]}: {dotted(loc)}: {exc.problem}"]) from None
            out: dict[Any, Any] = {}
            for k, v in n.value:
                key = (
                    yaml.SafeLoader(" ").construct_object(k)
                    if not isinstance(k, yaml.ScalarNode)
                    else k.value
                )
                out[key] = build(v, (*loc, key))
                lines[(*loc, key)] = k.start_mark.line + 1
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(v, (*loc, i)) for i, v in enumerate(n.value)]
        value = yaml.SafeLoader(" ").construct_object(n)
        if expand_env and isinstance(value, str) and "${" in value:
            # The value stays a string (`0123` is not the octal 83, `on` is not True); the settings
            # models coerce it where a number or a flag is expected, so `${PORT:-8080}` is still a port.
            value = _expand_env(value, loc, missing)
        return value

    data = build(node, ())
    if missing:
        raise ConfigError(
            [
                f"{name}:{lines.get(m[:-1], '?')}: {dotted(m[:-1])}: environment variable {m[-1]} is not set"
                for m in missing
            ]
        )
    return Source(name, {} if data is None else data, lines)


def error_items(exc: ValidationError) -> list[tuple[tuple[str | int, ...], str]]:
    """Each error of a pydantic validation as (location, message): validator-function frames
    dropped from the location, pydantic's "Value error, " prefix dropped, an extra key called
    "unknown key"."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        out.append((loc, msg))
    return out


def problems_of(exc: ValidationError, src: Source, prefix: tuple[str | int, ...] = ()) -> list[str]:
    """Turn a pydantic error into ``file:line: dotted.path: message`` lines."""
    return [
        f"{src.where((*prefix, *loc))}: {dotted((*prefix, *loc))}: {msg}" for loc, msg in error_items(exc)
    ]
