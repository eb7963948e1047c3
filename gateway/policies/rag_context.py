"""rag_context: retrieve the tenant's chunks for the last user message and inject them.

Apps may steer retrieval with the request field ``gateway_rag`` (see ``Hints``); the field
is validated and never forwarded upstream. Citations go back in ``x-gateway-rag-sources``
and in the decision record, never into the answer. Runs before pii_redaction in the chain,
so injected text is redacted like the rest of the prompt.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway import metrics
from gateway.policies import register
from gateway.policy import Context, Policy, PolicyDenied
from gateway.rag.base import Hit, Query, Scalar
from gateway.rag.runtime import Rag, open_store
from gateway.rag.text import tokenizer

HINTS = "gateway_rag"
HEADER = "x-gateway-rag-sources"
FilterValue = Scalar | list[Scalar]


class Hints(BaseModel):
    """The optional request extension ``gateway_rag``."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="False: no retrieval for this request.")
    query: str | None = Field(
        None, min_length=1, max_length=4000, description="Search text instead of the last user message."
    )
    top_k: int | None = Field(
        None, ge=1, le=50, description="Fewer chunks than the policy's top_k (never more)."
    )
    filters: dict[str, FilterValue] = Field(
        {}, description="Metadata filters, only on properties the policy lists."
    )


@register
class RagContext(Policy["RagContext.Config"]):
    """Retrieves the tenant's chunks for the last user message and injects them into the prompt."""

    name = "rag_context"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        collection: str = Field(
            ...,
            pattern=r"^[a-z][a-z0-9_]{0,62}$",
            description="Collection to search (config.yaml rag.collections).",
        )
        top_k: int = Field(4, ge=1, le=50, description="Most chunks retrieved per request.")
        search: Literal["vector", "hybrid", "bm25"] = Field(
            "vector", description="Search mode: vector similarity, hybrid (vector + BM25) or bm25 keywords."
        )
        alpha: float = Field(
            0.5, ge=0, le=1, description="Hybrid only: weight of vector similarity against BM25."
        )
        max_distance: float | None = Field(
            None, ge=0, le=2, description="Vector and hybrid: drop chunks farther than this cosine distance."
        )
        min_score: float | None = Field(
            None, description="Drop hits scoring below this (similarity, BM25 or fused score)."
        )
        filters: dict[str, FilterValue] = Field(
            {}, description="Metadata filters always applied (value, or list meaning any of)."
        )
        request_filters: list[str] = Field(
            [], description="Metadata properties apps may filter on via gateway_rag.filters."
        )
        template: str = Field(
            "Answer using the context below when it is relevant. Cite sources by their [n].\n\n{context}",
            description="Injected message; `{context}` is replaced by the formatted chunks.",
        )
        chunk_template: str = Field(
            "[{n}] ({source})\n{text}", description="One chunk; placeholders {n}, {id}, {source}, {text}."
        )
        placement: Literal["system", "before_last_user"] = Field(
            "system",
            description="`system`: appended to the first system message (or a new one); `before_last_user`: a new message just before the last user message.",
        )
        role: Literal["system", "user"] = Field(
            "system", description="Role of the message for placement before_last_user."
        )
        max_context_tokens: int = Field(
            1500, ge=16, le=100_000, description="Cap on the injected chunk text, in tokens."
        )
        tokenizer: str = Field(
            "cl100k_base",
            description="tiktoken encoding used to count tokens, or `estimate` (4 chars per token).",
        )
        failure: Literal["fail_open", "fail_closed"] = Field(
            "fail_open",
            description="When retrieval fails: continue without context, or answer 503 rag.unavailable.",
        )
        timeout_ms: int = Field(1000, ge=10, le=60_000, description="Time allowed for embedding plus search.")

        @field_validator("template")
        @classmethod
        def _has_context(cls, v: str) -> str:
            if "{context}" not in v:
                raise ValueError("must contain {context}")
            return v

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        if ctx.endpoint != "chat":
            return request
        hints = self._hints(ctx.rag_hints)
        query = hints.query or _last_user_text(request.get("messages") or [])
        if not hints.enabled or not query:
            return self._outcome(
                ctx, request, "skipped", reason="disabled" if not hints.enabled else "no_query"
            )
        cfg = self.config
        services = self.services
        assert services is not None
        rag = services.shared(
            "rag", lambda: Rag(services.config.rag, open_store(services.config.rag), services.embed)
        )
        if not rag.allows(cfg.collection, ctx.principal.tenant):
            return self._outcome(ctx, request, "denied", status=403, code="rag.collection_not_allowed")
        allowed = ctx.allowed_jurisdictions
        if allowed is not None and rag.store.jurisdiction not in allowed:
            return self._outcome(
                ctx,
                request,
                "residency",
                status=403,
                code="rag.store_not_allowed",
                store_jurisdiction=rag.store.jurisdiction,
            )
        started = time.perf_counter()
        top_k = min(hints.top_k or cfg.top_k, cfg.top_k)
        q = Query(
            tenant=ctx.principal.tenant,
            text=query,
            top_k=top_k,
            mode=cfg.search,
            alpha=cfg.alpha,
            max_distance=cfg.max_distance,
            filters={**hints.filters, **cfg.filters},
        )

        async def retrieve() -> list[Hit]:
            vector = None
            if cfg.search != "bm25" and rag.needs_vectors:
                vector = (await rag.embedder(cfg.collection)([query], allowed))[0]
            return await rag.store.search(cfg.collection, replace(q, vector=vector))

        try:
            hits = await asyncio.wait_for(retrieve(), cfg.timeout_ms / 1000)
        except TimeoutError:
            return self._outcome(ctx, request, "timeout", status=503, code="rag.unavailable")
        except Exception as exc:  # a store failure is the policy's failure mode  # noqa: BLE001
            return self._outcome(
                ctx, request, "error", status=503, code="rag.unavailable", error=type(exc).__name__
            )
        chosen, duplicates, tokens = self._select(hits)
        ms = round((time.perf_counter() - started) * 1000, 2)
        if not chosen:
            return self._outcome(ctx, request, "empty", retrieved=len(hits), ms=ms)
        facts: dict[str, Any] = {
            "search": cfg.search,
            "retrieved": len(hits),
            "injected": len(chosen),
            "duplicates": duplicates,
            "tokens": tokens,
            "ms": ms,
            "chunk_ids": [h.id for h, _ in chosen],
            "sources": [h.source for h, _ in chosen],
        }
        ctx.response_headers[HEADER] = ", ".join(
            f"{h.id};source={quote(h.source, safe='/')}" for h, _ in chosen
        )
        text = cfg.template.replace("{context}", "\n\n".join(t for _, t in chosen))
        messages = _inject(list(request.get("messages") or []), text, cfg.placement, cfg.role)
        return self._outcome(ctx, {**request, "messages": messages}, "injected", **facts)

    def _hints(self, raw: Any) -> Hints:
        if raw is None:
            return Hints()
        try:
            hints = Hints.model_validate(raw)
        except ValidationError:
            raise PolicyDenied(400, "rag.invalid_hints", f"'{HINTS}' is invalid; see docs/rag.md.") from None
        cfg = self.config
        for prop in hints.filters:
            if prop not in cfg.request_filters:
                raise PolicyDenied(
                    400, "rag.filter_not_allowed", f"Filtering on '{prop[:64]}' is not allowed."
                )
        return hints

    def _select(self, hits: list[Hit]) -> tuple[list[tuple[Hit, str]], int, int]:
        """Dedupe by content, format, and stop at max_context_tokens (truncating the last one)."""
        cfg = self.config
        tok = tokenizer(cfg.tokenizer)
        seen: set[str] = set()
        chosen: list[tuple[Hit, str]] = []
        used = duplicates = 0
        for hit in hits:
            if cfg.min_score is not None and hit.score < cfg.min_score:
                continue
            if hit.content_hash in seen or hit.id in seen:
                duplicates += 1
                continue
            seen.update((hit.content_hash, hit.id))
            piece = (
                cfg.chunk_template.replace("{n}", str(len(chosen) + 1))
                .replace("{id}", hit.id)
                .replace("{source}", hit.source)
                .replace("{text}", hit.text)
            )
            cost = tok.count(piece)
            if used + cost > cfg.max_context_tokens:
                room = cfg.max_context_tokens - used
                if room >= 32:  # a stub of a chunk is noise, not context
                    piece = tok.truncate(piece, room)
                    chosen.append((hit, piece))
                    used += tok.count(piece)
                break
            chosen.append((hit, piece))
            used += cost
        return chosen, duplicates, used

    def _outcome(
        self,
        ctx: Context,
        request: dict[str, Any],
        outcome: str,
        *,
        status: int = 0,
        code: str = "",
        **facts: Any,
    ) -> dict[str, Any]:
        """Record the decision; on a failure in fail_closed, raise ``PolicyDenied(status, code)``."""
        cfg = self.config
        metrics.RAG_RETRIEVALS.labels(outcome).inc()
        if code and cfg.failure == "fail_closed":
            ctx.record(self.name, "deny", outcome=outcome, code=code, collection=cfg.collection, **facts)
            raise PolicyDenied(status, code, "Retrieval of context is not available for this request.")
        ctx.record(self.name, outcome, collection=cfg.collection, **({"code": code} if code else {}), **facts)
        return request


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
            return content.strip() if isinstance(content, str) else ""
    return ""


def _inject(messages: list[Any], text: str, placement: str, role: str) -> list[Any]:
    if placement == "system":
        first = messages[0] if messages else None
        if (
            isinstance(first, dict)
            and first.get("role") == "system"
            and isinstance(first.get("content"), str)
        ):
            return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
        return [{"role": "system", "content": text}, *messages]
    last = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), default=0
    )
    return [*messages[:last], {"role": role, "content": text}, *messages[last:]]
