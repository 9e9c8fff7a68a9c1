"""Train and evaluate the injection head (``injection.py``) on many public sources.

    python -m turnout.evals.injection_train loso  --data /work/shared/data   # the table in docs/guards.md
    python -m turnout.evals.injection_train build --data /work/shared/data   # writes data/injection_head.json

Sources (``SOURCES``; see the READMEs of ``injection/`` and ``injection-extra/``): llm-warden
(jailbreak + benign), deepset (injection + benign, English and German), in-the-wild jailbreaks,
BIPIA indirect injections in e-mails, tables and code (+ clean contexts), garak probes
(encoded attacks + encoded benign instructions) and XSTest's safe prompts (hard negatives).
MultiJail holds plain harmful questions in ten languages, not injections: it is never trained
on and is reported apart. Prompts are deduplicated across sources (lower-cased, blanks
collapsed; the first source wins) and llm-warden's fixed held-out split (seed 13, 25 %) is
never trained on, so its figure stays an in-distribution estimate.

Fitting: each text is read as windows of its views (``injection.views``); the head is a
logistic regression (scikit-learn, L2, C=``C``) over window embeddings, fitted as a
multiple-instance problem: an attack is represented by its most suspicious window, a benign
text by all of its windows (each text weighs 1 in all); two rounds re-pick the windows. Each
source and class weighs the same in total, so no source dominates. A hashed n-gram logistic
model is fitted on the same texts and weights; the model score is the mean of the two
(``NGRAM_WEIGHT``). Thresholds are chosen on leave-one-source-out scores: each training source
is scored by a model fitted without it, and ``block_threshold`` / ``flag_threshold`` are the
scores that 2 % / 5 % of the benign texts of the hard-negative sources (``HARD_NEGATIVES``)
reach.

Embeddings are cached in ``$TURNOUT_GUARDS_CACHE`` (default ``/tmp/turnout-guards-cache``),
keyed by the MiniLM weights and the window size: a rebuild after the first takes seconds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.guards.injection import (
    ARTIFACT,
    NGRAM_ARTIFACT,
    STRIDE,
    WINDOW,
    InjectionHead,
    NgramModel,
    WindowEncoder,
    ngram_counts,
    views,
)

C = 1.0
C_NGRAM = 10.0
# bump when fitting or scoring changes (fit_head, fit_ngram, components, views, heuristics): the cached
# leave-one-source-out scores carry it in their key
FIT_VERSION = 2
# benign texts that sound like attacks: the thresholds are chosen on these (the "hard negatives")
HARD_NEGATIVES = ("xstest", "deepset", "bipia", "garak")
NGRAM_WEIGHT = 0.5
BLOCK_FPR = 0.02
FLAG_FPR = 0.05
ROUNDS = 2
SPLIT_SEED = 13
HOLDOUT_SHARE = 0.25

# name -> path under the data folder. Order matters for deduplication (first wins).
SOURCES: dict[str, str] = {
    "llm-warden": "injection/jailbreak_dataset_train.csv",
    "xstest": "injection-extra/xstest_safe.csv",
    "deepset": "injection-extra/deepset_prompt_injections.csv",
    "inthewild": "injection-extra/inthewild_jailbreak_llms.csv",
    "bipia": "injection-extra/bipia_indirect.csv",
    "garak": "injection-extra/garak_probes.csv",
}
REPORT_ONLY = {"multijail": "injection-extra/multijail.csv"}


@dataclass
class Row:
    text: str
    label: int
    source: str
    language: str = "en"
    category: str = ""
    heldout: bool = False   # llm-warden's fixed held-out split: never trained on


def _norm(t: str) -> str:
    return re.sub(r"\s+", " ", t.lower()).strip()


def load_csv(path: str | Path, source: str = "") -> list[Row]:
    """``prompt,type`` rows (``text``/``label`` accepted); type jailbreak/injection/1/true/malicious
    is positive. ``language`` and ``category`` columns are kept when present."""
    csv.field_size_limit(sys.maxsize)
    rows: list[Row] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            t = r.get("prompt") or r.get("text") or ""
            lab = str(r.get("type", r.get("label", ""))).strip().lower()
            rows.append(Row(t, int(lab in ("jailbreak", "injection", "1", "true", "malicious")), source or str(path),
                            (r.get("language") or "en").strip() or "en", (r.get("category") or "").strip()))
    return rows


def stratified_split(labels: Sequence[int], test_share: float = HOLDOUT_SHARE,
                     seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    from turnout.guards.calibration import stratified_split as split

    return split(labels, test_share, seed)


def load_sources(data: str | Path, names: Sequence[str] | None = None, *, report_only: bool = False) -> list[Row]:
    data = Path(data)
    seen: set[str] = set()
    out: list[Row] = []
    table = dict(SOURCES, **(REPORT_ONLY if report_only else {}))
    for name, rel in table.items():
        if names is not None and name not in names:
            continue
        rows = []
        for r in load_csv(data / rel, name):
            k = _norm(r.text)
            if k and k not in seen:
                seen.add(k)
                rows.append(r)
        if name == "llm-warden":
            _, test = stratified_split([r.label for r in rows])
            for i in test:
                rows[i].heldout = True
        out.extend(rows)
    return out


# ---------------------------------------------------------------- embeddings, cached


class EmbeddingCache:
    """Window embeddings per view text, kept in one .npz per (weights, window) under ``folder``."""

    def __init__(self, encoder: WindowEncoder | None = None, folder: Path | None = None) -> None:
        self.encoder = encoder or WindowEncoder()
        folder = folder or Path(os.environ.get("TURNOUT_GUARDS_CACHE", "/tmp/turnout-guards-cache"))
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"inj-{self.encoder.fingerprint[:12]}-w{WINDOW}s{STRIDE}.npz"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            import numpy as np

            with np.load(self.path) as z:
                self.data = {k: z[k] for k in z.files}
        self._dirty = 0

    def get(self, text: str) -> Any:
        k = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if k not in self.data:
            self.data[k] = self.encoder.encode(text)
            self._dirty += 1
            if self._dirty >= 500:
                self.save()
        return self.data[k]

    def save(self) -> None:
        import numpy as np

        if self._dirty:
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, **self.data)
            os.replace(tmp, self.path)
            self._dirty = 0


@dataclass
class Encoded:
    """Per text: the window embeddings of all its views, the views (for heuristics) and the
    hashed n-gram counts of the views (one sparse row per text)."""
    emb: list[Any]
    texts: list[list[str]]
    counts: Any = None


def encode_rows(rows: Sequence[Row], cache: EmbeddingCache, progress: bool = True) -> Encoded:
    import numpy as np

    embs: list[Any] = []
    texts: list[list[str]] = []
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        vs = views(r.text)
        embs.append(np.concatenate([cache.get(v) for v in vs]))
        texts.append(vs)
        if progress and i % 500 == 499:
            print(f"  encoded {i + 1}/{len(rows)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    cache.save()
    return Encoded(embs, texts, ngram_counts([" \n".join(vs) for vs in texts]))


# ---------------------------------------------------------------- fitting


def _group_weights(rows: Sequence[Row], idx: Sequence[int]) -> dict[int, float]:
    """Per text: 1 / (texts of its source and class), so every (source, class) weighs the same."""
    counts: dict[tuple[str, int], int] = {}
    for i in idx:
        counts[(rows[i].source, rows[i].label)] = counts.get((rows[i].source, rows[i].label), 0) + 1
    n_groups = len(counts)
    return {i: len(idx) / n_groups / counts[(rows[i].source, rows[i].label)] for i in idx}


def fit_ngram(rows: Sequence[Row], enc: Encoded, idx: Sequence[int], w_text: dict[int, float],
              c: float = C_NGRAM) -> NgramModel:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = enc.counts[list(idx)]
    df = np.asarray((x > 0).sum(axis=0)).ravel()
    n = len(idx)
    idf = np.where(df > 0, np.log((1 + n) / (1 + df)) + 1, 0).astype("float32")
    model = NgramModel(idf, np.zeros_like(idf), 0.0)
    lr = LogisticRegression(C=c, max_iter=2000, solver="liblinear")
    lr.fit(model.features(x), np.asarray([rows[i].label for i in idx]),
           sample_weight=np.asarray([w_text[i] for i in idx]))
    model.coef = lr.coef_.ravel().astype("float32")
    model.intercept = float(lr.intercept_[0])
    return model


def fit_head(rows: Sequence[Row], enc: Encoded, idx: Sequence[int], *, c: float = C, rounds: int = ROUNDS,
             ngram_weight: float = NGRAM_WEIGHT) -> InjectionHead:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    w_text = _group_weights(rows, idx)
    head: InjectionHead | None = None
    for _ in range(rounds + 1):
        xs: list[Any] = []
        ys: list[int] = []
        ws: list[float] = []
        for i in idx:
            e = enc.emb[i]
            if rows[i].label:
                if head is None:
                    pick = e[:1]  # first window of the text itself
                else:
                    pick = e[[int(np.argmax(head.window_scores(e)))]]
                xs.append(pick)
                ys.append(1)
                ws.append(w_text[i])
            else:
                xs.append(e)
                ys.extend([0] * len(e))
                ws.extend([w_text[i] / len(e)] * len(e))
        lr = LogisticRegression(C=c, max_iter=3000)
        lr.fit(np.concatenate(xs), np.asarray(ys), sample_weight=np.asarray(ws))
        head = InjectionHead([float(x) for x in lr.coef_.ravel()], float(lr.intercept_[0]), 0.5, 0.5)
    assert head is not None
    if ngram_weight > 0:
        head.ngram_weight = ngram_weight
        head.ngram = fit_ngram(rows, enc, idx, w_text)
    return head


def text_scores(head: InjectionHead, enc: Encoded, idx: Sequence[int]) -> list[float]:
    win, ng, heur = components(head, enc, idx)
    return blend(win, ng, heur, head.ngram_weight)


def components(head: InjectionHead, enc: Encoded, idx: Sequence[int]) -> tuple[Any, Any, Any]:
    """Per text of ``idx``: the best window's score, the n-gram model's score and the best
    heuristic score (``combine`` blends them)."""
    import numpy as np

    from turnout.guards.injection import heuristic_score

    win = np.asarray([float(np.max(head.window_scores(enc.emb[i]))) for i in idx])
    ng = (np.asarray(head.ngram.scores_from_counts(enc.counts[list(idx)])) if head.ngram is not None and len(idx)
          else np.zeros(len(idx)))
    heur = np.asarray([max(heuristic_score(t) for t in enc.texts[i]) for i in idx])
    return win, ng, heur


def blend(win: Any, ng: Any, heur: Any, weight: float) -> list[float]:
    """``combine`` on arrays: max(heuristic, (1 - w) x window + w x n-gram)."""
    import numpy as np

    w, g, h = (np.asarray(v, dtype=np.float64) for v in (win, ng, heur))
    return [float(x) for x in np.maximum(h, (1 - weight) * w + weight * g)]


def threshold_at(neg: Sequence[float], fpr: float) -> float:
    from turnout.guards.calibration import threshold_for_fpr

    return float(min(0.999, max(0.05, threshold_for_fpr(neg, fpr))))


def loso_components(rows: Sequence[Row], enc: Encoded, idx: Sequence[int],
                    progress: bool = True) -> dict[int, tuple[float, float, float]]:
    """Every text of ``idx`` scored (window, n-gram, heuristic) by a model fitted on the
    other sources of ``idx``: leave-one-source-out."""
    out: dict[int, tuple[float, float, float]] = {}
    for s in sorted({rows[i].source for i in idx}):
        t0 = time.perf_counter()
        tr = [i for i in idx if rows[i].source != s]
        te = [i for i in idx if rows[i].source == s]
        if len({rows[i].label for i in tr}) < 2:
            continue
        head = fit_head(rows, enc, tr)
        win, ng, heur = components(head, enc, te)
        out.update({i: (float(a), float(b), float(c)) for i, a, b, c in zip(te, win, ng, heur, strict=True)})
        if progress:
            print(f"  fitted without {s} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return out


def _rates(rows: Sequence[Row], idx: Sequence[int], scores: Sequence[float], thr: float) -> dict[str, Any]:
    from turnout.evals.guards_metrics import auroc

    pos = [s for i, s in zip(idx, scores, strict=True) if rows[i].label]
    neg = [s for i, s in zip(idx, scores, strict=True) if not rows[i].label]
    out: dict[str, Any] = {"n_attack": len(pos), "n_benign": len(neg)}
    out["recall"] = round(sum(s >= thr for s in pos) / len(pos), 4) if pos else None
    out["fpr"] = round(sum(s >= thr for s in neg) / len(neg), 4) if neg else None
    au = auroc([rows[i].label for i in idx], list(scores)) if pos and neg else None
    out["auroc"] = round(au, 4) if au is not None else None
    return out


def loso_report(rows: Sequence[Row], enc: Encoded, comps: dict[int, tuple[float, float, float]],
                weight: float) -> dict[str, Any]:
    """The leave-one-source-out table for one blend ``weight``. For a left-out source the
    thresholds are those the shipped model would get without that source: chosen on the
    leave-one-source-out scores of the *other* hard-negative sources' benign texts (2 % block,
    5 % flag)."""
    scores = {i: blend([w], [g], [h], weight)[0] for i, (w, g, h) in comps.items()}
    report: dict[str, Any] = {"sources": {}, "ngram_weight": weight}
    for s in SOURCES:
        te = [i for i in scores if rows[i].source == s]
        neg = [v for i, v in scores.items() if rows[i].source != s and rows[i].source in HARD_NEGATIVES
               and not rows[i].label]
        block, flag = threshold_at(neg, BLOCK_FPR), threshold_at(neg, FLAG_FPR)
        sc = [scores[i] for i in te]
        rec: dict[str, Any] = {"block": _rates(rows, te, sc, block), "flag": _rates(rows, te, sc, flag),
                               "block_threshold": round(block, 4), "flag_threshold": round(flag, 4)}
        langs = sorted({rows[i].language for i in te})
        if len(langs) > 1:
            rec["by_language_flag"] = {lang: _rates(rows, [i for i in te if rows[i].language == lang],
                                                    [scores[i] for i in te if rows[i].language == lang], flag)
                                       for lang in langs if sum(rows[i].language == lang for i in te) >= 10}
        cats = sorted({rows[i].category.split("-")[0] for i in te if rows[i].label and rows[i].category})
        if 1 < len(cats) <= 40:
            rec["recall_by_category_flag"] = {
                c: f"{sum(scores[i] >= flag for i in te if rows[i].label and rows[i].category.split('-')[0] == c)}/"
                   f"{sum(1 for i in te if rows[i].label and rows[i].category.split('-')[0] == c)}" for c in cats}
        report["sources"][s] = rec
    return report


def heldout_report(rows: Sequence[Row], enc: Encoded, head: InjectionHead) -> dict[str, Any]:
    """The shipped model (fitted on every source's training rows) on llm-warden's held-out split,
    and its flag rate on MultiJail's plain harmful questions per language."""
    te = [i for i, r in enumerate(rows) if r.heldout]
    sc = text_scores(head, enc, te)
    out: dict[str, Any] = {"llm-warden-heldout": {"block": _rates(rows, te, sc, head.block_threshold),
                                                  "flag": _rates(rows, te, sc, head.flag_threshold)}}
    mj = [i for i, r in enumerate(rows) if r.source == "multijail"]
    if mj:
        sc = text_scores(head, enc, mj)
        out["multijail_flag_rate_by_language"] = {
            lang: round(sum(s >= head.flag_threshold for s, i in zip(sc, mj, strict=True) if rows[i].language == lang)
                        / max(1, sum(rows[i].language == lang for i in mj)), 4)
            for lang in sorted({rows[i].language for i in mj})}
    return out


def format_loso(report: dict[str, Any], held: dict[str, Any] | None = None) -> str:
    lines = ["| left-out source | attacks | benign | recall @flag | FPR @flag | recall @block | FPR @block | AUROC |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    def row(name: str, fl: dict[str, Any], bl: dict[str, Any]) -> str:
        return (f"| {name} | {fl['n_attack']} | {fl['n_benign']} | {f(fl['recall'])} | {f(fl['fpr'])} | "
                f"{f(bl['recall'])} | {f(bl['fpr'])} | {f(fl['auroc'])} |")

    for s, rec in report["sources"].items():
        lines.append(row(s, rec["flag"], rec["block"]))
    if held:
        rec = held["llm-warden-heldout"]
        lines.append(row("llm-warden held-out split (in distribution, shipped model)", rec["flag"], rec["block"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m turnout.evals.injection_train")
    p.add_argument("cmd", choices=["loso", "build"], help="loso: the table only; build: the table, then the model")
    p.add_argument("--data", default="/work/shared/data", help="folder holding injection/ and injection-extra/")
    p.add_argument("--out", default=str(ARTIFACT))
    p.add_argument("--weights", default="0,0.5,1", help="n-gram blend weights to report (build ships NGRAM_WEIGHT)")
    p.add_argument("--json", metavar="FILE", help="also write the reports as JSON")
    args = p.parse_args(argv)
    rows = load_sources(args.data, report_only=True)
    cache = EmbeddingCache()
    enc = encode_rows(rows, cache)
    train = [i for i, r in enumerate(rows) if not r.heldout and r.source in SOURCES]
    # the leave-one-source-out scores are kept next to the embeddings, keyed by everything they depend on
    key = hashlib.sha1(json.dumps([C, ROUNDS, C_NGRAM, WINDOW, STRIDE, len(train), cache.encoder.fingerprint,
                                   FIT_VERSION]).encode()).hexdigest()[:16]
    comps_file = cache.path.with_name(f"inj-loso-{key}.json")
    if comps_file.exists():
        comps = {int(k): (v[0], v[1], v[2]) for k, v in json.loads(comps_file.read_text(encoding="utf-8")).items()}
    else:
        comps = loso_components(rows, enc, train)
        comps_file.write_text(json.dumps(comps), encoding="utf-8")
    reports = {str(w): loso_report(rows, enc, comps, float(w)) for w in args.weights.split(",")}
    for w, rep in reports.items():
        print(f"\nn-gram weight {w}:")
        print(format_loso(rep))
    if args.cmd == "build":
        scores = {i: blend([a], [b], [c], NGRAM_WEIGHT)[0] for i, (a, b, c) in comps.items()}
        neg = [v for i, v in scores.items() if rows[i].source in HARD_NEGATIVES and not rows[i].label]
        head = fit_head(rows, enc, train)
        head.block_threshold = threshold_at(neg, BLOCK_FPR)
        head.flag_threshold = min(head.block_threshold, threshold_at(neg, FLAG_FPR))
        head.meta = {"encoder": "sentence-transformers/all-MiniLM-L6-v2 int8 ONNX", "weights_sha256":
                     cache.encoder.fingerprint, "window": WINDOW, "stride": STRIDE, "C": C, "rounds": ROUNDS,
                     "sources": {s: sum(rows[i].source == s for i in train) for s in SOURCES},
                     "C_ngram": C_NGRAM, "block_fpr": BLOCK_FPR, "flag_fpr": FLAG_FPR}
        held = heldout_report(rows, enc, head)
        print("\nshipped model (n-gram weight %s):" % NGRAM_WEIGHT)
        print(format_loso(reports.get(str(NGRAM_WEIGHT), loso_report(rows, enc, comps, NGRAM_WEIGHT)), held))
        print(json.dumps(held, indent=1))
        ng_path = Path(args.out).with_name(NGRAM_ARTIFACT.name)
        ng_sha = ""
        if head.ngram is not None:
            head.ngram.save(ng_path)
            ng_sha = hashlib.sha256(ng_path.read_bytes()).hexdigest()
            print(f"{ng_path}: sha256 {ng_sha}")
        text = head.dumps(ng_path.name, ng_sha)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{args.out}: sha256 {hashlib.sha256(text.encode()).hexdigest()}; block {head.block_threshold:.4f}, "
              f"flag {head.flag_threshold:.4f}; trained on {len(train)} texts")
        reports["shipped"] = held
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1) + "\n", encoding="utf-8")
    for w, rep in reports.items():
        for s, rec in rep.get("sources", {}).items():
            extra = {k: rec[k] for k in ("by_language_flag", "recall_by_category_flag") if k in rec}
            if extra:
                print(f"weight {w} {s}: {json.dumps(extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
