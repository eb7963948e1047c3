"""Tokenizer set-up that never touches the network.

tiktoken downloads its BPE files on first use unless ``TIKTOKEN_CACHE_DIR`` holds them. The
litellm wheel ships cl100k_base and o200k_base under ``litellm_core_utils/tokenizers``, named
by the SHA-1 of their download URL, which is exactly tiktoken's cache layout.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway import forgetting
from gateway.config import Deployment


def bundled_tiktoken_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def configure_tiktoken_offline() -> None:
    """Point tiktoken at the bundled BPE files unless the operator chose a cache already."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return
    path = bundled_tiktoken_dir()
    if path is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(path)


# --- counting ------------------------------------------------------------------------------
#
# A tokenizer is picked per deployment: o200k_base / cl100k_base for OpenAI and Azure models,
# Mistral's own (mistral-common ships its tokenizer files in the wheel) for Mistral models, and
# an estimate (cl100k_base, marked inexact) for everything else. Loading one takes up to a
# second, so the first use of a family should run ``load`` in a thread; counting is then fast.

_O200K = re.compile(r"^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|chatgpt|o[134]\b|o[134]-)")
_CL100K = re.compile(r"^(gpt-4|gpt-3\.5|gpt-35|text-embedding)")
_MISTRAL = re.compile(r"mistral|mixtral|codestral|ministral|pixtral|magistral|devstral|nemo")
_MISTRAL_FILES = {
    "mistral-tekken": "tekken_240911.json",
    "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3",
    "mistral-v1": "tokenizer.model.v1",
}
# SentencePiece models: mistral-common's tokenizer for these is SentencePieceProcessor.encode plus
# optional BOS/EOS, so they are loaded with sentencepiece alone (mistral-common's import, about
# 0.5 s and 30 MB with numpy and its request models, is only needed for tekken).
_SENTENCEPIECE = frozenset({"mistral-v3", "mistral-v1"})
# Per-message framing (role and separators) and the reply primer, as OpenAI documents them
# for its chat models; Mistral's [INST] framing costs about the same.
PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMER = 3
IMAGE_TOKENS = 85  # a low-detail image; real counts depend on size and detail


@dataclass(frozen=True, slots=True)
class Tokenizer:
    family: str
    exact: bool  # False: an estimate with a tokenizer of another family
    encode: Callable[[str], int]  # text -> number of tokens

    def count(self, text: str) -> int:
        return self.encode(text) if text else 0

    def count_prompt(self, text: str) -> int:
        """``count``, remembered per text: chats resend their whole history on every turn, and
        system prompts and retrieved documents repeat. Every tokenizer here releases the GIL,
        so on a busy worker an uncached count also waits for other threads (~30 µs measured)."""
        if not text:
            return 0
        key = (self.family, self.exact, len(text), hash(text))  # the hash, not the text: no prompt kept
        n = _PROMPTS.get(key)
        if n is None:
            n = self.encode(text)
            if len(_PROMPTS) >= _PROMPTS_MAX:
                # The oldest entry; another thread may have emptied the cache meanwhile (an erasure).
                oldest = next(iter(_PROMPTS), None)
                if oldest is not None:
                    _PROMPTS.pop(oldest, None)
            _PROMPTS[key] = n
        return n


@dataclass(frozen=True, slots=True)
class _Names:
    kind: str
    model: str
    litellm_model: str | None


_LOADED: dict[str, Tokenizer] = {}
_PROMPTS: dict[tuple[str, bool, int, int], int] = {}
_PROMPTS_MAX = 20_000
_LOCK = threading.Lock()


class _PromptCounts:
    """The prompt count cache as a ``forgetting`` holder: it is keyed by hashes of prompt texts."""

    def forget(self) -> None:
        _PROMPTS.clear()


_FORGET = _PromptCounts()
forgetting.register(_FORGET)


def family_of(deployment: Deployment) -> str:
    """The tokenizer family for a deployment's model."""
    return _family(deployment.kind, deployment.model, deployment.litellm_model)


@functools.lru_cache(maxsize=256)
def _family(kind: str, model_: str, litellm_model: str | None) -> str:
    deployment = _Names(kind, model_, litellm_model)
    model = (
        (deployment.litellm_model or deployment.model) if deployment.kind == "litellm" else deployment.model
    )
    name = model.lower().rsplit("/", 1)[-1]
    if _O200K.match(name):
        return "o200k_base"
    if _CL100K.match(name):
        return "cl100k_base"
    if deployment.kind == "azure_openai":
        return "o200k_base"
    if _MISTRAL.search(model.lower()):
        if "embed" in name:
            return "mistral-v1"
        if "7b" in name or "mixtral" in name or "8x" in name:
            return "mistral-v3"
        return "mistral-tekken"
    return "estimate"


def loaded(family: str) -> Tokenizer | None:
    return _LOADED.get(family)


def load(family: str) -> Tokenizer:
    """Load (once) the tokenizer of a family, from files in installed packages only."""
    tok = _LOADED.get(family)
    if tok is not None:
        return tok
    with _LOCK:
        tok = _LOADED.get(family)
        if tok is None:
            tok = _load(family)
            _LOADED[family] = tok
    return tok


def _tiktoken(name: str, family: str, exact: bool) -> Tokenizer:
    configure_tiktoken_offline()
    import tiktoken

    enc = tiktoken.get_encoding(name)
    return Tokenizer(family, exact, lambda text: len(enc.encode_ordinary(text)))


def _load(family: str) -> Tokenizer:
    if family in ("o200k_base", "cl100k_base"):
        return _tiktoken(family, family, True)
    if family in _MISTRAL_FILES:
        try:
            path = _mistral_data() / _MISTRAL_FILES[family]
            if family in _SENTENCEPIECE:
                from sentencepiece import SentencePieceProcessor

                spm = SentencePieceProcessor(model_file=str(path))
                return Tokenizer(family, True, lambda text: len(spm.encode(text)))
            from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

            inner = MistralTokenizer.from_file(str(path)).instruct_tokenizer.tokenizer
            return Tokenizer(family, True, lambda text: len(inner.encode(text, bos=False, eos=False)))
        except Exception:  # mistral-common or sentencepiece missing: estimate instead  # noqa: BLE001
            return _tiktoken("cl100k_base", family, False)
    return _tiktoken("cl100k_base", family, False)


def _mistral_data() -> Path:
    """mistral-common's tokenizer files, found without importing the package."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mistral-common is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not path.is_dir():
        raise FileNotFoundError(path)
    return path


def count_chat(tok: Tokenizer, body: dict[str, Any]) -> tuple[int, bool]:
    """Prompt tokens of a chat request (messages, tool definitions, framing) and exactness."""
    exact = tok.exact
    total = REPLY_PRIMER
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        total += PER_MESSAGE + tok.count_prompt(str(message.get("role") or ""))
        if message.get("name"):
            total += PER_NAME + tok.count_prompt(str(message["name"]))
        content = message.get("content")
        if isinstance(content, str):
            total += tok.count_prompt(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += tok.count_prompt(part["text"])
                elif isinstance(part, dict):
                    total += IMAGE_TOKENS
                    exact = False
        for call in message.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            fn = fn if isinstance(fn, dict) else {}
            total += tok.count_prompt(str(fn.get("name") or "")) + tok.count_prompt(
                str(fn.get("arguments") or "")
            )
    tools = body.get("tools") or body.get("functions")
    if tools:
        # Upstreams render tool schemas in their own (undocumented) format; the JSON is close.
        total += tok.count_prompt(orjson.dumps(tools).decode())
        exact = False
    return total, exact


def count_embeddings(tok: Tokenizer, body: dict[str, Any]) -> int:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    return sum(
        tok.count_prompt(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 0 for x in items
    )
