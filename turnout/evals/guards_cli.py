"""`turnout eval guards`: PII span metrics and injection classification metrics.

PII (presidio-research JSON: ``full_text`` and ``spans`` with ``entity_type``,
``start_position``, ``end_position``): span-level precision, recall and F2 by character
coverage (see ``guards_metrics``), type-aware after mapping both gold and predicted
types onto one vocabulary (``EVAL_TYPES``), and type-agnostic ("was it hidden at all").
Records are split by ``template_id`` (ids divisible by 3 are the "held-out templates"):
the detector's rules were tuned looking at the other templates only, so the held-out
figures are the honest estimate for unseen text.

Injection (``prompt,type`` CSV): duplicates dropped, a fixed-seed stratified split
(seed 13, 25 % held out). A model is fitted on the training part only, its threshold
chosen on 5-fold out-of-fold scores of the training part for a 1.5 % false-positive rate;
precision, recall, false-positive rate and AUROC are reported on the held-out part,
for that model and for the model shipped in the package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from turnout.guards.pii import DEFAULT_NER, NER_CHOICES

EVAL_TYPES: dict[str, str | None] = {
    # gold vocabulary (presidio-research) and ours, onto one set of types
    "STREET_ADDRESS": "LOCATION", "GPE": "LOCATION", "LOCATION": "LOCATION", "ZIP_CODE": "LOCATION",
    "DOMAIN_NAME": "URL", "URL": "URL",
    "ORG": "ORGANIZATION",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("guards", help="PII span metrics and injection classification metrics")
    p.add_argument("--pii", metavar="FILE", help="presidio-research style JSON with full_text and spans")
    p.add_argument("--injection", metavar="FILE", help="CSV with prompt,type (benign | jailbreak)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records of each file")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--min-cover", type=float, default=0.5, help="character coverage for a span to count (0.5)")
    p.add_argument("--pii-model", choices=NER_CHOICES, default=DEFAULT_NER,
                   help=f"the statistical recogniser (guards.pii_model, default {DEFAULT_NER}; see docs/guards.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def _progress(it: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, total=total, desc=desc, file=sys.stderr, leave=False, mininterval=0.5)


def eval_pii(path: str, *, limit: int | None = None, min_cover: float = 0.5, progress: bool = True,
             model_ner: str = DEFAULT_NER) -> dict[str, Any]:
    from turnout.evals.guards_metrics import PiiReport, map_types, percentile
    from turnout.guards.pii import PiiGuard

    with open(path, encoding="utf-8") as fh:
        records = json.load(fh)
    if limit:
        records = records[:limit]
    t0 = time.perf_counter()
    guard = PiiGuard(cache_size=0, ner=model_ner)  # no result cache: every record pays the full cost
    load_s = time.perf_counter() - t0
    reports = {"all": PiiReport(), "heldout_templates": PiiReport()}
    per_gold_type: dict[str, list[int]] = {}
    latencies: list[float] = []
    cpu: list[float] = []
    for r in _progress(records, len(records), "pii", progress):
        text = r["full_text"]
        t, c = time.perf_counter(), time.process_time()
        found = guard.inspect(text)
        latencies.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        pred = map_types([(f.start, f.end, f.type) for f in found], EVAL_TYPES)
        raw_gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in r.get("spans", [])]
        gold = map_types(raw_gold, EVAL_TYPES)
        reports["all"].add(text, gold, pred, min_cover)
        tid = r.get("template_id")
        if isinstance(tid, int) and tid % 3 == 0:
            reports["heldout_templates"].add(text, gold, pred, min_cover)
        # recall per original gold type (type-aware after mapping), to see what is missed
        from turnout.evals.guards_metrics import score_record

        for span, mapped in zip(raw_gold, gold, strict=True):
            hit = score_record(text, [mapped], pred, type_aware=True, min_cover=min_cover)["*"].tp_gold
            agn = score_record(text, [mapped], pred, type_aware=False, min_cover=min_cover)["*"].tp_gold
            row = per_gold_type.setdefault(span[2], [0, 0, 0])
            row[0] += 1
            row[1] += hit
            row[2] += agn
    out: dict[str, Any] = {"file": path, "records": len(records), "min_cover": min_cover, "model_ner": model_ner,
                           "type_map": EVAL_TYPES, "load_s": round(load_s, 2)}
    for name, rep in reports.items():
        out[name] = {
            "type_aware": rep.type_aware["*"].as_dict() if "*" in rep.type_aware else None,
            "type_agnostic": rep.agnostic.as_dict(),
            "per_type": {t: v.as_dict() for t, v in sorted(rep.type_aware.items()) if t != "*"},
        }
    out["recall_by_gold_type"] = {t: {"n": n, "type_aware": round(h / n, 4), "hidden": round(a / n, 4)}
                                  for t, (n, h, a) in sorted(per_gold_type.items())}
    out["latency_ms"] = {"p50": round(percentile(latencies, 50), 2), "p95": round(percentile(latencies, 95), 2),
                         "max": round(max(latencies, default=0.0), 2)}
    # CPU time of the process: what the detector costs when the cores are not shared
    out["cpu_ms"] = {"p50": round(percentile(cpu, 50), 2), "p95": round(percentile(cpu, 95), 2)}
    out["load_average"] = round(os.getloadavg()[0], 2)
    return out


def eval_injection(path: str, *, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    from turnout.evals.guards_metrics import auroc, binary_metrics, percentile
    from turnout.guards.injection import HOLDOUT_SHARE, SPLIT_SEED, InjectionModel, fit, load_csv, split

    texts, labels = load_csv(path)
    if limit:
        texts, labels = texts[:limit], labels[:limit]
    train_idx, test_idx = split(labels)
    test_x = [texts[i] for i in test_idx]
    test_y = [labels[i] for i in test_idx]
    out: dict[str, Any] = {"file": path, "records": len(texts),
                           "split": {"method": "stratified", "seed": SPLIT_SEED, "heldout_share": HOLDOUT_SHARE,
                                     "train": len(train_idx), "heldout": len(test_idx),
                                     "heldout_positive": sum(test_y)}}
    models: dict[str, InjectionModel] = {}
    if len({labels[i] for i in train_idx}) == 2 and len(train_idx) >= 20:
        t0 = time.perf_counter()
        models["fitted_on_train_split"] = fit([texts[i] for i in train_idx], [labels[i] for i in train_idx],
                                              folds=min(5, max(2, min(sum(labels), len(labels) - sum(labels)) // 2)))
        out["fit_s"] = round(time.perf_counter() - t0, 1)
    try:
        models["shipped"] = InjectionModel.load()
    except FileNotFoundError:
        pass
    for name, model in models.items():
        scores: list[float] = []
        latencies: list[float] = []
        for text in _progress(test_x, len(test_x), f"injection ({name})", progress):
            t = time.perf_counter()
            scores.append(float(model.scores([text])[0]))
            latencies.append((time.perf_counter() - t) * 1000)
        m = binary_metrics(test_y, [int(s >= model.threshold) for s in scores])
        out[name] = {"threshold": round(model.threshold, 4), "precision": round(m["precision"], 4),
                     "recall": round(m["recall"], 4), "fpr": round(m["fpr"], 4),
                     "auroc": round(auroc(test_y, scores), 4),
                     "confusion": {k: m[k] for k in ("tp", "fp", "tn", "fn")},
                     "latency_ms": {"p50": round(percentile(latencies, 50), 2),
                                    "p95": round(percentile(latencies, 95), 2)}}
    return out


def run(args: argparse.Namespace) -> int:
    if not args.pii and not args.injection:
        raise ValueError("give --pii FILE and/or --injection FILE")
    report: dict[str, Any] = {}
    progress = not args.no_progress
    if args.pii:
        report["pii"] = eval_pii(args.pii, limit=args.limit, min_cover=args.min_cover, progress=progress,
                                 model_ner=args.pii_model)
    if args.injection:
        report["injection"] = eval_injection(args.injection, limit=args.limit, progress=progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    lines: list[str] = []
    pii = report.get("pii")
    if pii:
        lines.append(f"PII  {pii['file']}  ({pii['records']} records, coverage >= {pii['min_cover']})")
        lines.append(f"  {'split':<20}{'view':<15}{'precision':>10}{'recall':>8}{'F2':>8}")
        for split in ("all", "heldout_templates"):
            for view in ("type_aware", "type_agnostic"):
                v = pii[split][view]
                if v:
                    lines.append(f"  {split:<20}{view:<15}{v['precision']:>10.3f}{v['recall']:>8.3f}{v['f2']:>8.3f}")
        lines.append("  recall by gold type (type-aware / hidden at all):")
        for t, v in pii["recall_by_gold_type"].items():
            lines.append(f"    {t:<20}{v['n']:>5}  {v['type_aware']:.3f} / {v['hidden']:.3f}")
        lat = pii["latency_ms"]
        cpu = pii["cpu_ms"]
        lines.append(f"  latency per record: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms wall; "
                     f"p50 {cpu['p50']:.1f} ms, p95 {cpu['p95']:.1f} ms CPU (load average {pii['load_average']})")
    inj = report.get("injection")
    if inj:
        sp = inj["split"]
        lines.append(f"Injection  {inj['file']}  ({inj['records']} unique prompts; {sp['method']} split, "
                     f"seed {sp['seed']}, {sp['heldout']} held out)")
        for name in ("fitted_on_train_split", "shipped"):
            if name in inj:
                v = inj[name]
                lines.append(f"  {name:<24} thr {v['threshold']:.3f}  precision {v['precision']:.3f}  recall "
                             f"{v['recall']:.3f}  FPR {v['fpr']:.3f}  AUROC {v['auroc']:.3f}  "
                             f"p50 {v['latency_ms']['p50']:.1f} ms")
    return "\n".join(lines)
