"""Counts tokens, enforces budgets and rate limits, settles cost, and writes the usage ledger.

Settings: ``gateway.accounting.settings``. SQLAlchemy and the ledger's table model are imported only by
an instance that writes the ledger (the gateway's), so `gateway config check` and dry runs do not load them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

from typing_extensions import override

from gateway import metrics, tokens
from gateway.accounting import limits, settings, usage
from gateway.accounting.pricing import FREE
from gateway.accounting.shared import Shared
from gateway.accounting.usage import Pending
from gateway.errors import PolicyDenied
from gateway.policies import register
from gateway.policy import Context, Policy, Run
from gateway.sse import Event
from gateway.store.counters import Counters

T = TypeVar("T")


@register
class TokenAccounting(Policy["TokenAccounting.Config"]):
    """Reserves the estimated cost before forwarding, settles the actual cost after the answer,
    refuses with 429 over a budget or rate limit, and writes one ledger row per request."""

    name: ClassVar[str] = "token_accounting"
    repeatable: ClassVar[bool] = False  # two instances would write two ledger rows per request

    class Config(settings.AccountingSettings):
        """Budgets, rate limits, what happens when Redis is down, the ledger, and leases."""

    @classmethod
    def loosened(cls, before: Any, after: Any) -> list[tuple[tuple[str | int, ...], str]]:
        return settings.loosened(before, after)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = self.config
        self.shared = Shared(self.services, self.cfg.key_prefix)
        # (key id, tenant, app) -> (minute, its checks): windows change on whole minutes at most.
        self._checks_cache: dict[tuple[str, str, str], tuple[int, tuple[limits.Check, ...]]] = {}
        self._mapped = False
        if self.cfg.ledger and self.services is not None and self.services.writer is not None:
            self._map_ledger()

    def _map_ledger(self) -> None:
        from sqlalchemy.orm import configure_mappers

        import gateway.store.ledger  # noqa: F401  (the table model whose rows on_complete builds)

        configure_mappers()  # ledger rows are built with model_construct, which needs mapped classes
        self._mapped = True

    @override
    def start(self, ctx: Context) -> Run:
        return _Request(self)

    async def reserve(self, ctx: Context, pending: Pending, request: dict[str, Any]) -> dict[str, Any]:
        """Count the prompt, price it against every candidate hop and reserve it against the limits."""
        family = tokens.family_of(ctx.candidates[0].deployment) if ctx.candidates else "estimate"
        tok = tokens.loaded(family)
        if tok is None:  # first use of this family: loading takes up to a second
            tok = await asyncio.to_thread(tokens.load, family)
        pending.tokenizer = tok
        if ctx.endpoint == "chat":
            pending.prompt_tokens, _ = tokens.count_chat(tok, request)
            out = request.get("max_completion_tokens") or request.get("max_tokens")
            out = out if isinstance(out, int) and out > 0 else self.cfg.default_max_tokens
            if ctx.stream and not (request.get("stream_options") or {}).get("include_usage"):
                request = {
                    **request,
                    "stream_options": {**(request.get("stream_options") or {}), "include_usage": True},
                }
                pending.strip_usage = True
        else:
            pending.prompt_tokens, out = tokens.count_embeddings(tok, request), 0
        prices = self.shared.prices()
        cost = max(
            (prices.get(t.name, FREE).cost(pending.prompt_tokens, out) for t in ctx.candidates), default=0
        )
        pending.checks = self._checks(ctx)
        if pending.checks:
            amounts = {
                "eur": limits.nano_eur(Decimal(cost)),
                "tokens": pending.prompt_tokens + out,
                "requests": 1,
            }
            pending.limits = [c.limit(amounts[c.unit]) for c in pending.checks]
            await self._reserve(ctx, pending)
        return request

    def _checks(self, ctx: Context) -> tuple[limits.Check, ...]:
        p = ctx.principal
        minute = int(time.time() // 60)
        cached = self._checks_cache.get((p.key_id, p.tenant, p.app))
        if cached is not None and cached[0] == minute:
            return cached[1]
        if len(self._checks_cache) > 10_000:
            self._checks_cache.clear()
        now = limits.utcnow()
        out = limits.checks_of(self.cfg.budgets, self.cfg.rate_limits, p.tenant, p.app, p.key_id, now)
        self._checks_cache[(p.key_id, p.tenant, p.app)] = (int(now.timestamp() // 60), out)
        return out

    async def _reserve(self, ctx: Context, pending: Pending) -> None:
        redis, memory = self.shared.stores()
        store: Counters = redis or memory
        settler = self.shared.settler(store)
        lease = self.cfg.lease
        leases = self.shared.leases(settler) if store is redis and lease.fraction > 0 else None
        topup = None
        if leases is not None:
            if leases.take(pending.limits) or await leases.wait(pending.limits):
                pending.store = store
                return
            topup = leases.ask(pending.limits, lease.fraction, lease.requests)
        settle = settler.take()
        try:
            refused, values, leased = await store.reserve(pending.limits, settle)
        except asyncio.CancelledError:  # the client went away; whether Redis ran the script is unknown
            if leases is not None:
                leases.cancel(pending.limits, topup)  # requests waiting for this top-up must not hang
            raise
        except Exception as exc:
            settler.restore(settle)
            if leases is not None:
                leases.cancel(pending.limits, topup)
            if store is memory:
                raise
            metrics.ACCOUNTING_BACKEND_ERRORS.labels(self.cfg.on_backend_error).inc()
            ctx.record(
                self.name, "backend_error", behaviour=self.cfg.on_backend_error, error=type(exc).__name__
            )
            if self.cfg.on_backend_error == "fail_closed":
                raise PolicyDenied(
                    503,
                    "accounting.unavailable",
                    "Budget accounting is unavailable; try again shortly.",
                    headers={"Retry-After": "5"},
                ) from None
            store, leases = memory, None
            refused, values, leased = await store.reserve(pending.limits)
        if refused >= 0:
            if leases is not None:
                leases.cancel(pending.limits, topup)
            c = pending.checks[refused]
            p = ctx.principal
            metrics.REJECTIONS.labels(
                metrics.tenant_label(p.tenant), metrics.app_label(p.app), c.kind, c.name
            ).inc()
            ctx.record(self.name, "deny", kind=c.kind, limit=c.name, period=c.period)
            code = "budget.exceeded" if c.kind == "budget" else "rate_limit.exceeded"
            raise PolicyDenied(
                429, code, c.message(), headers={"Retry-After": str(c.retry_after(limits.utcnow()))}
            )
        pending.store = store
        if leases is not None:
            leases.granted(pending.limits, leased, lease.seconds, topup)
        limits.publish_gauges(pending.checks, values, self.shared.gauge_times())

    @staticmethod
    async def stream(ctx: Context, pending: Pending, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """The streamed answer's usage into ``ctx.usage``; the gateway's own count when the upstream sends none."""
        async for ev in events:
            if b'"usage"' in ev.data and isinstance(ev.json, dict) and isinstance(ev.json.get("usage"), dict):
                ctx.usage = ev.json["usage"]
                if pending.strip_usage:
                    if not ev.json.get("choices"):
                        continue
                    ev.json = {k: v for k, v in ev.json.items() if k != "usage"}
            elif not ev.is_done:
                pending.chunks.append(ev)  # counted only if the upstream never reports usage
            elif ctx.usage is None and not pending.strip_usage and ctx.target is not None:
                # [DONE], the client asked for usage (stream_options.include_usage) and the upstream sent none
                # (llama.cpp, for one): the client gets the gateway's own count, marked as an estimate.
                prompt, completion = pending.estimate({})
                ctx.usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "estimated": True,
                }
                last = next((ev.json for ev in reversed(pending.chunks) if isinstance(ev.json, dict)), {})
                yield Event.of(usage.usage_chunk(last, ctx.usage))
            yield ev

    async def settle(self, ctx: Context, pending: Pending) -> None:
        """Charge the answer's actual cost: settle the reservation, count the metrics, write the ledger row."""
        target = ctx.target
        price = self.shared.prices().get(target.name, FREE) if target is not None else FREE
        prompt = completion = cached = 0
        estimated = False
        if target is not None:
            u = ctx.usage or {}
            if u and not u.get("estimated"):
                prompt, completion, cached = usage.tokens_of(u)
            else:
                estimated = True
                prompt, completion = pending.estimate(u)
        cost = price.cost(prompt, completion, cached)
        if target is not None:  # the "why was this charged" answer in the audit record and `policy explain`
            ctx.record(
                self.name,
                "charge",
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=cached,
                cost_eur=str(cost),
                estimated=estimated,
                price_source=price.source,
            )
        if pending.store is not None:
            self._settle(pending, limits.nano_eur(cost), prompt + completion)
        p = ctx.principal
        if target is not None:
            series = self.shared.series(p.tenant, p.app, ctx.model, target.name, target.jurisdiction)
            series[0].inc(prompt)
            series[1].inc(completion)
            if cached:
                series[2].inc(cached)
            series[3].inc(float(cost))
        writer = self.services.writer if self.services is not None else None
        if self.cfg.ledger and writer is not None:
            from gateway.store.db import utcnow
            from gateway.store.ledger import UsageRecord

            if not self._mapped:  # a writer attached after this instance was made
                self._map_ledger()
            writer.put(
                UsageRecord.model_construct(  # fields are ours and typed: skip validation (35 µs)
                    request_id=ctx.request_id,
                    tenant=p.tenant,
                    app=p.app,
                    key_id=p.key_id,
                    subject=ctx.subject_link,
                    endpoint=ctx.route,
                    model=ctx.model,
                    deployment=target.name if target else "none",
                    jurisdiction=target.jurisdiction if target else "none",
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cached_tokens=cached,
                    cost_eur=cost,
                    estimated=estimated,
                    fx_rate=price.fx_rate,
                    price_source=price.source,
                    status=ctx.status,
                    at=utcnow(),
                    latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
                )
            )

    def _settle(self, pending: Pending, nano: int, actual_tokens: int) -> None:
        assert pending.store is not None
        deltas = [
            (lim.key, (nano if c.unit == "eur" else actual_tokens) - lim.amount)
            for c, lim in zip(pending.checks, pending.limits, strict=True)
            if c.unit != "requests"
        ]
        self.shared.settler(pending.store).add(
            deltas
        )  # sent with the next reservation (accounting/settle.py)


class _Request(Run):
    """One request's accounting: what was counted and reserved, settled once the answer is known."""

    __slots__ = ("pending", "policy")

    def __init__(self, policy: TokenAccounting) -> None:
        self.policy = policy
        self.pending = Pending()

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        return await self.policy.reserve(ctx, self.pending, request)

    def reads_response(self, ctx: Context) -> bool:
        return ctx.stream  # non-streamed usage is found in the relayed bytes without parsing them

    def on_stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        return self.policy.stream(ctx, self.pending, events)

    async def on_complete(self, ctx: Context) -> None:
        await self.policy.settle(ctx, self.pending)
