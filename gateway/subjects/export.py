"""Export of what one tenant holds about one data subject (GDPR Art. 15), as JSON values.

Consents, usage ledger rows, the audit decisions of the subject's requests (linked through the
subject's keys), and the RAG documents tagged with the subject (sources and chunk counts, not their
text). Records hold no prompt or answer text, so none is exported.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.identity import pseudonymiser
from gateway.store.db import utcnow
from gateway.store.subject_keys import links
from gateway.subjects import held
from gateway.subjects.erase import Stores

_LEDGER = (
    "request_id",
    "at",
    "app",
    "endpoint",
    "model",
    "deployment",
    "jurisdiction",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_eur",
    "estimated",
    "status",
)
_AUDIT = ("request_id", "at", "app", "model", "endpoint", "deployment", "jurisdiction", "fallback", "status")


async def export(stores: Stores, *, tenant: str, subject_id: str) -> dict[str, Any] | None:
    """Everything held about the subject in the tenant, or None when nothing is."""
    pseudonym = pseudonymiser(stores.config.server.secret_key)(subject_id)
    engine = stores.engine
    if stores.before is not None:
        await asyncio.to_thread(stores.before)

    def sql() -> tuple[list[Any], list[Any], list[Any]]:
        found = links(engine, tenant, pseudonym)
        return (
            held.consents(engine, tenant, pseudonym),
            held.ledger(engine, tenant, found),
            held.audit(engine, tenant, found),
        )

    consents, ledger, audit = await asyncio.to_thread(sql)
    rag = stores.rag()
    try:
        documents = await rag.subject_sources(tenant, pseudonym) if rag is not None else []
    finally:
        if rag is not None:
            await rag.close()
    if not (consents or ledger or audit or documents):
        return None
    return {
        "tenant": tenant,
        "subject_pseudonym": pseudonym,
        "generated_at": utcnow().isoformat(timespec="seconds"),
        "consents": [
            {
                "id": c.id,
                "purpose": c.purpose,
                "granted_at": c.granted_at,
                "expires_at": c.expires_at,
                "withdrawn_at": c.withdrawn_at,
                "evidence_ref": c.evidence_ref,
            }
            for c in consents
        ],
        "usage": [{name: getattr(row, name) for name in _LEDGER} for row in ledger],
        "decisions": [
            {**{name: getattr(row, name) for name in _AUDIT}, "decisions": orjson.loads(row.decisions)}
            for row in audit
        ],
        "documents": [{"collection": c, "source": s, "chunks": n} for c, s, n in documents],
    }
