"""`turnout eval router`: cross-validated APGR / CPT of routers on outcome data, and training.

Examples::

    turnout eval router --dataset mmlu                       # table for the default routers
    turnout eval router --dataset gsm8k --router hybrid gsm8k-weak-answer --json
    turnout eval router --dataset my.csv --plot curve.png
    turnout eval router --dataset mmlu --router tfidf-lr \\
        --save-artifact .turnout/routers/mmlu-tfidf-lr.npz --target-escalation 0.2
    turnout eval router --artifact .turnout/routers/mmlu-tfidf-lr.npz --dataset gsm8k
    turnout eval router --replay gsm8k --artifact .turnout/routers/mmlu-hybrid-stats.npz

Every learned router is scored with k-fold cross-validation (fixed seed): no prompt is scored by
a router trained on it. ``random`` and ``oracle`` are reference rows. ``gsm8k-weak-answer`` and
``gsm8k-weak-answer-emb`` read the weak model's response as well as the prompt, so they are
post-generation (a cascade) and marked so in the output. ``--embedding minilm-static`` builds a
per-token table from MiniLM once (cached in .turnout/cache) and then embeds a prompt in < 1 ms;
``--embedding minilm-onnx`` runs the full model in onnxruntime with int8 weights (built once into
the model cache, ~/.cache/turnout), ``minilm-onnx-fp32`` in float32.
Heavy imports (scikit-learn, matplotlib, tqdm, the embedding model) happen inside the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from turnout.embedding.embeddings import DEFAULT_EMBEDDING, EMBEDDINGS

if TYPE_CHECKING:
    from turnout.evals.datasets import RoutingDataset
    from turnout.evals.routing_metrics import RouterMetrics

LEARNED = ("tfidf-lr", "emb-knn", "emb-lr", "hybrid", "hybrid-stats", "stacked")
POST_GENERATION = ("gsm8k-weak-answer", "gsm8k-weak-answer-emb")
REFERENCE = ("random", "oracle")
ROUTERS = LEARNED + POST_GENERATION + REFERENCE
T = TypeVar("T")


def default_data_dir() -> Path:
    """``$TURNOUT_DATA_DIR``, else ``../shared/data/routellm`` next to the repository."""
    env = os.environ.get("TURNOUT_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "routellm"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TURNOUT_CACHE_DIR", Path(".turnout") / "cache"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "router",
        help="cross-validated APGR/CPT of routers on outcome data; optionally train and save one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default=None, help="mmlu, gsm8k, mt_bench, or PATH.csv "
                   "(prompt,weak_correct,strong_correct[,weak_cost,strong_cost]); required unless --replay")
    p.add_argument("--artifact", type=Path, default=None, metavar="R.npz",
                   help="score this saved router on --dataset (no training): APGR, CPT, its escalation share at "
                   "its threshold and the spread of its scores; with --replay, the router serving at the start")
    p.add_argument("--replay", default=None, metavar="DATASET",
                   help="replay this outcome data set as live traffic through the learning loop (shadow labels, "
                   "judge, retraining, promotion gate) and print APGR/CPT50 of the serving router against labels; "
                   "the loop refits the first --router's family (default: auto, chosen by cross-validation on its "
                   "labels, as the gateway does); see turnout.evals.replay")
    p.add_argument("--sampling", choices=("uniform", "uncertainty"), default="uniform",
                   help="with --replay: which weak-answered requests are shadowed (default uniform, as the gateway)")
    p.add_argument("--label-budget", type=int, default=1000, help="with --replay: labels to collect (default 1000)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="RouteLLM data folder (default: $TURNOUT_DATA_DIR or ../shared/data/routellm)")
    p.add_argument("--router", nargs="+", choices=ROUTERS, default=None, metavar="NAME",
                   help=f"routers to evaluate, from: {', '.join(ROUTERS)} (default: tfidf-lr, plus emb-knn "
                   "and hybrid when the embedding model is installed, plus gsm8k-weak-answer on gsm8k)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="fold and random-router seed (default 0)")
    p.add_argument("--bins", type=int, default=10, help="quantile bins of the score for the curve (RouteLLM: 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="write the quality curves as PNG")
    p.add_argument("--embedding", choices=EMBEDDINGS, default=DEFAULT_EMBEDDING,
                   help="prompt embeddings for emb-*/hybrid: the full MiniLM forward pass in numpy (default), its "
                   "distilled static token table (sub-millisecond, built once in about a minute), or the full "
                   "model in onnxruntime, int8 (minilm-onnx) or float32 (minilm-onnx-fp32), built once in seconds")
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default .turnout/cache)")
    p.add_argument("--save-artifact", type=Path, default=None, metavar="PATH",
                   help="refit the first --router (a learned one) on all rows and save it with a calibrated threshold "
                   "(convention: .turnout/routers/<dataset>-<router>.npz)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-escalation", type=float, default=None, metavar="RATE",
                        help="with --save-artifact: threshold sending this share of prompts to the strong model")
    target.add_argument("--target-quality", type=float, default=None, metavar="Q",
                        help="with --save-artifact: lowest-cost threshold whose CV quality reaches Q")
    p.set_defaults(func=run)


def _progress(iterable: Iterator[T], total: int, desc: str) -> Iterator[T]:
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False))


def _default_routers(data: RoutingDataset) -> list[str]:
    from turnout.weights import minilm_available

    routers = ["tfidf-lr"]
    if minilm_available():
        routers += ["emb-knn", "hybrid"]
    if data.weak_responses is not None:
        routers.append("gsm8k-weak-answer-emb" if minilm_available() else "gsm8k-weak-answer")
    return routers


def _embeddings(data: RoutingDataset, cache_dir: Path, kind: str, long_text: str = "head-tail") -> np.ndarray:
    from tqdm import tqdm

    from turnout.embedding.embeddings import cached_embeddings
    from turnout.routing.learned import make_embedder

    encoder = make_embedder(kind, cache_dir, long_text)
    with tqdm(total=len(data), desc="embedding prompts", file=sys.stderr, leave=False) as bar:

        def progress(n: int) -> None:
            bar.update(n)

        emb = cached_embeddings(encoder, data.prompts, cache_dir, on_batch=progress)
    window = getattr(getattr(encoder, "encoder", encoder), "window", None)
    if window is not None and window.truncated:
        print(f"note: {window.truncated} of {window.texts} prompts are longer than {window.max_length} tokens; "
              f"embedded {'head and tail' if window.long_text == 'head-tail' else 'head only'}", file=sys.stderr)
    return emb


def artifact_scores(path: Path, data: RoutingDataset, cache_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores of a saved router on every prompt of ``data`` (embeddings through the cache)."""
    from turnout.routing.learned import LearnedRouter

    router = LearnedRouter.load(path)
    emb = None
    if router.scorer.uses_embeddings:
        meta = router.metadata
        emb = _embeddings(data, cache_dir, str(meta.get("embedding") or DEFAULT_EMBEDDING),
                          str(meta.get("embedding_long_text") or "head"))
    return router.scorer.predict(list(data.prompts), emb), router.metadata


def run_artifact(args: argparse.Namespace, data: RoutingDataset) -> int:
    """``--artifact R.npz --dataset D``: a saved router scored on another data set."""
    from turnout.evals.routing_metrics import evaluate_scores
    from turnout.routing.learned import DegenerateRouter, check_spread

    scores, meta = artifact_scores(args.artifact, data, args.cache_dir or default_cache_dir())
    m = evaluate_scores(scores, data.weak, data.strong, args.bins)
    threshold = float(meta["threshold"])
    share = float((scores >= threshold).mean())
    degenerate = None
    try:
        check_spread(scores, f"{data.name} ({args.artifact})")
    except DegenerateRouter as exc:
        degenerate = str(exc)
        print(f"warning: {exc}", file=sys.stderr)
    target = meta.get("target") or {}
    out = {
        "artifact": str(args.artifact), "family": meta.get("family"),
        "trained_on": (meta.get("training_data") or {}).get("name"), "dataset": data.name, "n": len(data),
        **m.as_dict(), "threshold": threshold, "escalation_at_threshold": share, "target": target,
        "score_spread": float(np.std(scores)), "degenerate": degenerate,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(_table(data.name, {f"{meta.get('family')} ({args.artifact.name})": m}))
    want = f" (calibrated for {target.get('value')} {target.get('kind')})" if target else ""
    print(f"threshold {threshold:.4f}: sends {share * 100:.1f}% to the strong model{want}; "
          f"score spread (std) {out['score_spread']:.4f}")
    return 0


def _scores(name: str, data: RoutingDataset, emb: np.ndarray | None, args: argparse.Namespace) -> np.ndarray:
    from turnout.evals.router_cv import cross_val_scores
    from turnout.evals.routing_metrics import oracle_scores, random_scores

    if name == "random":
        return random_scores(len(data), args.seed)
    if name == "oracle":
        return oracle_scores(data.weak, data.strong)

    def progress(it: Iterator[Any], total: int) -> Iterator[Any]:
        return _progress(it, total, f"{name} folds")

    if name in POST_GENERATION:
        from turnout.routing.answer_check import WeakAnswerCheck, WeakAnswerCheckEmb, cascade_input

        if data.weak_responses is None:
            raise ValueError(f"router {name!r} needs the weak model's responses, which {data.name} lacks")
        inputs = [cascade_input(p, r) for p, r in zip(data.prompts, data.weak_responses, strict=True)]
        family = WeakAnswerCheckEmb if name == "gsm8k-weak-answer-emb" else WeakAnswerCheck
        return cross_val_scores(family, data, emb, args.folds, args.seed, progress, inputs)
    from turnout.routing.scorers import FAMILIES

    return cross_val_scores(FAMILIES[name], data, emb, args.folds, args.seed, progress)


def _table(dataset: str, results: dict[str, RouterMetrics]) -> str:
    lines = [f"dataset: {dataset}", f"{'router':<34} {'n':>6} {'APGR':>7} {'CPT50':>7} {'CPT80':>7}"]
    for name, m in results.items():
        tag = name + (" (post-gen)" if name in POST_GENERATION else "")
        lines.append(f"{tag:<34} {m.n:>6} {m.apgr:>7.3f} {m.cpt50 * 100:>6.1f}% {m.cpt80 * 100:>6.1f}%")
    first = next(iter(results.values()))
    lines.append(f"weak quality {first.weak_quality:.4f}, strong quality {first.strong_quality:.4f}")
    return "\n".join(lines)


def _as_json(data: RoutingDataset, results: dict[str, RouterMetrics], args: argparse.Namespace) -> dict[str, Any]:
    routers = {}
    for name, m in results.items():
        routers[name] = {**m.as_dict(), "post_generation": name in POST_GENERATION}
    return {
        "dataset": data.name,
        "n": len(data),
        "dropped_contaminated": data.dropped_contaminated,
        "folds": args.folds,
        "seed": args.seed,
        "bins": args.bins,
        "cpt_unit": "share of calls to the strong model, 0..1",
        "routers": routers,
    }


def plot_curves(path: Path, data: RoutingDataset, results: dict[str, RouterMetrics]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from turnout.evals.routing_metrics import optimal_quality

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, m in results.items():
        if name in REFERENCE:
            continue
        ax.plot(m.curve.strong_share * 100, m.curve.quality, marker=".", label=f"{name} (APGR {m.apgr:.3f})")
    wq, sq = float(data.weak.mean()), float(data.strong.mean())
    grid = np.linspace(0, 1, 101)
    ax.plot(grid * 100, optimal_quality(data.weak, data.strong, grid), "k:", label="oracle")
    ax.plot([0, 100], [wq, sq], color="grey", linestyle="-.", label="random")
    ax.axhline(wq, color="grey", linestyle="--", linewidth=0.8, label="weak model")
    ax.axhline(sq, color="red", linestyle="--", linewidth=0.8, label="strong model")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("quality")
    ax.set_title(f"Router quality vs escalation ({data.name}, n={len(data)})")
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _save_artifact(
    args: argparse.Namespace,
    name: str,
    data: RoutingDataset,
    emb: np.ndarray | None,
    oof: np.ndarray,
    metrics: RouterMetrics,
) -> Path:
    from turnout.routing.learned import LearnedRouter, build_metadata, calibrate, check_spread, fit_final

    threshold, target = calibrate(oof, data.weak, data.strong, args.target_escalation, args.target_quality)
    scorer = fit_final(name, data.prompts, emb, data.weak, data.strong)
    # the refit router's own scores: out-of-fold scores can spread only because each fold's
    # constant differs, which hides a router that gives every prompt of a fold one score
    check_spread(scorer.predict(list(data.prompts), emb), f"{data.name} ({name} refitted on all rows)")
    cv = {**metrics.as_dict(), "folds": args.folds, "seed": args.seed, "bins": args.bins,
          "embedding": args.embedding if scorer.uses_embeddings else None}
    meta = build_metadata(
        scorer, data.prompts, data.weak, data.strong, data.name, cv, target, oof, threshold, args.embedding
    )
    return LearnedRouter(scorer, threshold, meta).save(args.save_artifact)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from turnout.evals.datasets import load_dataset
    from turnout.evals.routing_metrics import evaluate_scores
    from turnout.routing.scorers import FAMILIES

    if args.replay is not None:

        return run_replay(args)
    if args.dataset is None:
        raise ValueError("give --dataset (or --replay DATASET)")
    data = load_dataset(args.dataset, args.data_dir or default_data_dir())
    if args.artifact is not None:
        return run_artifact(args, data)
    routers = args.router or _default_routers(data)
    if args.save_artifact is not None and routers[0] not in LEARNED:
        raise ValueError(f"--save-artifact saves the first --router, which must be one of: {', '.join(LEARNED)}")
    if args.save_artifact is not None and args.target_escalation is None and args.target_quality is None:
        raise ValueError("--save-artifact needs --target-escalation RATE or --target-quality Q")
    needs_emb = any(
        (name in FAMILIES and FAMILIES[name].uses_embeddings) or name == "gsm8k-weak-answer-emb" for name in routers
    )
    emb = _embeddings(data, args.cache_dir or default_cache_dir(), args.embedding) if needs_emb else None
    results: dict[str, RouterMetrics] = {}
    scores: dict[str, np.ndarray] = {}
    for name in routers:
        scores[name] = _scores(name, data, emb, args)
        results[name] = evaluate_scores(scores[name], data.weak, data.strong, args.bins)
    if args.plot is not None:
        plot_curves(args.plot, data, results)
    if args.save_artifact is not None:
        path = _save_artifact(args, routers[0], data, emb, scores[routers[0]], results[routers[0]])
        print(f"saved {routers[0]} router to {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(_as_json(data, results, args), indent=2))
    else:
        print(_table(data.name, results))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """``turnout eval router --replay DATASET --artifact R.npz [--router FAMILY]``."""
    from turnout.evals.datasets import load_dataset
    from turnout.evals.replay import ReplayConfig, embed_lookup, render, replay
    from turnout.routing.learned import LearnedRouter
    from turnout.routing.scorers import make_scorer
    from turnout.weights import minilm_available

    if args.artifact is None:
        raise ValueError("--replay needs --artifact: the router serving at the start (trained on another data set)")
    target = load_dataset(args.replay, args.data_dir or default_data_dir())
    initial = LearnedRouter.load(args.artifact)
    family = (args.router or ["auto"])[0]  # auto: the loop chooses by cross-validation, as the gateway's default
    embed = None
    wants_emb = minilm_available() if family == "auto" else make_scorer(family).uses_embeddings
    if wants_emb or initial.scorer.uses_embeddings:
        kind = str(initial.metadata.get("embedding") or args.embedding or DEFAULT_EMBEDDING)
        emb = _embeddings(target, args.cache_dir or default_cache_dir(), kind)
        embed = embed_lookup(target.prompts, emb)
    cfg = ReplayConfig(family=family, sampling=args.sampling, label_budget=args.label_budget, seed=args.seed)
    result = replay(target, initial, cfg, embed, str((initial.metadata.get("training_data") or {}).get("name")),
                    progress=lambda line: print(line, file=sys.stderr))
    print(json.dumps(result.as_dict(), indent=2) if args.json else render(result))
    return 0
