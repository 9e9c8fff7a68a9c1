"""`turnout router`: retrain a route's learned router from its traffic labels, list, roll back.

    turnout router fit --from-traffic --alias auto [--db FILE | --dsn DSN] [--registry DIR]
                       [--family auto] [--embedding minilm] [--target-escalation 0.2] [--folds 5] [--confidence 0.9]
                       [--warm-start mmlu] [--baseline R.npz] [--since DAYS] [--min-new-labels N] [--json]
    turnout router history --alias auto [--registry DIR] [--json]
    turnout router rollback --alias auto [--registry DIR]

``fit`` trains a candidate on the route's labels (``route_labels``, see turnout.ledger.labels):
with ``--family auto`` (the default) the family and its regularisation are chosen by k-fold
cross-validation on those labels; the candidate is promoted only if its out-of-fold APGR beats the
serving router's on the labels that router never trained on, at the lower ``--confidence`` bound
of a paired bootstrap, and its scores spread (turnout.evals.selection); every fitted artifact is kept in the
registry (``.turnout/routers/<alias>/`` by default) with its provenance, and ``history.jsonl``
records each decision. Point the route's ``router:`` at the registry folder to serve its current
artifact: a running gateway serves a promotion or a rollback within ``learning.reload_s`` (5 s by
default), without a restart. One fit runs at a time per registry (``fit.lock``); with
``--min-new-labels N`` a fit only runs when N labels arrived since the last one (the gateway's
schedule, ``routes.<alias>.learning.retrain``, runs exactly this). Exit status: 0 promoted,
3 refused (a worse or degenerate candidate), 4 skipped (fewer new labels than asked), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REFUSED = 3
SKIPPED = 4


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("router", help="retrain the learned router from traffic labels; history; rollback",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = p.add_subparsers(dest="router_command", required=True, metavar="ACTION")

    fit = rsub.add_parser("fit", help="fit a router from traffic labels and promote it if it is better")
    fit.add_argument("--from-traffic", action="store_true", required=True,
                     help="train on the route's labels in the ledger (the only source for now)")
    _common(fit)
    fit.add_argument("--db", default=os.environ.get("TURNOUT_DB", ".turnout/turnout.sqlite"))
    fit.add_argument("--dsn", default=os.environ.get("TURNOUT_DSN") or None,
                     help="read labels from PostgreSQL at this DSN instead (default $TURNOUT_DSN: keeps a "
                          "password off the command line, where other users of the host can read it)")
    fit.add_argument("--schema", default="public")
    fit.add_argument("--family", default="auto", help="router family (turnout eval router --help lists them), or "
                     "auto (the default): chosen with its regularisation by cross-validation on the labels")
    fit.add_argument("--embedding", default=None, help="prompt embedding for embedding families (default minilm)")
    fit.add_argument("--target-escalation", type=float, default=0.2, metavar="RATE",
                     help="share of recent traffic the new threshold sends to the strong engine (default 0.2)")
    fit.add_argument("--warm-start", default=None, metavar="DATASET",
                     help="add a public outcome data set (mmlu, gsm8k, mt_bench or a CSV) to the training labels")
    fit.add_argument("--data-dir", type=Path, default=None, help="folder of the public data sets")
    fit.add_argument("--baseline", type=Path, default=None, metavar="R.npz",
                     help="the router serving now, when the registry has none yet (e.g. the route's artifact)")
    fit.add_argument("--folds", type=int, default=5, help="cross-validation folds over the labels (default 5)")
    fit.add_argument("--confidence", type=float, default=0.9,
                     help="promote when the APGR gain's lower bound at this confidence is above 0 (default 0.9)")
    fit.add_argument("--since", type=float, default=None, metavar="DAYS", help="only labels of the last N days")
    fit.add_argument("--min-new-labels", type=int, default=None, metavar="N",
                     help="fit only if N labels arrived since the last fit (else exit 4)")
    fit.add_argument("--json", action="store_true")
    fit.set_defaults(func=run_fit)

    hist = rsub.add_parser("history", help="the route's artifacts and gate decisions, oldest first")
    _common(hist)
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=run_history)

    back = rsub.add_parser("rollback", help="serve the artifact promoted before the current one")
    _common(back)
    back.set_defaults(func=run_rollback)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alias", required=True, help="the route (model alias) whose router this is")
    p.add_argument("--registry", type=Path, default=None,
                   help="the route's artifact folder (default .turnout/routers/<alias>)")


def _registry(args: argparse.Namespace) -> Any:
    from turnout.routing.artifacts import Registry
    from turnout.routing.learned import DEFAULT_ARTIFACT_DIR

    return Registry(args.registry or DEFAULT_ARTIFACT_DIR / args.alias)


def _labels(args: argparse.Namespace) -> list[dict[str, Any]]:
    since = time.time() - args.since * 86400 if args.since is not None else None
    if args.dsn:
        from turnout.ledger.labels import PostgresLabels

        return PostgresLabels(args.dsn, args.schema).rows(args.alias, since)
    if not Path(args.db).is_file():
        raise FileNotFoundError(f"{args.db}: no ledger yet (pass --db)")
    from turnout.ledger.labels import SQLiteLabels

    store = SQLiteLabels(args.db)
    try:
        return store.rows(args.alias, since)
    finally:
        store._conn.close()


def run_fit(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    registry = _registry(args)
    with registry.lock():  # one fit at a time per route: the CLI, and each replica's schedule
        return _fit(args, registry)


def _fit(args: argparse.Namespace, registry: Any) -> int:
    from turnout.evals.retrain import label_times, retrain, traffic_dataset
    from turnout.evals.selection import AUTO, GRID
    from turnout.routing.learned import LearnedRouter
    from turnout.routing.scorers import make_scorer
    from turnout.weights import minilm_available

    rows = _labels(args)
    if args.min_new_labels is not None:
        new = len(rows) - registry.labels_at_last_fit()
        if new < args.min_new_labels:
            result = {"alias": args.alias, "promoted": False, "skipped": True, "labels": len(rows), "new_labels": new,
                      "reason": f"{new} new labels since the last fit; {args.min_new_labels} needed"}
            print(json.dumps(result, indent=2) if args.json else f"{args.alias}: skipped: {result['reason']}")
            return SKIPPED
    current_path = registry.current()
    if current_path is None and args.baseline is not None:  # seed the registry with the serving router
        baseline = LearnedRouter.load(args.baseline)
        current_path = registry.add(baseline)
        registry.promote(current_path, reason=f"baseline: {args.baseline}")
    current = LearnedRouter.load(current_path) if current_path is not None else None
    data = traffic_dataset(rows, f"traffic:{args.alias}")
    warm = None
    if args.warm_start:
        from turnout.evals.datasets import load_dataset
        from turnout.evals.router_cli import default_data_dir

        warm = load_dataset(args.warm_start, args.data_dir or default_data_dir())
    embed = None
    embedding = None
    if not (args.folds >= 2 and 0.5 <= args.confidence < 1.0):
        raise ValueError("--folds must be at least 2 and --confidence in [0.5, 1)")
    wants_emb = any(make_scorer(f).uses_embeddings for f, _ in GRID) if args.family == AUTO else (
        make_scorer(args.family).uses_embeddings)
    if wants_emb and (args.family != AUTO or args.embedding or minilm_available()):
        from turnout.embedding.embeddings import DEFAULT_EMBEDDING
        from turnout.routing.learned import make_embedder

        embedding = args.embedding or DEFAULT_EMBEDDING
        encoder = make_embedder(embedding)
        embed = encoder.encode
    outcome = retrain(data, current, args.family, args.target_escalation, embed, embedding, warm,
                      times=label_times(rows), folds=args.folds, confidence=args.confidence)
    path = None
    if outcome.candidate is not None:
        path = registry.add(outcome.candidate)
        fields = {"reason": outcome.reason, "labels": len(rows),
                  "candidate": outcome.candidate_metrics.as_dict() if outcome.candidate_metrics else None,
                  "current": outcome.current_metrics.as_dict() if outcome.current_metrics else None}
        if outcome.promote:
            registry.promote(path, **fields)
        else:
            registry.record("refused", path, **fields)
    else:
        registry.record("refused", None, reason=outcome.reason, labels=len(rows))
    result = {"alias": args.alias, "promoted": outcome.promote, "skipped": False, "reason": outcome.reason,
              "artifact": str(path) if path else None, "labels": len(rows),
              "current": str(registry.current()) if registry.current() else None}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verb = "promoted" if outcome.promote else "refused"
        print(f"{args.alias}: {verb} {path.name if path else 'no candidate'} ({len(rows)} labels): {outcome.reason}")
    return 0 if outcome.promote else REFUSED


def run_history(args: argparse.Namespace) -> int:
    registry = _registry(args)
    events = registry.history()
    current = registry.current()
    if args.json:
        print(json.dumps({"alias": args.alias, "current": current.name if current else None, "events": events},
                         indent=2))
        return 0
    if not events:
        print(f"{args.alias}: no router artifacts in {registry.folder}")
        return 0
    print(f"{'when':<26} {'event':<9} {'artifact':<10} {'labels':>6} {'APGR':>6} {'CPT50':>6}  reason")
    for e in events:
        m = e.get("candidate") or {}
        apgr = f"{m['apgr']:.3f}" if m.get("apgr") is not None else "-"
        cpt = f"{m['cpt50'] * 100:.1f}%" if m.get("cpt50") is not None else "-"
        mark = " *" if current is not None and e.get("artifact") == current.name and e["event"] != "refused" else ""
        print(f"{e['ts']:<26} {e['event']:<9} {str(e.get('artifact') or '-'):<10} {e.get('labels', '-')!s:>6} "
              f"{apgr:>6} {cpt:>6}  {e.get('reason', '')}{mark}")
    print(f"serving: {current.name if current else 'none'}", file=sys.stderr)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    before = registry.current()
    target = registry.rollback()
    print(f"{args.alias}: now serving {target.name} (was {before.name if before else 'none'}); "
          "a running gateway picks it up within its learning.reload_s")
    return 0
