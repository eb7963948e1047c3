"""The plugin contract: order, shadow mode, stream transforms, denials before and during a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
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
