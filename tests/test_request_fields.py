"""Every byte that leaves: each string field of the OpenAI request schema, with PII in it.

The reference is the openai SDK's own request types. Every string-typed field they define must be
classified below; a field a future SDK release adds fails `test_every_sdk_string_field_is_classified`
until someone decides what the gateway does with it. Then, per field, a request with an e-mail
address in that field goes through the real gateway to a recording loopback upstream: the address
never arrives raw, because the field is redacted, pseudonymised, or the request is refused.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import httpx
import pytest
import typing_extensions as te
from openai.types import embedding_create_params
from openai.types.chat import completion_create_params

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway, make_config

PROBE = "probe.person@example.org"
BUNDLE = "version: 1\ndefaults:\n  pii_redaction:\n    entities: {EMAIL_ADDRESS: redact}\n"

# What the gateway does with each string field of the SDK's request types.
#   scan: redacted by the PII engine       pseudonym: replaced by a keyed pseudonym
#   id: an identifier pattern refuses it   media: base64 only, refuses text
#   enum: a closed set refuses it          unsupported: the field is not forwarded at all (400)
CHAT: dict[str, str] = {
    "messages[].content": "scan",
    "messages[].content[].text": "scan",
    "messages[].content[].refusal": "scan",
    "messages[].content[].image_url.url": "scan",
    "messages[].content[].input_audio.data": "media",
    "messages[].content[].file.file_data": "media",
    "messages[].content[].file.file_id": "id",
    "messages[].content[].file.filename": "scan",
    "messages[].name": "scan",
    "messages[].refusal": "scan",
    "messages[].tool_call_id": "id",
    "messages[].audio.id": "id",
    "messages[].tool_calls[].id": "id",
    "messages[].tool_calls[].function.name": "id",
    "messages[].tool_calls[].function.arguments": "scan",
    "messages[].tool_calls[].custom.input": "unsupported",
    "messages[].tool_calls[].custom.name": "unsupported",
    "messages[].function_call.name": "id",
    "messages[].function_call.arguments": "scan",
    "model": "id",
    "user": "pseudonym",
    "safety_identifier": "pseudonym",
    "prompt_cache_key": "pseudonym",
    "metadata{}": "scan",
    "stop": "scan",
    "stop[]": "scan",
    "prediction.content": "scan",
    "prediction.content[].text": "scan",
    "response_format.json_schema.description": "scan",
    "response_format.json_schema.name": "id",
    "tools[].function.description": "scan",
    "tools[].function.name": "id",
    "tools[].custom.description": "unsupported",
    "tools[].custom.name": "unsupported",
    "tools[].custom.format.grammar.definition": "unsupported",
    "functions[].description": "scan",
    "functions[].name": "id",
    "function_call.name": "id",
    "tool_choice.function.name": "id",
    "tool_choice.custom.name": "unsupported",
    "audio.voice": "enum",
    "audio.voice.id": "enum",
    "moderation.model": "unsupported",
    "web_search_options.user_location.approximate.city": "unsupported",
    "web_search_options.user_location.approximate.country": "unsupported",
    "web_search_options.user_location.approximate.region": "unsupported",
    "web_search_options.user_location.approximate.timezone": "unsupported",
}
EMBEDDINGS: dict[str, str] = {"input": "scan", "input[]": "scan", "model": "id", "user": "pseudonym"}


def string_fields(tp: Any, path: str = "", seen: frozenset[Any] = frozenset()) -> set[str]:
    """Paths of every string-typed (not Literal) field reachable from an SDK request type."""
    origin = get_origin(tp)
    if origin in (
        te.Required,
        te.NotRequired,
        typing.Required,
        typing.NotRequired,
        te.Annotated,
        typing.Annotated,
    ):
        return string_fields(get_args(tp)[0], path, seen)
    if origin in (Union, types.UnionType):
        return set().union(*(string_fields(a, path, seen) for a in get_args(tp)))
    if origin is Literal or tp in (int, float, bool, type(None), object):
        return set()
    if tp is str:
        return {path}
    if origin is not None and getattr(origin, "__name__", "") in ("Iterable", "Sequence", "list", "List"):
        return string_fields(get_args(tp)[0], f"{path}[]", seen)
    if origin is not None and getattr(origin, "__name__", "") in ("dict", "Dict", "Mapping"):
        return string_fields(get_args(tp)[1], f"{path}{{}}", seen)
    if isinstance(tp, type) and te.is_typeddict(tp):
        if tp in seen:
            return set()
        hints = typing.get_type_hints(tp, include_extras=True)
        return set().union(
            *(string_fields(v, f"{path}.{k}" if path else k, seen | {tp}) for k, v in hints.items())
        )
    return set()


def test_every_sdk_string_field_is_classified() -> None:
    chat = string_fields(completion_create_params.CompletionCreateParamsBase)
    embeddings = string_fields(embedding_create_params.EmbeddingCreateParams)
    assert chat == set(CHAT), f"classify these chat fields: {sorted(chat ^ set(CHAT))}"
    assert embeddings == set(EMBEDDINGS), (
        f"classify these embeddings fields: {sorted(embeddings ^ set(EMBEDDINGS))}"
    )


def kitchen_sink() -> dict[str, Any]:
    """A valid chat request that uses every structure the gateway forwards."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    return {
        "model": "mistral-7b",
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "ops"},
            {
                "role": "user",
                "name": "u1",
                "content": [
                    {"type": "text", "text": "see"},
                    {"type": "image_url", "image_url": {"url": "https://img.example/a.png", "detail": "low"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {
                        "type": "file",
                        "file": {"file_data": "JVBERi0=", "file_id": "file-1", "filename": "a.pdf"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "ok"}, {"type": "refusal", "refusal": "no"}],
                "refusal": "no",
                "name": "bot",
                "tool_calls": [call],
                "function_call": {"name": "f", "arguments": "{}"},
                "audio": {"id": "audio_1"},
            },
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "function", "content": "42", "name": "lookup"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "lookup", "description": "Find", "parameters": {}}}
        ],
        "functions": [{"name": "lookup", "description": "Find", "parameters": {}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "function_call": {"name": "lookup"},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "description": "d", "schema": {}},
        },
        "prediction": {"type": "content", "content": [{"type": "text", "text": "guess"}]},
        "metadata": {"k": "v"},
        "stop": ["END"],
        "user": "u-1",
        "safety_identifier": "s-1",
        "prompt_cache_key": "c-1",
        "audio": {"voice": "alloy", "format": "wav"},
    }


def place(body: Any, path: str, value: str) -> None:
    """Put ``value`` at ``path`` (``a.b[].c{}``), choosing list items that already have the next key."""
    steps = path.replace("[]", ".[]").replace("{}", ".{}").split(".")

    def go(node: Any, rest: list[str]) -> bool:
        step, more = rest[0], rest[1:]
        if step == "[]":
            if not isinstance(node, list) or not node:
                return False
            if not more:
                node[0] = value
                return True
            return any(go(item, more) for item in node)
        if step == "{}":
            if more or not isinstance(node, dict):
                return False
            node["k"] = value
            return True
        if not isinstance(node, dict):
            return False
        if not more:
            if step in node:
                node[step] = value
            return step in node
        return step in node and go(node[step], more)

    if not go(body, steps):
        # The structure does not exist in the sample (an SDK-only shape): graft it on the first item.
        node = body
        for step, nxt in zip(steps, [*steps[1:], None], strict=True):
            if step == "[]":
                node = node[0]
            elif nxt is None:
                node[step] = value
            else:
                if not isinstance(node.get(step), dict | list):
                    node[step] = (
                        {} if nxt != "[]" else [{}]
                    )  # a string in the sample becomes the SDK's object
                node = node[step]


@pytest.fixture
def recording_gw(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path
) -> RunningGateway:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "bundle.yaml").write_text(BUNDLE)
    return gateway_factory(make_config(upstream), tmp_path / "policies")


def probe(gw: RunningGateway, upstream: DevUpstream, endpoint: str, body: dict[str, Any]) -> tuple[int, str]:
    upstream.received.clear()
    resp = httpx.post(
        f"{gw.base_url}/{endpoint}", json=body, headers={"Authorization": f"Bearer {gw.key()}"}, timeout=10
    )
    sent = "".join(str(r.body) for r in upstream.received)
    if PROBE in resp.text:
        # Only as the restore of a placeholder the upstream got and echoed back (its tool-call arguments
        # echo the last user message), never in an error or from anywhere else.
        assert resp.status_code == 200, "the probe value came back in an error"
        assert "<EMAIL_ADDRESS_1>" in sent, "the probe value came back, and not as a restored placeholder"
    return resp.status_code, sent


@pytest.mark.parametrize("path", sorted(CHAT))
def test_pii_in_any_chat_field_never_reaches_the_upstream_raw(
    recording_gw: RunningGateway, upstream: DevUpstream, path: str
) -> None:
    body = copy.deepcopy(kitchen_sink())
    value = (
        f'{{"note": "{PROBE}"}}'
        if path.endswith("arguments")
        else (f"https://img.example/?who={PROBE}" if path.endswith(".url") else f"write to {PROBE}")
    )
    place(body, path, value)
    status, sent = probe(recording_gw, upstream, "chat/completions", body)
    assert PROBE not in sent, f"{path}: raw PII reached the upstream"
    expected = CHAT[path]
    if expected in ("scan", "pseudonym"):
        assert status == 200, (path, status)
        assert ("EMAIL_ADDRESS" in sent) == (expected == "scan"), path  # a placeholder took its place
    else:
        assert status == 400, (path, status)
        assert sent == ""


@pytest.mark.parametrize("path", sorted(EMBEDDINGS))
def test_pii_in_any_embeddings_field_never_reaches_the_upstream_raw(
    recording_gw: RunningGateway, upstream: DevUpstream, path: str
) -> None:
    body: dict[str, Any] = {"model": "mistral-embed", "input": ["hello"], "user": "u-1"}
    if path == "input":
        body["input"] = f"write to {PROBE}"
    else:
        place(body, path, f"write to {PROBE}")
    status, sent = probe(recording_gw, upstream, "embeddings", body)
    assert PROBE not in sent, f"{path}: raw PII reached the upstream"
    assert status == (200 if EMBEDDINGS[path] in ("scan", "pseudonym") else 400), (path, status)


def test_the_end_user_id_leaves_as_a_stable_pseudonym(
    recording_gw: RunningGateway, upstream: DevUpstream
) -> None:
    body = {"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}], "user": PROBE}
    for _ in range(2):
        assert probe(recording_gw, upstream, "chat/completions", body)[0] == 200
    sent = [r.body["user"] for r in upstream.received]
    assert PROBE not in sent[0]
    assert len(sent[0]) == 32
    upstream.received.clear()
    probe(recording_gw, upstream, "chat/completions", body)
    assert upstream.received[0].body["user"] == sent[0]  # the same subject gets the same pseudonym
