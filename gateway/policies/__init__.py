"""Policy plugins, one module each. ``REGISTRY`` maps a YAML section name to its class."""

from __future__ import annotations

import importlib
import pkgutil

from gateway.policy import Policy

REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    REGISTRY[cls.name] = cls
    return cls


def load_all() -> dict[str, type[Policy]]:
    """Import every module in this package so each registers its policy."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return REGISTRY
