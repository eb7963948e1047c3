"""pii_redaction's decisions, modes and actions, hook by hook."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.auth import Principal
from gateway.chain import Chain
from gateway.config import Deployment
from gateway.errors import PolicyDenied
from gateway.policies.pii_redaction import PiiRedaction
from gateway.policy import Context, Run, Target
from gateway.sse import Event
from tests.pii_values import EMAIL, IBAN

EU = Target(
    "eu",
    Deployment(
        kind="openai_compatible",
        base_url="http://127.0.0.1:1/v1",
        model="m",
        jurisdiction="EU",
        region="fr-par",
    ),
)
US = Target(
    "us",
    Deployment(
        kind="openai_compatible",
        base_url="http://127.0.0.1:1/v1",
        model="m",
        jurisdiction="US",
        region="us-east",
    ),
)


def policy(**config: Any) -> PiiRedaction:
    config.setdefault("entities", {"EMAIL_ADDRESS": "redact", "IBAN_CODE": "redact"})
    return PiiRedaction(PiiRedaction.Config.model_validate(config))


def context(tenant: str = "acme", endpoint: Any = "chat") -> Context:
    principal = Principal("k", tenant, "app", frozenset({"*"}), frozenset({"chat"}))
    return Context(principal=principal, endpoint=endpoint, model="m", candidates=[EU, US])


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


async def run(
    r: PiiRedaction | Run, ctx: Context, request: dict[str, Any], target: Target = US
) -> dict[str, Any]:
    """One request through the policy's hooks up to the hop (``r``: a policy, or a run it started)."""
    r = r.start(ctx) if isinstance(r, PiiRedaction) else r
    request = await r.on_request(ctx, request)
    return await r.on_attempt(ctx, target, request)


async def test_decisions_carry_entity_types_and_counts_never_values() -> None:
    p, ctx = policy(), context()
    sent = await run(p, ctx, chat(f"{EMAIL} and again {EMAIL}, IBAN {IBAN}"))
    assert (
        sent["messages"][0]["content"] == "<EMAIL_ADDRESS_1> and again <EMAIL_ADDRESS_1>, IBAN <IBAN_CODE_1>"
    )
    [decision] = ctx.decisions
    assert (decision.policy, decision.action) == ("pii_redaction", "redact")
    assert decision.facts == {
        "entities": {"EMAIL_ADDRESS": 2, "IBAN_CODE": 1},
        "hop": "us",
        "jurisdiction": "US",
    }


async def test_shadow_mode_records_what_it_would_redact_and_forwards_unchanged() -> None:
    p, ctx = policy(output={"enabled": True, "action": "block"}), context()
    chain = Chain([p], shadow=[p]).start(ctx)
    request = chat(f"write to {EMAIL}")
    assert await chain.attempt(US, await chain.request(request)) == request
    assert [d.action for d in ctx.decisions] == ["would_redact"]
    assert ctx.consents == {}
    assert ctx.candidates == [EU, US]
    answer = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"<EMAIL_ADDRESS_1> {IBAN}"}}]
    }
    assert await chain.response(answer) == {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"<EMAIL_ADDRESS_1> {IBAN}"}}]
    }
    assert [d.action for d in ctx.decisions] == ["would_redact", "would_block", "would_deny"]


async def test_hash_is_stable_per_tenant_and_differs_across_tenants() -> None:
    p = policy(entities={"EMAIL_ADDRESS": "hash"})
    one = (await run(p, context("acme"), chat(EMAIL)))["messages"][0]["content"]
    two = (await run(p, context("acme"), chat(EMAIL)))["messages"][0]["content"]
    other = (await run(p, context("globex"), chat(EMAIL)))["messages"][0]["content"]
    assert one == two != other
    assert EMAIL not in one
    assert re.fullmatch(r"<EMAIL_ADDRESS:[0-9a-f]{16}>", one), one  # the documented form (docs/pii.md)


async def test_mask_keeps_only_the_last_characters() -> None:
    sent = await run(
        policy(entities={"IBAN_CODE": "mask"}, mask_keep_last=2), context(), chat(f"IBAN {IBAN}")
    )
    assert sent["messages"][0]["content"] == "IBAN " + "*" * (len(IBAN) - 2) + "00"


async def test_a_block_for_one_jurisdiction_rejects_only_on_that_hop() -> None:
    p = policy(entities={"IBAN_CODE": {"action": "allow", "jurisdictions": {"US": "block"}}})
    ctx = context()
    r = p.start(ctx)
    request = await r.on_request(ctx, chat(f"IBAN {IBAN}"))
    assert await r.on_attempt(ctx, EU, request) == request
    with pytest.raises(PolicyDenied) as exc:
        await r.on_attempt(ctx, US, request)
    assert exc.value.code == "pii.blocked"
    assert IBAN not in exc.value.message


async def test_token_id_embeddings_input_is_refused() -> None:
    with pytest.raises(PolicyDenied) as exc:
        await run(policy(), context(endpoint="embeddings"), {"model": "e", "input": [[1, 2, 3]]})
    assert exc.value.code == "pii.unscannable_input"


async def test_each_request_has_its_own_placeholders() -> None:
    p, one, two = policy(), context(), context()
    first, second = p.start(one), p.start(two)
    assert (await run(first, one, chat(EMAIL)))["messages"][0]["content"] == "<EMAIL_ADDRESS_1>"
    assert (await run(second, two, chat(f"{IBAN} bob@example.org")))["messages"][0]["content"] == (
        "<IBAN_CODE_1> <EMAIL_ADDRESS_1>"
    )
    assert first.reads_response(one)
    assert second.reads_response(two)
    assert not p.start(context()).reads_response(context())  # a request with nothing redacted: bytes relayed
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "<EMAIL_ADDRESS_1>"}}]}
    assert (await first.on_response(one, answer))["choices"][0]["message"]["content"] == EMAIL


async def test_output_scanning_masks_pii_the_model_produced_in_a_stream() -> None:
    p, ctx = policy(output={"enabled": True, "action": "mask"}), context()
    r = p.start(ctx)
    await run(r, ctx, chat(f"mail {EMAIL}"))
    other = "bob.miller@example.org"
    text = f"Your mail <EMAIL_ADDRESS_1> differs from {other}, see you."

    async def events() -> Any:
        for i in range(0, len(text), 7):
            yield Event.of({"id": "x", "choices": [{"index": 0, "delta": {"content": text[i : i + 7]}}]})
        yield Event.of({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield Event(b"[DONE]")

    out = [e.json async for e in r.on_stream(ctx, events())]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in out if c)
    assert streamed == f"Your mail {EMAIL} differs from " + "*" * (len(other) - 4) + ".org, see you."
    assert [d.action for d in ctx.decisions][-1] == "mask"


def test_unknown_entity_types_and_keys_are_rejected_with_their_path() -> None:
    with pytest.raises(ValidationError, match="unknown entity types"):
        PiiRedaction.Config.model_validate({"entities": {"EMAIL": "redact"}})
    with pytest.raises(ValidationError, match="extra"):
        PiiRedaction.Config.model_validate({"entities": {"EMAIL_ADDRESS": {"action": "redact", "score": 1}}})


async def test_analysis_slower_than_the_timeout_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from gateway.pii.analyzer import Analyzer

    real = Analyzer.analyze_text

    def slow(self: Analyzer, text: str, deadline: float | None = None) -> Any:
        time.sleep(0.3)
        return real(self, text, deadline)

    monkeypatch.setattr(Analyzer, "analyze_text", slow)
    p = policy(timeout_ms=50)
    with pytest.raises(PolicyDenied) as exc:
        await run(p, context(), chat("long text " * 1000))  # long enough for the worker pool
    assert (exc.value.status, exc.value.code) == (503, "pii.unavailable")


def test_long_text_is_analysed_in_chunks_with_the_same_findings() -> None:
    import time

    from gateway.pii import analyzer as engine

    a = engine.Analyzer({"EMAIL_ADDRESS": 0.5, "IBAN_CODE": 0.5, "PHONE_NUMBER": 0.5})
    step, found = engine.CHUNK_CHARS - engine.CHUNK_OVERLAP, []
    text = ""
    for i in range(1, 13):
        # Each identifier pair starts a few characters before a chunk boundary (or its overlap's end),
        # so one chunk sees it whole and the next only its tail.
        target = i * step - (5 + 3 * i) + (engine.CHUNK_OVERLAP if i % 3 == 0 else 0)
        text += (
            "x" * max(target - len(text), 1)
            + f" ann{i}@example.org DE89 3704 0044 0532 0130 00 +49 30 1234567 "
        )
        found += [
            ("EMAIL_ADDRESS", f"ann{i}@example.org"),
            ("IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
            ("PHONE_NUMBER", "+49 30 1234567"),
        ]
    text += "y" * engine.CHUNK_CHARS
    chunked = [
        (s.entity, text[s.start : s.end]) for s in a.analyze_text(text, deadline=time.monotonic() + 60)
    ]
    whole = [(s.entity, text[s.start : s.end]) for s in a._analyze_chunk(text)]
    assert len(text) > 10 * engine.CHUNK_CHARS
    assert chunked == whole == found


def test_an_analysis_past_its_deadline_stops_between_chunks() -> None:
    import time

    from gateway.pii.analyzer import Analyzer

    a = Analyzer({"EMAIL_ADDRESS": 0.5})
    with pytest.raises(TimeoutError):
        a.analyze_text("x " * 50_000, deadline=time.monotonic() - 1)
