"""Policy plugins, one module each. ``REGISTRY`` maps a YAML section name to its class.

``load_all`` imports every module here, and `gateway config check` and `policy check` only validate
Configs, so a policy module must be cheap to import: engines and storage clients (spaCy, SQLAlchemy,
Redis, numpy, ...) are imported by the instance that uses them, or live in another module that the
policy's ``__new__`` imports (``pii_redaction``). tests/test_startup_imports.py checks this.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from gateway.policy import Policy

REGISTRY: dict[str, type[Policy[Any]]] = {}


def register(cls: type[Policy[Any]]) -> type[Policy[Any]]:
    REGISTRY[cls.name] = cls
    return cls


def load_all() -> dict[str, type[Policy[Any]]]:
    """Import every module in this package so each registers its policy."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return REGISTRY
