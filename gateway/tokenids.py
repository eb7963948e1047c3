"""Token-id input of ``/v1/embeddings``: decoded to text before anything else sees the request.

OpenAI clients may send embeddings input as token ids (LangChain's ``OpenAIEmbeddings`` does by
default, tokenized with tiktoken's ``cl100k_base``). Ids cannot be scanned for PII, and the EU
upstreams (Mistral) would not understand cl100k ids anyway. So, with ``embeddings.token_input:
decode`` (the default), one list of ids or a list of such lists becomes one text or a list of texts,
decoded with ``embeddings.token_input_encoding``; the policies then scan and count that text and
it is forwarded as text. An id outside the encoding is a 400; ``token_input: reject`` refuses ids.
"""

from __future__ import annotations

import functools
from typing import Any

from gateway.config import Embeddings
from gateway.errors import GatewayError


def _ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(i) is int for i in value)


def is_token_input(value: Any) -> bool:
    """One list of ids, or a non-empty list of such lists."""
    return _ids(value) or (isinstance(value, list) and bool(value) and all(_ids(v) for v in value))


@functools.cache
def _encoding(name: str) -> Any:
    import tiktoken

    from gateway.tokens import configure_tiktoken_offline

    configure_tiktoken_offline()
    return tiktoken.get_encoding(name)


def warm(settings: Embeddings) -> None:
    """Load the decoding encoding now (about 0.2 s), so that the first token-id request does not block the
    event loop for it. The app calls it in a thread at start-up when it serves embeddings with ``decode``."""
    if settings.token_input == "decode":
        _encoding(settings.token_input_encoding)


def decode_token_input(body: dict[str, Any], settings: Embeddings) -> None:
    """Replace token-id ``input`` in an embeddings request body by its text (in place)."""
    value: Any = body.get("input")
    if not is_token_input(value):
        return
    if settings.token_input == "reject":
        raise GatewayError(
            400,
            "embeddings.token_input_rejected",
            "Token-id input is not accepted here; send the text.",
            param="input",
        )
    encoding = _encoding(settings.token_input_encoding)
    lists: list[list[int]] = [value] if _ids(value) else value
    for ids in lists:
        if any(i < 0 or i >= encoding.n_vocab for i in ids):
            raise GatewayError(
                400,
                "embeddings.token_input_invalid",
                f"Token ids must be between 0 and {encoding.n_vocab - 1} ({settings.token_input_encoding}).",
                param="input",
            )
    texts = [encoding.decode(ids) for ids in lists]
    body["input"] = texts[0] if _ids(value) else texts
