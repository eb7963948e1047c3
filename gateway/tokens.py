"""Tokenizer set-up that never touches the network.

tiktoken downloads its BPE files on first use unless ``TIKTOKEN_CACHE_DIR`` holds them. The
litellm wheel ships cl100k_base and o200k_base under ``litellm_core_utils/tokenizers``, named
by the SHA-1 of their download URL, which is exactly tiktoken's cache layout.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


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
