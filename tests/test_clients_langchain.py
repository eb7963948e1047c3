"""LangChain (langchain-openai) works unchanged against the gateway, PII round trip included.

The gateway runs the shipped policies/ (PII redaction on) in front of the recording loopback upstream
in echo mode: it answers with the last user message as it arrived, so the placeholder goes back through
the gateway, which restores it. Each test drives one LangChain entry point (``ChatOpenAI.invoke``,
``stream`` with usage, ``bind_tools`` with a tool round trip, ``with_structured_output``,
``OpenAIEmbeddings`` with its token-id input) with a prompt carrying an e-mail address, and checks both
sides: the client gets the address back, and no body the upstream received contains it (only
``<EMAIL_ADDRESS_1>``).

Nothing here may leave the machine: tiktoken (``OpenAIEmbeddings`` tokenizes with cl100k_base) reads
the BPE file the gateway uses (the litellm wheel's, ``gateway.tokens``), LangSmith tracing is off, and
every test runs with name resolution and connections limited to loopback.
"""

from __future__ import annotations

import functools
import json
import operator
import socket
from collections.abc import Callable, Iterator
from typing import Any, cast

import httpx
import langsmith.utils
import pytest
import tiktoken
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, SecretStr

from gateway.dev import DevUpstream, embed
from gateway.tokens import bundled_tiktoken_dir
from tests.conftest import RunningGateway, make_config, with_supports
from tests.test_shipped_bundle import SHIPPED_POLICIES

EMAIL = "maria.schneider@example.de"
PLACEHOLDER = "<EMAIL_ADDRESS_1>"
PROMPT = f"Please write to {EMAIL} about the contract."
REDACTED = PROMPT.replace(EMAIL, PLACEHOLDER)
# The echo report's lines (gateway.dev.answers.report): the placeholder as the upstream saw it, in a
# form the gateway leaves alone, and the message once more for the gateway to restore.
AS_RECEIVED = f"Last user message as it arrived here: {REDACTED.replace(PLACEHOLDER, '«EMAIL_ADDRESS_1»')}"
RESTORED = f"The same, echoed for the gateway to restore: {PROMPT}"
TIMEOUT_S = 30.0


# --- no network -------------------------------------------------------------------------------


def _loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    return host is None or (
        isinstance(host, str) and (host in ("::1", "localhost") or host.startswith("127."))
    )


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Loopback only: a lookup of, or a connection to, any other host fails and fails the test; LangSmith
    tracing off; tiktoken reads the gateway's bundled BPE files."""
    attempts: list[str] = []
    env_cache = cast("functools._lru_cache_wrapper[str | None]", langsmith.utils.get_env_var)
    getaddrinfo, connect = socket.getaddrinfo, socket.socket.connect

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host):
            attempts.append(f"getaddrinfo {host!r}")
            raise OSError(f"test is offline: no lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and not _loopback(address[0]):
            attempts.append(f"connect {address!r}")
            raise OSError(f"test is offline: no connection to {address!r}")
        connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        monkeypatch.setenv(name, "false")
    env_cache.cache_clear()  # langsmith caches what it read from the environment
    assert not langsmith.utils.tracing_is_enabled()
    bpe = bundled_tiktoken_dir()
    assert bpe is not None
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(bpe))
    yield attempts
    env_cache.cache_clear()
    assert attempts == [], "something tried to leave the machine"


# --- the gateway, the upstream and the clients ---------------------------------------------


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream) -> RunningGateway:
    return gateway_factory(make_config(upstream), SHIPPED_POLICIES)


@pytest.fixture
def echo(upstream: DevUpstream, monkeypatch: pytest.MonkeyPatch) -> DevUpstream:
    """The session's upstream in echo mode for this test only (its reset() leaves ``echo`` alone)."""
    monkeypatch.setattr(upstream, "echo", True)
    return upstream


class Sent:
    """What the LangChain client sent: each request's path and JSON body, read by an httpx event hook."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.client = httpx.Client(event_hooks={"request": [self._record]})

    def _record(self, request: httpx.Request) -> None:
        self.requests.append((request.url.path, json.loads(request.content)))


@pytest.fixture
def sent() -> Iterator[Sent]:
    recorder = Sent()
    yield recorder
    recorder.client.close()


def chat(gw: RunningGateway, sent: Sent, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="mistral-7b",
        base_url=gw.base_url,
        api_key=SecretStr(gw.key()),
        max_retries=0,
        timeout=TIMEOUT_S,
        http_client=sent.client,
        **kwargs,
    )


def text_of(message: BaseMessage) -> str:
    return str(message.text)


def upstream_bodies(upstream: DevUpstream, path: str, count: int) -> list[dict[str, Any]]:
    """The bodies the upstream received: ``count`` requests to ``path``, each carrying the placeholder
    and never the address."""
    assert [r.path for r in upstream.received] == [path] * count
    for received in upstream.received:
        body = json.dumps(received.body, ensure_ascii=False)
        assert EMAIL not in body
        assert PLACEHOLDER in body
    return [r.body for r in upstream.received]


def client_sent_the_address(sent: Sent, count: int) -> None:
    """The client itself sent the address, so the redaction the upstream shows is the gateway's."""
    assert len(sent.requests) == count
    for _, body in sent.requests:
        assert EMAIL in json.dumps(body, ensure_ascii=False)


# --- ChatOpenAI ------------------------------------------------------------------------------


def test_invoke(gw: RunningGateway, echo: DevUpstream, sent: Sent) -> None:
    reply = chat(gw, sent).invoke(PROMPT)
    assert isinstance(reply, AIMessage)
    assert RESTORED in text_of(reply)
    assert AS_RECEIVED in text_of(reply)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] > 0
    assert reply.usage_metadata["output_tokens"] > 0
    client_sent_the_address(sent, 1)
    [body] = upstream_bodies(echo, "/v1/chat/completions", 1)
    assert body["model"] == "mistral-7b-instruct"
    assert body["messages"] == [{"role": "user", "content": REDACTED}]


def test_stream_with_usage(gw: RunningGateway, echo: DevUpstream, sent: Sent) -> None:
    chunks = list(chat(gw, sent, stream_usage=True).stream(PROMPT))
    assert len(chunks) > 2
    aggregate = functools.reduce(operator.add, chunks)
    assert isinstance(aggregate, AIMessageChunk)
    assert RESTORED in text_of(aggregate)
    assert AS_RECEIVED in text_of(aggregate)
    usage = aggregate.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    client_sent_the_address(sent, 1)
    [body] = upstream_bodies(echo, "/v1/chat/completions", 1)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": REDACTED}]


@tool
def find_contact(echo: str, call: int = 0) -> str:
    """Find the contact a request is about. (The dev upstream calls a tool with the request's text as
    ``echo``, and, streamed, the call's index as ``call``.)"""
    return f"Found the contact in: {echo}"


def ask(model: Runnable[Any, BaseMessage], messages: list[BaseMessage], streamed: bool) -> AIMessage:
    """One turn: the whole answer, or the stream's chunks added up."""
    reply = functools.reduce(operator.add, model.stream(messages)) if streamed else model.invoke(messages)
    assert isinstance(reply, AIMessage)
    return reply


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_tool_call_round_trip(gw: RunningGateway, echo: DevUpstream, sent: Sent, streamed: bool) -> None:
    echo.stream_tool_calls = streamed
    model = chat(gw, sent).bind_tools([find_contact])
    messages: list[BaseMessage] = [HumanMessage(PROMPT)]
    first = ask(model, messages, streamed)
    [call] = first.tool_calls
    assert call["name"] == "find_contact"
    assert call["args"] == ({"call": 0, "echo": PROMPT} if streamed else {"echo": PROMPT})
    result = find_contact.invoke(call)
    assert isinstance(result, ToolMessage)
    assert result.tool_call_id == call["id"]
    messages += [first, result]

    second = ask(model, messages, streamed)
    assert second.tool_calls == []
    assert RESTORED in text_of(second)
    assert "It received 3 message(s) for mistral-7b-instruct: user, assistant, tool." in text_of(second)

    client_sent_the_address(sent, 2)
    _, later = upstream_bodies(echo, "/v1/chat/completions", 2)
    user, assistant, tool_message = later["messages"]
    assert user == {"role": "user", "content": REDACTED}
    assert assistant["role"] == "assistant"
    [sent_call] = assistant["tool_calls"]
    assert sent_call["id"] == call["id"]
    assert json.loads(sent_call["function"]["arguments"])["echo"] == REDACTED
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == call["id"]
    assert tool_message["content"] == f"Found the contact in: {REDACTED}"


class Contact(BaseModel):
    """Whom to write to, and about what."""

    recipient: str
    subject: str
    urgent: bool


def test_structured_output(gw: RunningGateway, echo: DevUpstream, sent: Sent) -> None:
    result = chat(gw, sent).with_structured_output(Contact).invoke(PROMPT)
    # The dev upstream answers an instance of the schema whose strings are the last user message.
    assert result == Contact(recipient=PROMPT, subject=PROMPT, urgent=True)
    client_sent_the_address(sent, 1)
    [body] = upstream_bodies(echo, "/v1/chat/completions", 1)
    assert body["messages"] == [{"role": "user", "content": REDACTED}]
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Contact"
    assert set(response_format["json_schema"]["schema"]["properties"]) == {"recipient", "subject", "urgent"}


# --- OpenAIEmbeddings ------------------------------------------------------------------------


def test_embeddings_token_ids_are_sent_as_redacted_text(
    gw: RunningGateway, upstream: DevUpstream, sent: Sent
) -> None:
    # Field names, not their aliases base_url, api_key and timeout: OpenAIEmbeddings forbids extra
    # fields, so the pydantic mypy plugin types its __init__ by field name.
    embeddings = OpenAIEmbeddings(
        model="mistral-embed",
        openai_api_base=gw.base_url,
        openai_api_key=SecretStr(gw.key()),
        max_retries=0,
        request_timeout=TIMEOUT_S,
        http_client=sent.client,
    )
    assert embeddings.check_embedding_ctx_length  # the default: texts go out as cl100k token ids
    other = "Second chunk."
    documents = embeddings.embed_documents([PROMPT, other])
    query = embeddings.embed_query(PROMPT)

    # What LangChain sent: token ids, the address among them.
    cl100k = tiktoken.get_encoding("cl100k_base")
    assert [body["input"] for _, body in sent.requests] == [
        [cl100k.encode(PROMPT), cl100k.encode(other)],
        [cl100k.encode(PROMPT)],
    ]
    # What the upstream got: text, the address replaced.
    first, second = upstream_bodies(upstream, "/v1/embeddings", 2)
    assert first["input"] == [REDACTED, other]
    assert second["input"] == [REDACTED]
    assert first["model"] == second["model"] == "mistral-embed"

    # The upstream's vectors of the redacted text, as LangChain returns them (normalized).
    dim = upstream.embedding_dim
    assert documents[0] == pytest.approx(embed(REDACTED, dim), abs=1e-5)
    assert documents[1] == pytest.approx(embed(other, dim), abs=1e-5)
    assert query == pytest.approx(documents[0], abs=1e-9)


# --- ChatOpenAI on the Responses API (use_responses_api=True) ------------------------------------


@pytest.mark.parametrize("api", ["chat", "responses"], ids=["bridged", "native"])
@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_the_responses_api_with_a_tool_round_trip(
    gateway_factory: Callable[..., RunningGateway], echo: DevUpstream, sent: Sent, streamed: bool, api: str
) -> None:
    """LangChain's Responses API mode (used for OpenAI's newer models): the request goes to /v1/responses, the
    upstream gets chat completions through the bridge, or a Responses request on a native deployment, and the
    tool round trip works as on chat."""
    gw = gateway_factory(with_supports(echo, ["chat", api]), SHIPPED_POLICIES)
    echo.stream_tool_calls = streamed
    model = chat(gw, sent, use_responses_api=True, stream_usage=True).bind_tools([find_contact])
    messages: list[BaseMessage] = [HumanMessage(PROMPT)]
    first = ask(model, messages, streamed)
    [call] = first.tool_calls
    assert call["name"] == "find_contact"
    assert call["args"]["echo"] == PROMPT  # restored inside the streamed or whole arguments
    result = find_contact.invoke(call)
    assert isinstance(result, ToolMessage)
    second = ask(model, [*messages, first, result], streamed)
    assert second.tool_calls == []
    assert RESTORED in text_of(second)
    assert second.usage_metadata is not None
    assert second.usage_metadata["input_tokens"] > 0
    assert [path for path, _ in sent.requests] == ["/v1/responses"] * 2
    client_sent_the_address(sent, 2)
    if api == "chat":
        _, later = upstream_bodies(echo, "/v1/chat/completions", 2)
        assert [m["role"] for m in later["messages"]] == ["user", "assistant", "tool"]
        assert later["messages"][2]["content"] == f"Found the contact in: {REDACTED}"
    else:
        _, later = upstream_bodies(echo, "/v1/responses", 2)
        items = later["input"]
        assert [i.get("type", i.get("role")) for i in items] == [
            "user",
            "function_call",
            "function_call_output",
        ]
        assert items[2]["output"] == f"Found the contact in: {REDACTED}"
