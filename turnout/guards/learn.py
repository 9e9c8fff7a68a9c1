"""Refitting the injection head for one tenant from its labelled traffic, behind a promotion gate.

    examples, skipped = store.examples(tenant, encoder.fingerprint)   # turnout.ledger.guard_examples
    gate = GateSet.embed(load_gate(), encoder)                        # the shipped attack gate set
    result = refit(base, current, examples, gate)
    if result.promote: registry.promote(...)                          # turnout.guards.heads

**Fit.** Logistic regression on the kept window embeddings (the 384 weights; the intercept stays),
with the shipped head as the prior: minimise the examples' log-loss plus ``prior / 2 * d' M d``,
``d = w - w0``, ``M`` the second moment of typical window embeddings (``data/injection_moment.npy``,
built from texts outside the gate set), so a change costs what it moves scores on typical traffic.
Of the pulls ``prior x PRIOR_STEPS``, the strongest under which every labelled example lands on its
side of the shipped block threshold is kept (the least change that fixes the labels; chosen on the
tenant's labels only, never on the gate set). A false positive is a benign example (0), a false
negative an attack (1). The n-gram half and the phrase heuristics are the shipped ones; each
example's n-gram and heuristic scores were kept with its embedding, so its score under a candidate
is exact.

**Threshold.** The candidate's block threshold is the shipped one, raised just above the highest
score of the tenant's labelled benign examples under the candidate (so none of them is blocked);
its flag threshold stays the shipped one (below it).

**Gate** (as the router's, ``turnout.evals.retrain``): the candidate is promoted only if (1) its
recall on the attacks of the gate set (``data/injection_gate.jsonl``, embedded at fit time with the
guard's own encoder) stays at or above the shipped head's recall minus ``floor`` (2 points by
default), and (2) the tenant's labelled false positives it still blocks are fewer than under the
head serving now (or as many, with fewer of its labelled false negatives passed). Otherwise it is
refused with the figures. Every candidate is kept in the tenant's registry with its figures.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnout.guards.injection import InjectionHead, WindowEncoder, heuristic_score, views
from turnout.ledger.guard_examples import Example

GATE = Path(__file__).with_name("data") / "injection_gate.jsonl"
MOMENT = Path(__file__).with_name("data") / "injection_moment.npy"
DIM = 384
RIDGE = 1e-3
DEFAULT_FLOOR = 0.02     # recall on the gate's attacks may drop by at most this much
DEFAULT_PRIOR = 10.0     # pull towards the shipped weights, the strongest tried
PRIOR_STEPS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)  # weaker pulls, tried in turn until the labels are fixed
MAX_THRESHOLD = 0.999


def load_gate(path: Path = GATE) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [str(r["text"]) for r in rows], np.asarray([int(r["label"]) for r in rows], dtype=np.int8)


@dataclass
class GateSet:
    """The gate texts as a head sees them: every window of every view, the n-gram and heuristic scores."""

    labels: np.ndarray          # (n,) 1 attack, 0 benign
    windows: np.ndarray         # (total windows, 384)
    owner: np.ndarray           # (total windows,) index of the text
    ngram: np.ndarray           # (n,)
    heuristic: np.ndarray       # (n,)
    sha256: str = ""            # of the gate texts and labels, with the encoder's fingerprint

    @classmethod
    def embed(cls, texts: Sequence[str], labels: np.ndarray, encoder: WindowEncoder, base: InjectionHead,
              cache: Path | None = None) -> GateSet:
        """Embed the gate with ``encoder`` (cached in ``cache``, a folder, by content and encoder)."""
        h = hashlib.sha256(encoder.fingerprint.encode())
        for t, y in zip(texts, labels, strict=True):
            h.update(f"{int(y)}\0{t}\0".encode())
        digest = h.hexdigest()
        file = cache / f"gate-{digest[:16]}.npz" if cache is not None else None
        if file is not None and file.is_file():
            with np.load(file) as z:
                return cls(z["labels"], z["windows"], z["owner"], z["ngram"], z["heuristic"], digest)
        wins, owner, ng, heur = [], [], [], []
        for i, text in enumerate(texts):
            vs = views(text)
            emb = np.concatenate([encoder.encode(v) for v in vs])
            wins.append(emb)
            owner.extend([i] * len(emb))
            ng.append(base.ngram.score(vs) if base.ngram is not None else 0.0)
            heur.append(max(heuristic_score(v) for v in vs))
        gate = cls(np.asarray(labels), np.concatenate(wins).astype(np.float32), np.asarray(owner, dtype=np.int32),
                   np.asarray(ng, dtype=np.float64), np.asarray(heur, dtype=np.float64), digest)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(file, labels=gate.labels, windows=gate.windows, owner=gate.owner, ngram=gate.ngram,
                                heuristic=gate.heuristic)
        return gate

    def scores(self, head: InjectionHead) -> np.ndarray:
        ws = head.window_scores(self.windows).astype(np.float64)
        best = np.zeros(len(self.labels))
        np.maximum.at(best, self.owner, ws)
        model = (1 - head.ngram_weight) * best + head.ngram_weight * self.ngram
        out: np.ndarray = np.maximum(model, self.heuristic)
        return out


def example_arrays(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, attack labels, n-gram scores, heuristic scores) of labelled examples."""
    emb = np.stack([np.frombuffer(e.embedding, dtype="<f4") for e in examples]).astype(np.float64)
    y = np.asarray([1.0 if e.attack else 0.0 for e in examples])
    return emb, y, np.asarray([e.ngram_score for e in examples]), np.asarray([e.heuristic for e in examples])


def example_scores(head: InjectionHead, emb: np.ndarray, ng: np.ndarray, heur: np.ndarray) -> np.ndarray:
    window = 1.0 / (1.0 + np.exp(-(emb @ np.asarray(head.coef) + head.intercept)))
    out: np.ndarray = np.maximum((1 - head.ngram_weight) * window + head.ngram_weight * ng, heur)
    return out


def load_moment(path: Path = MOMENT) -> np.ndarray:
    """E[x x^T] of typical window embeddings (shipped, built with the gate set; identity without it)."""
    if not path.is_file():
        return np.eye(DIM)
    m: np.ndarray = np.load(path).astype(np.float64)
    return m + RIDGE * np.eye(len(m))


def fit_head(base: InjectionHead, emb: np.ndarray, y: np.ndarray, prior: float = DEFAULT_PRIOR,
             moment: np.ndarray | None = None) -> InjectionHead:
    """The shipped head moved towards the examples: log-loss + prior/2 * d' M d, d = w - w0, M the
    second moment of typical embeddings: a change is measured by how much it moves scores on typical
    traffic, not by its length, so it goes where the examples differ from that traffic. The intercept
    stays the shipped one (moving it moves every score)."""
    from scipy.optimize import minimize

    w0 = np.asarray(base.coef, dtype=np.float64)
    m = np.eye(len(w0)) if moment is None else moment

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = emb @ w + base.intercept
        p = 1.0 / (1.0 + np.exp(-z))
        d = w - w0
        md = m @ d
        return float(np.sum(np.logaddexp(0.0, z) - y * z)) + prior / 2 * float(d @ md), emb.T @ (p - y) + prior * md

    w = minimize(loss, w0, jac=True, method="L-BFGS-B").x
    return InjectionHead([float(v) for v in w], base.intercept, base.block_threshold, base.flag_threshold,
                         dict(base.meta), base.ngram_weight, base.ngram)


@dataclass
class Figures:
    gate_recall: float
    gate_fpr: float
    tenant_fp_blocked: int   # labelled false positives the head blocks
    tenant_fn_passed: int    # labelled false negatives it does not block
    block_threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {"gate_recall": round(self.gate_recall, 4), "gate_fpr": round(self.gate_fpr, 4),
                "tenant_fp_blocked": self.tenant_fp_blocked, "tenant_fn_passed": self.tenant_fn_passed,
                "block_threshold": round(self.block_threshold, 6)}


def figures(head: InjectionHead, gate: GateSet, emb: np.ndarray, y: np.ndarray, ng: np.ndarray,
            heur: np.ndarray) -> Figures:
    g = gate.scores(head) >= head.block_threshold
    attacks = gate.labels == 1
    blocked = example_scores(head, emb, ng, heur) >= head.block_threshold
    return Figures(float(g[attacks].mean()) if attacks.any() else 0.0,
                   float(g[~attacks].mean()) if (~attacks).any() else 0.0,
                   int(np.sum(blocked & (y == 0))), int(np.sum(~blocked & (y == 1))), head.block_threshold)


@dataclass
class Outcome:
    promote: bool
    reason: str
    candidate: InjectionHead | None
    figures: dict[str, Any] = field(default_factory=dict)   # shipped, current, candidate


def refit(base: InjectionHead, current: InjectionHead | None, examples: Sequence[Example], gate: GateSet,
          floor: float = DEFAULT_FLOOR, prior: float = DEFAULT_PRIOR, tenant: str = "") -> Outcome:
    """Fit a candidate for the tenant and gate it (see the module)."""
    if not examples:
        return Outcome(False, "no labelled examples for this tenant (POST /v1/feedback with kind 'guard')", None)
    emb, y, ng, heur = example_arrays(examples)
    serving = current or base
    moment = load_moment()
    for strength in (prior * f for f in PRIOR_STEPS):  # the least change to the shipped head that fixes the labels
        cand = fit_head(base, emb, y, strength, moment)
        scores = example_scores(cand, emb, ng, heur)
        if np.all((scores >= base.block_threshold) == (y == 1)):
            break
    benign = example_scores(cand, emb, ng, heur)[y == 0]
    needed = float(np.max(benign)) + 1e-4 if len(benign) else 0.0
    cand.block_threshold = min(MAX_THRESHOLD, max(base.block_threshold, needed))
    cand.flag_threshold = min(base.flag_threshold, cand.block_threshold)
    shipped_f, current_f, cand_f = (figures(h, gate, emb, y, ng, heur) for h in (base, serving, cand))
    figs = {"shipped": shipped_f.as_dict(), "current": current_f.as_dict(), "candidate": cand_f.as_dict()}
    cand.meta = {**base.meta, "tenant": tenant, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "fit": {"prior": strength, "floor": floor, "examples": len(examples),
                         "false_positive": int(np.sum(y == 0)), "false_negative": int(np.sum(y == 1)),
                         "gate_sha256": gate.sha256},
                 "figures": figs}
    want = shipped_f.gate_recall - floor
    if cand_f.gate_recall < want:
        return Outcome(False, f"gate recall {cand_f.gate_recall:.3f} < floor {want:.3f} (shipped "
                       f"{shipped_f.gate_recall:.3f} - {floor:.2f}): the labels would lower recall on known attacks",
                       cand, figs)
    fewer_fp = cand_f.tenant_fp_blocked < current_f.tenant_fp_blocked
    fewer_fn = (cand_f.tenant_fp_blocked <= current_f.tenant_fp_blocked
                and cand_f.tenant_fn_passed < current_f.tenant_fn_passed)
    if not (fewer_fp or fewer_fn):
        return Outcome(False, f"no better on the tenant's labels: false positives blocked {cand_f.tenant_fp_blocked} "
                       f"(now {current_f.tenant_fp_blocked}), false negatives passed {cand_f.tenant_fn_passed} "
                       f"(now {current_f.tenant_fn_passed})", cand, figs)
    reason = (f"gate recall {cand_f.gate_recall:.3f} >= floor {want:.3f}; tenant false positives blocked "
              f"{current_f.tenant_fp_blocked} -> {cand_f.tenant_fp_blocked}, false negatives passed "
              f"{current_f.tenant_fn_passed} -> {cand_f.tenant_fn_passed}")
    return Outcome(True, reason, cand, figs)
