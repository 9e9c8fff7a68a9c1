"""`turnout eval cascade`: how well does the local engine's own confidence predict whether
its answer is right, and what would confidence-based escalation buy?

It runs a local engine (the embedded model by default) over GSM8K test questions with their
reference answers, scores each answer (the final number against the reference), and reads
the engine's confidence (mean and minimum log-probability of the chosen tokens). Against
the strong model's known correctness on the same questions (RouteLLM's GPT-4 labels), it
reports AUROC of confidence for local correctness, and APGR / CPT(50%) / CPT(80%) of
"escalate when confidence is low" computed as for routers (quantile thresholds, trapezoid
area, contaminated prompts removed), plus the mean-logprob thresholds that give common
escalation rates, ready for a ``cascade`` route in turnout.yaml. Local answers are cached
on disk, so a rerun only generates what is new.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

SYSTEM = "Solve the math problem step by step. End with a line '#### <number>' giving the final answer."
CACHE_VERSION = "cascade-gsm8k/1"
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cascade", help="confidence of a local engine vs its correctness on a golden set",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("TURNOUT_DATA_DIR", "../shared/data/routellm"))
    p.add_argument("--limit", type=int, default=100, help="questions to run (a fixed-seed sample; default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--config", default=None, help="turnout.yaml with the engine to test (default: embedded)")
    p.add_argument("--engine", default="local", help="engine name in the config (default: local)")
    p.add_argument("--cache-dir", default=".turnout/cache/cascade")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def final_number(text: str) -> float | None:
    """The answer after '####', else the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    nums = _NUM.findall(tail)
    if not nums:
        return None
    try:
        return float(nums[-1 if "####" not in text else 0].replace(",", ""))
    except ValueError:
        return None


def auroc(scores: list[float], labels: list[int]) -> float | None:
    """Probability that a random correct answer has higher confidence than a random wrong one."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def load_golden(data_dir: Path, limit: int, seed: int) -> list[dict[str, Any]]:
    import csv
    import random

    from turnout.evals.datasets import read_contaminated

    gsm = data_dir / "gsm8k"
    for f in (gsm / "test.jsonl", gsm / "gsm8k_responses.csv"):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; pass --data-dir pointing at the RouteLLM data folder")
    strong: dict[str, float] = {}
    with (gsm / "gsm8k_responses.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            strong[row["prompt"].strip()] = 1.0 if row["gpt-4-1106-preview"].strip().lower() in ("true", "1") else 0.0
    dropped = read_contaminated(gsm / "contaminated_prompts.jsonl") if (gsm / "contaminated_prompts.jsonl").exists() else set()
    items = []
    for line in (gsm / "test.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        q = rec["question"].strip()
        if q in dropped or q not in strong:
            continue
        gold = final_number(rec["answer"])
        if gold is not None:
            items.append({"question": q, "gold": gold, "strong": strong[q]})
    random.Random(seed).shuffle(items)
    return items[:limit]


async def generate(items: list[dict[str, Any]], engine: Any, max_tokens: int, cache: Path) -> int:
    """Fill each item's answer and confidence, from the cache or the engine; returns cache hits."""
    from tqdm import tqdm

    from turnout.protocol import ChatRequest

    cache.parent.mkdir(parents=True, exist_ok=True)
    known: dict[str, dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            known[rec["key"]] = rec
    hits = 0
    with cache.open("a", encoding="utf-8") as out:
        for item in tqdm(items, desc="local answers", unit="q", file=sys.stderr, disable=not sys.stderr.isatty() and len(items) < 20):
            key = hashlib.sha256(f"{CACHE_VERSION}|{max_tokens}|{item['question']}".encode()).hexdigest()
            rec = known.get(key)
            if rec is None:
                req = ChatRequest(model="eval", temperature=0, max_tokens=max_tokens,
                                  messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": item["question"]}])
                res = await engine.chat(req)
                lps = res.confidence.token_logprobs if res.confidence else []
                rec = {"key": key, "answer": res.content or "", "tokens": len(lps),
                       "mean_logprob": sum(lps) / len(lps) if lps else None, "min_logprob": min(lps) if lps else None}
                out.write(json.dumps(rec) + "\n")
                out.flush()
            else:
                hits += 1
            item.update(answer=rec["answer"], mean_logprob=rec["mean_logprob"], min_logprob=rec["min_logprob"])
    return hits


def summarize(items: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    from turnout.evals.routing_metrics import evaluate_scores

    for it in items:
        got = final_number(it["answer"])
        it["correct"] = int(got is not None and abs(got - it["gold"]) < 1e-6)
    conf = [it["mean_logprob"] if it["mean_logprob"] is not None else -1e9 for it in items]
    weak = np.array([it["correct"] for it in items], float)
    strong = np.array([it["strong"] for it in items], float)
    out: dict[str, Any] = {"n": len(items), "local_accuracy": float(weak.mean()), "strong_accuracy": float(strong.mean()),
                           "auroc_mean_logprob": auroc(conf, [it["correct"] for it in items]),
                           "auroc_min_logprob": auroc([it["min_logprob"] if it["min_logprob"] is not None else -1e9
                                                       for it in items], [it["correct"] for it in items])}
    m = evaluate_scores(-np.array(conf), weak, strong)  # low confidence -> escalate
    out.update(apgr=m.apgr, cpt50=m.cpt50, cpt80=m.cpt80)
    qs = np.array(conf)
    out["thresholds"] = {f"escalate_{int(r * 100)}pct": float(np.quantile(qs, r)) for r in (0.2, 0.5, 0.8)}
    return out


def run(args: argparse.Namespace) -> int:
    from turnout.config import load_config
    from turnout.engines.llamacpp import LlamaCppEngineConfig
    from turnout.engines.registry import engine_class

    items = load_golden(Path(args.data_dir), args.limit, args.seed)
    if not items:
        raise ValueError("no GSM8K questions to run")
    cfg = load_config(args.config)
    if args.engine not in cfg.engines:
        raise ValueError(f"no engine {args.engine!r} in the configuration; engines: {sorted(cfg.engines)}")
    ecfg = cfg.engines[args.engine]

    async def go() -> int:
        engine = engine_class(ecfg.dialect)(args.engine, ecfg)  # no request timeout: an evaluation waits
        await engine.start()
        try:
            tag = engine.info.weights_sha256 or engine.info.model
            name = f"{engine.info.dialect}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.jsonl"
            return await generate(items, engine, args.max_tokens, Path(args.cache_dir) / name)
        finally:
            await engine.close()

    hits = asyncio.run(go())
    report = summarize(items)
    report["cached"] = hits
    report["engine"] = args.engine if not isinstance(ecfg, LlamaCppEngineConfig) else f"{args.engine} (embedded)"
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"engine {report['engine']}, {report['n']} GSM8K questions ({hits} answers from cache)")
    print(f"  local accuracy {report['local_accuracy']:.1%}   strong (GPT-4) accuracy {report['strong_accuracy']:.1%}")
    print(f"  AUROC of confidence for local correctness: mean logprob {fmt(report['auroc_mean_logprob'])}, "
          f"min logprob {fmt(report['auroc_min_logprob'])}")
    print(f"  escalate on low confidence: APGR {report['apgr']:.3f}  CPT(50%) {report['cpt50']:.1%}  CPT(80%) {report['cpt80']:.1%}")
    for name, t in report["thresholds"].items():
        print(f"  threshold for {name.split('_')[1].replace('pct', '%')} escalation: {t:.3f}  (routes.<alias>.threshold)")
    return 0
