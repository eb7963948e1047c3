"""The compliance team's policy bundle: ``policies/*.yaml`` turned into one chain per app.

    version: 1
    defaults:            # every tenant inherits these sections, in this order
      residency: {...}
    tenants:
      hr:
        residency: {...}   # merged over the default section, key by key at every depth
        apps:
          chatbot:
            pii_redaction: {...}

The chain runs the sections in the canonical order (``CANONICAL_ORDER``: residency,
consent_fallback, rag_context, pii_redaction, token_accounting), whatever layer each comes
from. A bundle that wants another order says so with a top-level ``order:`` list, written in
one file; policies it does not name run after those it names, in canonical order.
Every section may set ``mode: enforce | shadow | off``, ``replace: true`` (tenant and app layers)
and ``reason:``. How layers merge and what counts as loosening: ``gateway.layering``. The
bundle's content hash goes into every decision record and into ``/readyz``.
"""

from __future__ import annotations

from gateway.bundle.files import read
from gateway.bundle.model import CANONICAL_ORDER, MODES, Bundle, BundleHolder
from gateway.bundle.parse import load_bundle, order_warnings, parse_bundle, policy_files
from gateway.bundle.reload import load_holder, watch
from gateway.layering import mode_of

__all__ = [
    "CANONICAL_ORDER",
    "MODES",
    "Bundle",
    "BundleHolder",
    "load_bundle",
    "load_holder",
    "mode_of",
    "order_warnings",
    "parse_bundle",
    "policy_files",
    "read",
    "watch",
]
