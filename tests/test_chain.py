"""The plugin contract: order, shadow mode, stream transforms, denials before and during a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import PolicyDenied
from gateway.policies import REGISTRY
from gateway.policy import Context, Policy
from gateway.sse import Event
from tests.conftest import make_config


class Tagger(Policy["Tagger.Config"]):
    """Test policy: appends its tag to the system prompt and upper-cases streamed text."""

    name: ClassVar[str] = "tagger"
    seen: ClassVar[list[str]] = []

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        tag: str = Field("t", description="tag")
        deny: str | None = Field(None, description="deny with this code")
        deny_mid_stream: bool = Field(False, description="deny after the first event")

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        cfg: Any = self.config
        self.seen.append(f"request:{cfg.tag}")
        if cfg.deny:
            raise PolicyDenied(403, cfg.deny, "Denied by the tagger.")
        ctx.record(self.name, "tag", tag=cfg.tag)
        return {**request, "messages": [{"role": "system", "content": cfg.tag}, *request["messages"]]}

    async def on_response(self, ctx: Context, response: dict[str, Any]) -> dict[str, Any]:
        self.seen.append(f"response:{self.config.tag}")
        return response

    async def on_stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        try:
            n = 0
            async for ev in events:
                n += 1
                if self.config.deny_mid_stream and n == 2:
                    raise PolicyDenied(400, "tagger.mid_stream", "Stopped mid-stream.")
                obj = ev.json
                if obj and obj.get("choices") and obj["choices"][0]["delta"].get("content"):
                    obj["choices"][0]["delta"]["content"] = obj["choices"][0]["delta"]["content"].upper()
                    ev.json = obj
                yield ev
        finally:
            await events.aclose()  # type: ignore[attr-defined]


@pytest.fixture
def tagger() -> Iterator[type[Tagger]]:
    REGISTRY["tagger"] = Tagger
    Tagger.seen = []
    yield Tagger
    del REGISTRY["tagger"]


def bundle(tmp_path: Path, text: str) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "bundle.yaml").write_text(text)
    return tmp_path / "policies"


def test_request_hooks_run_in_listed_order_and_responses_in_reverse(
    gateway_factory, upstream, tagger, tmp_path
) -> None:
    path = bundle(
        tmp_path,
        "version: 1\ndefaults:\n  tagger: {tag: outer}\ntenants:\n  acme:\n    apps:\n"
        "      chat:\n        tagger: {tag: inner}\n",
    )
    gw = gateway_factory(make_config(upstream), path)
    httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]},
    )
    # The app's section overrides the default key by key; the chain still has one tagger.
    assert tagger.seen == ["request:inner", "response:inner"]
    assert upstream.received[-1].body["messages"][0] == {"role": "system", "content": "inner"}


def test_denial_before_first_byte_is_an_openai_error(gateway_factory, upstream, tagger, tmp_path) -> None:
    gw = gateway_factory(
        make_config(upstream), bundle(tmp_path, "defaults:\n  tagger: {deny: tagger.nope}\n")
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "tagger.nope"
    assert upstream.received == []


def test_shadow_mode_records_would_deny_and_forwards(gateway_factory, upstream, tagger, tmp_path) -> None:
    gw = gateway_factory(
        make_config(upstream), bundle(tmp_path, "defaults:\n  tagger: {deny: tagger.nope, mode: shadow}\n")
    )
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status_code == 200
    assert upstream.received[-1].body["messages"] == [{"role": "user", "content": "x"}]
    assert (
        'gateway_policy_decisions_total{action="would_deny",policy="tagger"}'
        in httpx.get(f"{gw.url}/metrics").text
    )


def audit_of(gw: Any, request_id: str) -> dict[str, Any]:
    import time

    admin = {"Authorization": f"Bearer {gw.key(scopes=('admin',))}"}
    deadline = time.monotonic() + 5
    while (record := httpx.get(f"{gw.url}/admin/audit/{request_id}", headers=admin)).status_code == 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    found: dict[str, Any] = record.json()
    return found


def test_a_shadow_policy_changes_nothing_and_records_what_it_would_have_done(
    gateway_factory, upstream, tagger, tmp_path
) -> None:
    """Request edits, stream edits and a mid-stream refusal: all on copies, all recorded as would_*."""
    gw = gateway_factory(
        make_config(upstream),
        bundle(tmp_path, "defaults:\n  tagger: {tag: shadowed, deny_mid_stream: true, mode: shadow}\n"),
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    stream = client.chat.completions.with_raw_response.create(
        model="mistral-7b", messages=[{"role": "user", "content": "x"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == upstream.reply  # not upper-cased, and no error event
    assert upstream.received[-1].body["messages"] == [{"role": "user", "content": "x"}]
    assert tagger.seen == ["request:shadowed"]
    decisions = audit_of(gw, stream.headers["x-gateway-request-id"])["decisions"]
    assert [(d["policy"], d["action"]) for d in decisions] == [
        ("tagger", "would_tag"),
        ("tagger", "would_deny"),
    ]
    assert decisions[1]["facts"] == {
        "code": "tagger.mid_stream",
        "status": 400,
        "reason": "Stopped mid-stream.",
    }


def test_mode_off_removes_the_policy(gateway_factory, upstream, tagger, tmp_path) -> None:
    gw = gateway_factory(
        make_config(upstream), bundle(tmp_path, "defaults:\n  tagger: {deny: x.y, mode: 'off'}\n")
    )
    resp = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gw.key()}"},
        json={"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status_code == 200
    assert tagger.seen == []


def test_stream_transforms_see_parsed_events(gateway_factory, upstream, tagger, tmp_path) -> None:
    gw = gateway_factory(make_config(upstream), bundle(tmp_path, "defaults:\n  tagger: {}\n"))
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "x"}], stream=True
        )
        if c.choices
    )
    assert text == upstream.reply.upper()


def test_denial_mid_stream_ends_with_an_error_event(gateway_factory, upstream, tagger, tmp_path) -> None:
    gw = gateway_factory(
        make_config(upstream), bundle(tmp_path, "defaults:\n  tagger: {deny_mid_stream: true}\n")
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    with pytest.raises(openai.APIError) as exc:
        for _ in client.chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass
    assert "Stopped mid-stream" in str(exc.value)


def test_unknown_policy_and_bad_option_are_load_errors(tmp_path: Path, tagger) -> None:
    from gateway.bundle import load_bundle
    from gateway.yamlsrc import ConfigError

    path = bundle(tmp_path, "defaults:\n  tagger: {tagg: 1}\n  residencyy: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_bundle([path])
    assert any(":3: defaults.residencyy: unknown policy" in p for p in exc.value.problems)


# --- the chain on its own: a shadow run changes nothing it can reach ------------------------------


class Meddler(Policy["Meddler.Config"]):
    """Test policy: changes every container of the context, and the body, in place, and records it."""

    name: ClassVar[str] = "meddler"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        deny_at: str | None = Field(None, description="raise from this hook, after meddling")
        own_deny: bool = Field(False, description="record its own deny decision before raising")

    def _meddle(self, ctx: Context, hook: str, body: dict[str, Any] | None = None) -> None:
        ctx.record(self.name, "meddled", hook=hook, tokens=(ctx.usage or {}).get("prompt_tokens"))
        ctx.candidates.append(ctx.candidates[0])
        ctx.consents["meddled"] = hook
        ctx.withheld.append(PolicyDenied(503, "meddler.withheld", "Withheld."))
        ctx.attempts.append(("meddled", hook))
        ctx.response_headers["x-meddled"] = hook
        if ctx.usage is not None:
            ctx.usage["prompt_tokens"] = 999
        if body is not None:
            body.setdefault("meddled", []).append(hook)
        if self.config.deny_at == hook:
            if self.config.own_deny:
                ctx.record(self.name, "deny", why="own")
            raise PolicyDenied(403, "meddler.no", "No.")

    def reads_response(self, ctx: Context) -> bool:
        return ctx.endpoint == "chat"

    async def on_request(self, ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
        self._meddle(ctx, "request", request)
        return request

    async def on_attempt(self, ctx: Context, target: Any, request: dict[str, Any]) -> dict[str, Any]:
        self._meddle(ctx, "attempt", request)
        return request

    async def on_response(self, ctx: Context, response: dict[str, Any]) -> dict[str, Any]:
        self._meddle(ctx, "response", response)
        return response

    async def on_stream(self, ctx: Context, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            ctx.record(self.name, "saw", data=event.data, event=event.event, id=event.id)
            self._meddle(ctx, "stream")
            if isinstance(event.json, dict):
                event.json = {**event.json, "meddled": True}
            yield event

    async def on_complete(self, ctx: Context) -> None:
        self._meddle(ctx, "complete")


class Second(Meddler):
    name: ClassVar[str] = "second"


def _ctx() -> Context:
    from gateway.auth import Principal
    from gateway.config import Deployment
    from gateway.policy import Target

    eu = Target(
        "eu",
        Deployment(
            kind="openai_compatible",
            base_url="http://127.0.0.1:9/v1",
            model="m",
            jurisdiction="EU",
            region="x",
        ),
    )
    principal = Principal("k", "acme", "app", frozenset(), frozenset())
    return Context(
        principal=principal, endpoint="chat", model="m", candidates=[eu], usage={"prompt_tokens": 1}
    )


def _state(ctx: Context) -> tuple[Any, ...]:
    return (
        list(ctx.candidates),
        dict(ctx.consents),
        list(ctx.withheld),
        list(ctx.attempts),
        dict(ctx.response_headers),
        dict(ctx.usage or {}),
    )


SENT = [(orjson.dumps({"i": i}), b"chunk", str(i).encode()) for i in range(2)]


async def _events(done: bool) -> AsyncIterator[Event]:
    for data, event, id_ in SENT:
        yield Event(data, event=event, id=id_)
    if done:
        yield Event(b"[DONE]")


def _actions(ctx: Context) -> list[tuple[str, str, dict[str, Any]]]:
    return [(d.policy, d.action, d.facts) for d in ctx.decisions]


@pytest.mark.parametrize("done", [True, False])
async def test_a_shadow_run_changes_no_container_of_the_context_nor_the_body_and_keeps_its_decisions(
    done: bool,
) -> None:
    from gateway.chain import Chain

    policy = Meddler()
    ctx = _ctx()
    before = _state(ctx)
    run = Chain([policy], shadow=[policy]).start(ctx)
    body = {"model": "m", "messages": []}
    assert await run.request(body) == {"model": "m", "messages": []}
    assert await run.attempt(ctx.candidates[0], body) == {"model": "m", "messages": []}
    assert await run.response({"choices": []}) == {"choices": []}
    streamed = [e.json async for e in run.stream(_events(done))]
    assert streamed == [{"i": 0}, {"i": 1}, *([None] if done else [])]  # the stream goes out unchanged
    await run.complete()
    assert body == {"model": "m", "messages": []}
    assert _state(ctx) == before
    sent = [*SENT, *([(b"[DONE]", None, None)] if done else [])]
    # Each hook sees the real context (not the previous hook's meddling) and its own copies of the events;
    # a stream is one hook: its later events see what it did at the earlier ones, on its copy.
    meddled = {"tokens": 1}
    assert _actions(ctx) == [
        *(("meddler", "would_meddled", {"hook": h, **meddled}) for h in ("request", "attempt", "response")),
        *(
            step
            for n, (d, e, i) in enumerate(sent)
            for step in (
                ("meddler", "would_saw", {"data": d, "event": e, "id": i}),
                ("meddler", "would_meddled", {"hook": "stream", "tokens": 999 if n else 1}),
            )
        ),
        ("meddler", "would_meddled", {"hook": "complete", **meddled}),
    ]


@pytest.mark.parametrize("hook", ["request", "attempt", "response", "stream", "complete"])
@pytest.mark.parametrize("own", [False, True])
async def test_a_shadow_refusal_in_any_hook_is_one_would_deny_of_that_policy(hook: str, own: bool) -> None:
    from gateway.chain import Chain

    policy = Meddler(Meddler.Config(deny_at=hook, own_deny=own))
    ctx = _ctx()
    run = Chain([policy], shadow=[policy]).start(ctx)
    assert await run.request({"a": 1}) == {"a": 1}
    assert await run.attempt(ctx.candidates[0], {"a": 1}) == {"a": 1}
    assert await run.response({"a": 1}) == {"a": 1}
    assert [e.json async for e in run.stream(_events(False))] == [{"i": 0}, {"i": 1}]
    await run.complete()
    refusal = {"code": "meddler.no", "status": 403, "reason": "No."}
    denies = [(d.policy, d.facts) for d in ctx.decisions if d.action == "would_deny"]
    assert denies == [("meddler", {"why": "own", **refusal} if own else refusal)]
    assert not any(d.action == "deny" for d in ctx.decisions)


async def test_enforced_the_same_policy_changes_what_it_touches() -> None:
    """The Meddler really does change things: the shadow tests above do not pass by accident."""
    from gateway.chain import Chain

    ctx = _ctx()
    before = _state(ctx)
    run = Chain([Meddler()]).start(ctx)
    assert await run.request({"model": "m"}) == {"model": "m", "meddled": ["request"]}
    assert [e.json async for e in run.stream(_events(True))] == [
        {"i": 0, "meddled": True},
        {"i": 1, "meddled": True},
        None,
    ]
    assert _state(ctx) != before
    assert [(d.action, d.facts.get("tokens")) for d in ctx.decisions if d.action == "meddled"] == [
        ("meddled", 1),
        ("meddled", 999),
        ("meddled", 999),
        ("meddled", 999),
    ]


@pytest.mark.parametrize("hook", ["request", "attempt"])
@pytest.mark.parametrize("own", [False, True])
async def test_an_enforced_refusal_is_recorded_once_for_its_policy_and_raised(hook: str, own: bool) -> None:
    from gateway.chain import Chain

    policy = Meddler(Meddler.Config(deny_at=hook, own_deny=own))
    ctx = _ctx()
    run = Chain([policy]).start(ctx)
    with pytest.raises(PolicyDenied):
        await (run.request({}) if hook == "request" else run.attempt(ctx.candidates[0], {}))
    hop = {"hop": "eu"} if hook == "attempt" else {}
    assert [(d.policy, d.facts) for d in ctx.decisions if d.action == "deny"] == [
        ("meddler", {"why": "own"} if own else {"code": "meddler.no", "status": 403, **hop})
    ]


async def test_a_failing_completion_hook_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.chain import Chain

    first, broken, shadow_broken = Meddler(), Second(), Second()

    async def crash(ctx: Context) -> None:
        raise RuntimeError("bug")

    broken.on_complete = crash  # type: ignore[method-assign]
    shadow_broken.on_complete = crash  # type: ignore[method-assign]
    ctx = _ctx()
    await Chain([first, broken, shadow_broken], shadow=[shadow_broken]).start(ctx).complete()
    assert [d.action for d in ctx.decisions] == ["meddled"]  # the first policy's hook ran after both failed
    logged = [(r.getMessage(), r.policy, r.request_id) for r in caplog.records if r.name == "gateway.chain"]  # type: ignore[attr-defined]
    assert logged == [("on_complete failed", "second", ctx.request_id)] * 2


async def test_requests_go_forward_through_the_chain_and_answers_come_back_in_reverse() -> None:
    from gateway.chain import Chain

    ctx = _ctx()
    run = Chain([Meddler(), Second()]).start(ctx)
    await run.request({})
    await run.attempt(ctx.candidates[0], {})
    assert await run.response({}) == {"meddled": ["response", "response"]}
    streamed = [e.json async for e in run.stream(_events(False))]
    assert streamed == [{"i": 0, "meddled": True}, {"i": 1, "meddled": True}]
    await run.complete()
    assert [(d.policy, d.facts["hook"]) for d in ctx.decisions if d.action == "meddled"] == [
        ("meddler", "request"), ("second", "request"), ("meddler", "attempt"), ("second", "attempt"),
        ("second", "response"), ("meddler", "response"),
        ("second", "stream"), ("meddler", "stream"),  # the last policy's transform sees each event first
        ("second", "stream"), ("meddler", "stream"),
        ("second", "complete"), ("meddler", "complete"),
    ]  # fmt: skip
    assert Chain([Meddler()]).start(_ctx()).reads_response()  # Meddler reads answers
    assert not Chain([Policy()]).start(_ctx()).reads_response()  # a pass-through policy does not


async def test_a_shadow_policy_before_enforced_ones_lets_them_all_run() -> None:
    from gateway.chain import Chain

    shadowed, enforced = Meddler(), Second()
    chain = Chain([shadowed, enforced], shadow=[shadowed])
    assert (chain.is_shadow(shadowed), chain.is_shadow(enforced)) == (True, False)
    ctx = _ctx()
    run = chain.start(ctx)
    assert await run.request({}) == {"meddled": ["request"]}
    assert await run.attempt(ctx.candidates[0], {}) == {"meddled": ["attempt"]}
    assert [(d.policy, d.action) for d in ctx.decisions] == [
        ("meddler", "would_meddled"), ("second", "meddled"), ("meddler", "would_meddled"), ("second", "meddled"),
    ]  # fmt: skip
