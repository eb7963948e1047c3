"""The DEVELOPMENT upstream: an OpenAI-compatible server with canned answers, for trying and testing.

answers  what it answers (chat, streams in opt-in shapes, embeddings)
server   the HTTP server on loopback (``DevUpstream``) and ``gateway dev-upstream``'s ``main``
"""

from __future__ import annotations

from gateway.dev.answers import report
from gateway.dev.server import DevUpstream, Received, main
from gateway.dev.vectors import embed

__all__ = ["DevUpstream", "Received", "embed", "main", "report"]
