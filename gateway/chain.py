"""Runs the policies in the order the policy bundle lists them.

Requests travel forward through the list; responses, streams and completion travel back in
reverse. ``Chain.start(ctx)`` makes one ``Pass`` per request, holding each policy's ``Run``.

Shadow mode lives here alone. A policy in shadow mode runs every hook on a copy of the context
and of the request or response; what it changed is discarded, and each decision it recorded is
kept as ``would_<action>`` (a refusal as ``would_deny``), so it never rejects, narrows or edits
anything. A shadow run sees a streamed answer after the stream ends, from a copy of its events.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

import orjson

from gateway.errors import PolicyDenied
from gateway.policy import Context, Policy, Run, Target
from gateway.sse import Event

log = logging.getLogger("gateway.chain")


class Chain:
    """An app's policies in order; ``shadow`` holds those (of ``policies``) that run in shadow mode."""

    def __init__(self, policies: Sequence[Policy[Any]] = (), shadow: Collection[Policy[Any]] = ()) -> None:
        self.policies = tuple(policies)
        self.shadow = frozenset(map(id, shadow))

    def is_shadow(self, policy: Policy[Any]) -> bool:
        return id(policy) in self.shadow

    def start(self, ctx: Context) -> Pass:
        return Pass(ctx, [(p.name, p.start(ctx), id(p) in self.shadow) for p in self.policies])


def _copy(body: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON body (parsed JSON only), for a shadow run to change freely."""
    copied: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return copied


def _fork(ctx: Context) -> Context:
    """The context as a shadow run sees it: the same facts, its own containers, no decisions yet."""
    return replace(
        ctx,
        candidates=list(ctx.candidates),
        consents=dict(ctx.consents),
        withheld=list(ctx.withheld),
        decisions=[],
        attempts=list(ctx.attempts),
        response_headers=dict(ctx.response_headers),
        usage=dict(ctx.usage) if ctx.usage is not None else None,
    )


async def _drain(ctx: Context, run: Run, events: list[Event]) -> None:
    """Run ``events`` through ``run.on_stream`` and drop what comes out."""

    async def replay() -> AsyncIterator[Event]:
        for event in events:
            yield event

    async for _ in run.on_stream(ctx, replay()):
        pass


class Pass:
    """One request's way through the chain."""

    __slots__ = ("_reversed", "ctx", "steps")

    def __init__(self, ctx: Context, steps: list[tuple[str, Run, bool]]) -> None:
        self.ctx = ctx
        self.steps = steps  # (policy name, its run, shadow?)
        self._reversed = steps[::-1]

    @staticmethod
    def _denied(name: str, ctx: Context, exc: PolicyDenied, **facts: Any) -> None:
        # Every refusal is a decision (audit, explain, coverage), unless the policy recorded its own.
        if not any(d.policy == name and d.action == "deny" for d in ctx.decisions):
            ctx.record(name, "deny", code=exc.code, status=exc.status, **facts)

    async def _shadow(self, name: str, hook: Callable[..., Awaitable[object]], *args: Any) -> None:
        """``hook(copy of ctx, *args)``, its decisions kept as ``would_*`` and its changes dropped."""
        fork = _fork(self.ctx)
        try:
            await hook(fork, *args)
        except PolicyDenied as exc:
            # Denial messages are written by policies and never carry PII, so they may serve as the reason.
            own = next((d for d in fork.decisions if d.policy == name and d.action == "deny"), None)
            if own is None:
                fork.record(name, "deny", code=exc.code, status=exc.status, reason=exc.message)
            else:
                own.facts.update(code=exc.code, status=exc.status, reason=exc.message)
        for d in fork.decisions:
            self.ctx.record(d.policy, f"would_{d.action}", **d.facts)

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        for name, run, shadow in self.steps:
            if shadow:
                await self._shadow(name, run.on_request, _copy(request))
                continue
            try:
                request = await run.on_request(ctx, request)
            except PolicyDenied as exc:
                self._denied(name, ctx, exc)
                raise
        return request

    async def attempt(self, target: Target, request: dict[str, Any]) -> dict[str, Any]:
        ctx = self.ctx
        for name, run, shadow in self.steps:
            if shadow:
                await self._shadow(name, run.on_attempt, target, _copy(request))
                continue
            try:
                request = await run.on_attempt(ctx, target, request)
            except PolicyDenied as exc:
                self._denied(name, ctx, exc, hop=target.name)
                raise
        return request

    def reads_response(self) -> bool:
        return any(run.reads_response(self.ctx) for _, run, _ in self.steps)

    async def response(self, response: dict[str, Any]) -> dict[str, Any]:
        for name, run, shadow in self._reversed:
            if not shadow:
                response = await run.on_response(self.ctx, response)
            elif run.reads_response(self.ctx):
                await self._shadow(name, run.on_response, _copy(response))
        return response

    def stream(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        for name, run, shadow in self._reversed:
            if not shadow:
                events = run.on_stream(self.ctx, events)
            elif run.reads_response(self.ctx):
                events = self._tee(name, run, events)
        return events

    async def _tee(self, name: str, run: Run, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Relay ``events`` unchanged; at ``[DONE]`` (before it goes out, so the records hold the result) or at
        the end, replay copies of them through the shadow run."""
        copies: list[Event] = []
        replayed = False
        async for event in events:
            copies.append(Event(event.data, event.event, event.id))
            if event.is_done and not replayed:
                replayed = True
                await self._shadow(name, _drain, run, copies)
            yield event
        if not replayed:
            await self._shadow(name, _drain, run, copies)

    async def complete(self) -> None:
        # Completion hooks run after the client has its answer; one failing must not skip the rest.
        for name, run, shadow in self._reversed:
            try:
                if shadow:
                    await self._shadow(name, run.on_complete)
                else:
                    await run.on_complete(self.ctx)
            except Exception:
                log.exception("on_complete failed", extra={"policy": name, "request_id": self.ctx.request_id})
