"""Runs the policies in the order the policy bundle lists them.

Requests travel forward through the list; responses, streams and completion travel back in
reverse. A policy in shadow mode never rejects: a ``PolicyDenied`` it raises is recorded as
``would_deny`` and the request continues unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.errors import PolicyDenied
from gateway.policy import Context, Policy, Target
from gateway.sse import Event

log = logging.getLogger("gateway.chain")


class Chain:
    def __init__(self, policies: Sequence[Policy[Any]] = ()) -> None:
        self.policies = tuple(policies)
        self._reversed = tuple(reversed(self.policies))

    def _shadowed(self, policy: Policy[Any], ctx: Context, exc: PolicyDenied) -> None:
        # Denial messages are written by policies and never carry PII, so they may serve as the reason.
        ctx.record(policy.name, "would_deny", code=exc.code, status=exc.status, reason=exc.message)

    @staticmethod
    def _denied(policy: Policy[Any], ctx: Context, exc: PolicyDenied, **facts: Any) -> None:
        # Every refusal is a decision (audit, explain, coverage), unless the policy recorded its own.
        if not any(d.policy == policy.name and d.action == "deny" for d in ctx.decisions):
            ctx.record(policy.name, "deny", code=exc.code, status=exc.status, **facts)

    async def request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        for policy in self.policies:
            try:
                request = await policy.on_request(ctx, request)
            except PolicyDenied as exc:
                if policy.mode != "shadow":
                    self._denied(policy, ctx, exc)
                    raise
                self._shadowed(policy, ctx, exc)
        return request

    async def attempt(self, ctx: Context, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        for policy in self.policies:
            try:
                request = await policy.on_attempt(ctx, target, request)
            except PolicyDenied as exc:
                if policy.mode != "shadow":
                    self._denied(policy, ctx, exc, hop=target.name)
                    raise
                self._shadowed(policy, ctx, exc)
        return request

    def reads_response(self, ctx: Context) -> bool:
        return any(p.reads_response(ctx) for p in self.policies)

    async def response(self, ctx: Context, response: dict[str, Any]) -> dict[str, Any]:
        for policy in self._reversed:
            response = await policy.on_response(ctx, response)
        return response

    def stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        for policy in self._reversed:
            events = policy.on_stream(ctx, events)
        return events

    async def complete(self, ctx: Context) -> None:
        # Completion hooks run after the client has its answer; one failing must not skip the rest.
        for policy in self._reversed:
            try:
                await policy.on_complete(ctx)
            except Exception:
                log.exception("on_complete failed", extra={"policy": policy.name, "request_id": ctx.request_id})
