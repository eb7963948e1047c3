"""pii_redaction through a real gateway, the official OpenAI SDK and loopback upstreams."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageFunctionToolCall

from gateway.dev import DevUpstream
from gateway.pii.analyzer import Analyzer
from tests.conftest import RunningGateway, make_config
from tests.pii_values import CARD, EMAIL, IBAN, PERSON

PROMPT = f"I am {PERSON}. Write to {EMAIL} about IBAN {IBAN}."
STRUCTURED_POLICY = """
version: 1
defaults:
  pii_redaction:
    entities: {EMAIL_ADDRESS: redact, IBAN_CODE: redact, CREDIT_CARD: mask}
"""


@pytest.fixture(autouse=True)
def _restore_upstream_reply(upstream: DevUpstream) -> Any:
    reply, chunks = upstream.reply, upstream.chunks
    yield
    upstream.reply, upstream.chunks = reply, chunks


def start(
    factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    tmp_path: Path,
    policy: str,
    **overrides: Any,
) -> RunningGateway:
    path = tmp_path / "pii.yaml"
    path.write_text(policy)
    return factory(make_config(upstream, **overrides), policies=path)


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)


def sent_text(upstream: DevUpstream) -> str:
    return json.dumps(upstream.received[-1].body, ensure_ascii=False)


def assert_no_pii(text: str, *values: str) -> None:
    for value in values:
        assert value not in text
        assert value.replace(" ", "") not in text


def test_pii_in_the_prompt_never_reaches_the_upstream_and_the_reply_is_restored(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    gw = start(gateway_factory, upstream, tmp_path, STRUCTURED_POLICY)
    upstream.reply = "Done: wrote to [email address 1] about < IBAN_CODE_1 >."
    completion = client(gw).chat.completions.create(
        model="mistral-7b",
        messages=[
            {"role": "system", "content": f"The customer's card is {CARD}."},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
    )
    assert completion.choices[0].message.content == f"Done: wrote to {EMAIL} about {IBAN}."
    sent = sent_text(upstream)
    assert_no_pii(sent, EMAIL, IBAN, CARD)
    assert "<EMAIL_ADDRESS_1>" in sent
    assert "<IBAN_CODE_1>" in sent
    assert "***************1111" in sent


def test_the_metric_counts_entities_by_type_and_action_shadow_ones_apart(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    from gateway import metrics

    def count(action: str) -> float:
        value: float = metrics.PII_ENTITIES.labels("EMAIL_ADDRESS", action)._value.get()
        return value

    before = count("redact"), count("would_redact")
    gw = start(gateway_factory, upstream, tmp_path, STRUCTURED_POLICY)
    client(gw).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": f"{EMAIL} {EMAIL}"}]
    )
    assert (count("redact"), count("would_redact")) == (before[0] + 2, before[1])
    shadow = start(
        gateway_factory,
        upstream,
        tmp_path,
        STRUCTURED_POLICY.replace("  pii_redaction:\n", "  pii_redaction:\n    mode: shadow\n"),
    )
    client(shadow).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": EMAIL}])
    assert (count("redact"), count("would_redact")) == (before[0] + 2, before[1] + 1)
    assert EMAIL in sent_text(upstream)  # shadow mode forwards the prompt as sent


def test_a_placeholder_split_across_stream_chunks_is_restored(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    gw = start(gateway_factory, upstream, tmp_path, STRUCTURED_POLICY)
    upstream.reply = "Mail [email address 1] now, < IBAN_CODE_1 > too."
    upstream.chunks = 20  # one word per chunk: both placeholders span chunk boundaries
    stream = client(gw).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == f"Mail {EMAIL} now, {IBAN} too."
    assert sum(1 for p in pieces if p) > 3  # still streamed, not buffered whole
    assert_no_pii(sent_text(upstream), EMAIL, IBAN)


def test_tool_call_arguments_are_redacted_upstream_and_restored_as_valid_json(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    gw = start(gateway_factory, upstream, tmp_path, STRUCTURED_POLICY)
    tools: list[ChatCompletionFunctionToolParam] = [
        {"type": "function", "function": {"name": "send", "parameters": {"type": "object"}}}
    ]
    quoted = f'Say "hi" to {EMAIL}'
    completion = client(gw).chat.completions.create(
        model="mistral-7b",
        tools=tools,
        messages=[
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "send", "arguments": json.dumps({"to": EMAIL, "iban": IBAN})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": f"sent to {EMAIL}"},
            {"role": "user", "content": quoted},
        ],
    )
    tool_calls = completion.choices[0].message.tool_calls
    assert tool_calls is not None
    call = tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    args = json.loads(call.function.arguments)
    assert args == {"echo": quoted}
    assert_no_pii(sent_text(upstream), EMAIL, IBAN)


def test_embeddings_input_is_redacted(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    gw = start(gateway_factory, upstream, tmp_path, STRUCTURED_POLICY)
    client(gw).embeddings.create(model="mistral-embed", input=[PROMPT, "nothing here"])
    assert upstream.received[-1].body["input"][1] == "nothing here"
    assert_no_pii(sent_text(upstream), EMAIL, IBAN)


def test_blocked_types_are_rejected_naming_the_type_not_the_value(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    gw = start(
        gateway_factory,
        upstream,
        tmp_path,
        STRUCTURED_POLICY.replace("IBAN_CODE: redact", "IBAN_CODE: block"),
    )
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert exc.value.code == "pii.blocked"
    assert "IBAN_CODE" in exc.value.message
    assert IBAN not in exc.value.response.text
    assert upstream.received == []


def test_an_analyzer_failure_fails_closed_and_sends_nothing(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = start(gateway_factory, upstream, tmp_path, STRUCTURED_POLICY)

    def broken(self: Analyzer, text: str, deadline: float | None = None) -> Any:
        raise RuntimeError("analyzer down")

    monkeypatch.setattr(Analyzer, "analyze_text", broken)
    with pytest.raises(openai.APIStatusError) as exc:
        client(gw).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert exc.value.status_code == 503
    assert exc.value.code == "pii.unavailable"
    assert upstream.received == []


def test_redaction_can_apply_only_to_hops_outside_the_eu(
    gateway_factory: Callable[..., RunningGateway],
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    tmp_path: Path,
) -> None:
    policy = """
version: 1
defaults:
  pii_redaction:
    entities:
      EMAIL_ADDRESS: {action: redact, jurisdictions: {EU: allow}}
"""
    us = {
        "kind": "openai_compatible",
        "base_url": upstream_b.url,
        "model": "gpt-4o",
        "jurisdiction": "US",
        "region": "us-east",
    }
    gw = start(
        gateway_factory,
        upstream,
        tmp_path,
        policy,
        deployments={"us-gpt4": us},
        models={"us-only": {"deployments": ["us-gpt4"]}},
    )
    client(gw).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert EMAIL in sent_text(upstream)
    client(gw).chat.completions.create(model="us-only", messages=[{"role": "user", "content": PROMPT}])
    assert_no_pii(sent_text(upstream_b), EMAIL)


def test_person_names_are_redacted_with_ner(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> None:
    policy = (
        "version: 1\ndefaults:\n  pii_redaction:\n    entities: {PERSON: redact, EMAIL_ADDRESS: redact}\n"
    )
    gw = start(gateway_factory, upstream, tmp_path, policy)
    upstream.reply = "Hello <Person_1>!"
    completion = client(gw).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}]
    )
    assert completion.choices[0].message.content == f"Hello {PERSON}!"
    assert_no_pii(sent_text(upstream), PERSON, EMAIL)
