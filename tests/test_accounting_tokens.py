"""Token counting, usage extraction and prices: offline, exact where a tokenizer exists."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import orjson
import pytest

from gateway import tokens
from gateway.accounting import usage
from gateway.accounting.pricing import price_for
from gateway.config import Deployment

_NO_NETWORK = """
import socket
def refuse(*a, **k):
    raise OSError("network blocked by test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from gateway import tokens
for family in ("o200k_base", "cl100k_base", "mistral-tekken", "mistral-v3", "mistral-v1"):
    tok = tokens.load(family)
    assert tok.exact, family
    print(family, tok.count("Bonjour, combien coûte cette requête ?"))
import sys
from decimal import Decimal
from gateway.accounting.pricing import litellm_prices
assert litellm_prices()["gpt-4o"]["input_cost_per_token"] > 0
assert "litellm" not in sys.modules  # the price map is read without importing litellm
"""


def _deployment(**kw: str) -> Deployment:
    base = {
        "kind": "openai_compatible",
        "base_url": "http://127.0.0.1:1/v1",
        "model": "x",
        "jurisdiction": "EU",
        "region": "fr-par",
    }
    return Deployment.model_validate({**base, **kw})


def test_every_tokenizer_and_the_price_map_load_with_the_network_blocked() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    counts = dict(line.split() for line in out.stdout.splitlines())
    assert len(counts) == 5
    assert all(int(c) > 5 for c in counts.values())


@pytest.mark.parametrize(
    ("kw", "family"),
    [
        ({"model": "gpt-4o"}, "o200k_base"),
        ({"model": "gpt-4-turbo"}, "cl100k_base"),
        ({"kind": "azure_openai", "model": "my-deployment"}, "o200k_base"),
        ({"model": "mistral-small-latest"}, "mistral-tekken"),
        ({"model": "mistralai/Mistral-7B-Instruct-v0.3"}, "mistral-v3"),
        ({"model": "mistral-embed"}, "mistral-v1"),
        ({"model": "llama-3.1-8b"}, "estimate"),
    ],
)
def test_the_tokenizer_follows_the_model_family(kw: dict[str, str], family: str) -> None:
    assert tokens.family_of(_deployment(**kw)) == family


def test_an_unknown_family_is_counted_but_marked_estimated() -> None:
    assert not tokens.load("estimate").exact


def test_message_overhead_and_tool_definitions_count() -> None:
    tok = tokens.load("o200k_base")
    text = "What is the weather in Paris?"
    bare, exact = tokens.count_chat(tok, {"messages": [{"role": "user", "content": text}]})
    assert exact
    assert bare == tok.count(text) + tok.count("user") + tokens.PER_MESSAGE + tokens.REPLY_PRIMER
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    with_tools, exact = tokens.count_chat(
        tok, {"messages": [{"role": "user", "content": text}], "tools": [tool]}
    )
    assert with_tools > bare + 10
    assert not exact


def test_prompt_counts_are_remembered_per_text_per_tokenizer_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    tok = tokens.load("o200k_base")

    def counting(text: str) -> int:
        calls.append(text)
        return tok.count(text)

    spy = tokens.Tokenizer(tok.family, tok.exact, counting)
    monkeypatch.setattr(tokens, "_PROMPTS", {})
    monkeypatch.setattr(tokens, "_PROMPTS_MAX", 3)
    texts = ["first turn", "second turn", "first turn", "third", "fourth", "first turn"]
    assert [spy.count_prompt(t) for t in texts] == [tok.count(t) for t in texts]
    assert calls == ["first turn", "second turn", "third", "fourth", "first turn"]  # evicted, then again
    assert len(tokens._PROMPTS) == 3
    assert not any(isinstance(part, str) and "turn" in part for key in tokens._PROMPTS for part in key)
    other = tokens.load("cl100k_base")
    assert other.count_prompt("first turn") == other.count("first turn")  # its own entry


def test_usage_is_found_without_decoding_the_body() -> None:
    body = orjson.dumps(
        {
            "id": "x",
            "choices": [{"message": {"content": 'he said "usage": {"a": 1}'}}],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 2},
            },
        }
    )
    found = usage.find_usage(body)
    assert found is not None
    assert usage.tokens_of(found) == (7, 3, 2)


def test_a_body_without_usage_yields_its_completion_text_for_an_estimate() -> None:
    body = orjson.dumps({"choices": [{"message": {"content": "Four words right here"}}], "usage": None})
    assert usage.from_body(body) == {"estimated": True, "completion_text": "Four words right here"}


def test_litellm_prices_are_read_offline_and_converted_from_usd() -> None:
    price = price_for(
        _deployment(base_url="https://api.mistral.ai/v1", model="mistral-small-latest"), Decimal("0.9")
    )
    assert price.source == "litellm"
    assert price.fx_rate == Decimal("0.9")
    assert price.input == Decimal("0.15") * Decimal("0.9")  # 1.5e-07 USD per token


def test_a_configured_price_wins_and_an_unknown_model_costs_nothing() -> None:
    eur = _deployment(model="gpt-4o", price={"input_per_1m": "1.10", "output_per_1m": "3.30"})  # type: ignore[arg-type]
    assert price_for(eur, Decimal("0.9")).cost(1_000_000, 0) == Decimal("1.10")
    assert price_for(_deployment(model="homegrown-llm"), Decimal("0.9")).source == "none"
