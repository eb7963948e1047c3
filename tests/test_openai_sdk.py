"""The official OpenAI SDK works unchanged against the gateway."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageFunctionToolCall

from gateway.dev import DevUpstream
from tests.conftest import RunningGateway


def client(gw: RunningGateway, key: str | None = None, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key or gw.key(), max_retries=0, **kw)  # type: ignore[arg-type]


def test_chat_completion_round_trip(gw: RunningGateway, upstream: DevUpstream) -> None:
    resp = client(gw).chat.completions.with_raw_response.create(
        model="mistral-7b", messages=[{"role": "user", "content": "Bonjour"}]
    )
    completion = resp.parse()
    assert completion.choices[0].message.content == upstream.reply
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    assert resp.headers["x-gateway-deployment"] == "eu-primary"
    assert resp.headers["x-gateway-jurisdiction"] == "EU"
    assert len(resp.headers["x-gateway-request-id"]) == 32
    sent = upstream.received[-1]
    assert sent.body["model"] == "mistral-7b-instruct"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret-eu"


def test_streaming_yields_the_same_text_as_non_streaming(gw: RunningGateway, upstream: DevUpstream) -> None:
    stream = client(gw).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == upstream.reply


def test_stream_usage_chunk_is_returned_when_requested(gw: RunningGateway) -> None:
    chunks = list(
        client(gw).chat.completions.create(
            model="mistral-7b",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].choices == []


def test_tools_and_every_known_field_pass_through_untouched(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    tools: list[ChatCompletionFunctionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    completion = client(gw).chat.completions.create(
        model="mistral-7b",
        messages=[{"role": "user", "content": "find it"}],
        tools=tools,
        tool_choice="auto",
        response_format={"type": "text"},
        n=2,
        seed=7,
        stop=["END"],
        logprobs=True,
        metadata={"ticket": "T-17"},
        reasoning_effort="low",
    )
    tool_calls = completion.choices[0].message.tool_calls
    assert tool_calls is not None
    call = tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"echo": "find it"}
    body = upstream.received[-1].body
    assert body["tools"] == tools
    for key, value in {
        "tool_choice": "auto",
        "response_format": {"type": "text"},
        "n": 2,
        "seed": 7,
        "stop": ["END"],
        "logprobs": True,
        "metadata": {"ticket": "T-17"},
        "reasoning_effort": "low",
    }.items():
        assert body[key] == value


def test_embeddings(gw: RunningGateway, upstream: DevUpstream) -> None:
    result = client(gw).embeddings.create(model="mistral-embed", input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == upstream.embedding_dim


def test_models_lists_only_what_the_key_may_use(gw: RunningGateway) -> None:
    key = gw.key(models=("mistral-7b",))
    ids = [m.id for m in client(gw, key).models.list()]
    assert ids == ["mistral-7b"]
    assert client(gw, key).models.retrieve("mistral-7b").id == "mistral-7b"
    with pytest.raises(openai.NotFoundError):
        client(gw, key).models.retrieve("mistral-embed")


def test_missing_or_bad_key_raises_authentication_error(gw: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        client(gw, "sk-gw-000000000000-nope").chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.code == "invalid_api_key"


def test_model_not_allowed_raises_permission_denied(gw: RunningGateway) -> None:
    key = gw.key(models=("mistral-embed",))
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(gw, key).chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.code == "model_not_allowed"


def test_missing_scope_raises_permission_denied(gw: RunningGateway) -> None:
    key = gw.key(scopes=("chat",))
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(gw, key).embeddings.create(model="mistral-embed", input="x")
    assert exc.value.code == "insufficient_scope"


def test_unknown_model_raises_not_found(gw: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client(gw).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "model_not_found"


def test_wrong_parameter_type_raises_bad_request(gw: RunningGateway) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client(gw).chat.completions.create(  # type: ignore[call-overload]  # a str max_tokens on purpose
            model="mistral-7b", messages=[{"role": "user", "content": "x"}], max_tokens="ten"
        )
    assert exc.value.param == "max_tokens"


def test_upstream_failure_raises_server_error_without_leaking_upstream_details(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    upstream.fail_status = 500
    with pytest.raises(openai.InternalServerError) as exc:
        client(gw).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 502
    text = exc.value.response.text
    assert "10.0.0.7" not in text
    assert "sk-internal" not in text
    assert "sk-upstream" not in text


def test_upstream_rate_limit_raises_rate_limit_error_with_retry_after(
    gw: RunningGateway, upstream: DevUpstream
) -> None:
    upstream.fail_status = 429
    with pytest.raises(openai.RateLimitError) as exc:
        client(gw).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "x"}])
    assert exc.value.response.headers["retry-after"].isdigit()


def test_upstream_timeout_raises_504(gateway_factory, upstream: DevUpstream) -> None:
    from tests.conftest import make_config

    config = make_config(upstream)
    slow = config.deployments["eu-primary"].model_copy(
        update={
            "timeouts": config.deployments["eu-primary"].timeouts.model_copy(
                update={"read_s": 0.3, "total_s": 0.5}
            )
        }
    )
    gw = gateway_factory(
        config.model_copy(update={"deployments": {**config.deployments, "eu-primary": slow}})
    )
    upstream.delay_s = 1.0
    with pytest.raises(openai.APIStatusError) as exc:
        client(gw).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 504
