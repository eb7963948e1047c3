"""Policy plugins, one module each. ``REGISTRY`` maps a YAML section name to its class."""

from __future__ import annotations

from gateway.policy import Policy

REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    REGISTRY[cls.name] = cls
    return cls
