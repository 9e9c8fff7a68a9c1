"""`turnout eval cascade`: how well does the local engine's own confidence predict whether
its answer is right, and what would confidence-based escalation buy?

It runs a local engine (the embedded model by default) over a golden task (``--task gsm8k``:
GSM8K test questions with reference answers; ``--task mmlu``: MMLU questions with their answer
key), scores each answer, and computes every confidence signal of
``turnout.routing.confidence`` from the engine's token record (chosen-token logprobs,
entropies, top-k alternatives). ``--samples 2`` adds a second answer drawn at a temperature, for
the self-consistency signal. Against the strong model's known correctness on the same
questions (RouteLLM's GPT-4 labels), it reports for each signal the AUROC for local
correctness and APGR / CPT(50%) / CPT(80%) of "escalate when confidence is low", computed as
for routers (quantile thresholds, trapezoid area, contaminated prompts removed), plus the
thresholds that give 20/50/80% escalation, ready for a ``cascade`` route in turnout.yaml
(``threshold`` and ``confidence_signal``). Answers are cached on disk with their whole token
record, so a rerun only generates what is new and every signal reads the same answers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from turnout.evals.cascade_report import auroc, record_of, result_of
from turnout.evals.cascade_tasks import Item, final_number, messages

__all__ = ["auroc", "final_number", "record_of", "result_of", "register"]

CACHE_VERSION = "cascade/2"
TOP_K = 5


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cascade", help="confidence of a local engine vs its correctness on a golden set",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("TURNOUT_DATA_DIR", "../shared/data/routellm"))
    p.add_argument("--task", choices=("gsm8k", "mmlu"), default="gsm8k")
    p.add_argument("--prompt", choices=("plain", "fewshot"), default="plain",
                   help="gsm8k prompt template: plain (a format instruction) "
                        "or fewshot (plus two worked train examples)")
    p.add_argument("--mmlu-answers", default=None,
                   help="mmlu: JSONL of {prompt, answer} (RouteLLM's files hold no key)")
    p.add_argument("--limit", type=int, default=100, help="questions to run (a fixed-seed sample; default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--samples", type=int, default=1, help="answers per question: 1 greedy, plus samples-1 drawn at "
                   "--temperature (self-consistency needs 2: a second local generation)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--generate-only", action="store_true", help="fill the cache and stop (for long background runs)")
    p.add_argument("--cache-only", action="store_true", help="generate nothing: report on the questions whose answers "
                   "are all in the cache (e.g. while a --generate-only run is filling it)")
    p.add_argument("--config", default=None, help="turnout.yaml with the engine to test (default: embedded)")
    p.add_argument("--engine", default="local", help="engine name in the config (default: local)")
    p.add_argument("--cache-dir", default=".turnout/cache/cascade")
    p.add_argument("--save-combination", default=None,
                   help="write the combined signal's weights (fitted on all rows) here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def cache_key(task: str, prompt: str, max_tokens: int, sample: int, temperature: float, question: str) -> str:
    return hashlib.sha256(
        f"{CACHE_VERSION}|{task}|{prompt}|{max_tokens}|{sample}|{temperature:g}|{question}".encode()).hexdigest()


def read_cache(cache: Path) -> dict[str, dict[str, Any]]:
    known: dict[str, dict[str, Any]] = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                known[rec["key"]] = rec
    return known


async def generate(items: list[Item], engine: Any, *, task: str, prompt: str, data_dir: Path, max_tokens: int,
                   samples: int, temperature: float, cache: Path,
                   top_k: int = TOP_K) -> tuple[list[list[dict[str, Any]]], int]:
    """Each item's answers with their full token records (logprobs, entropies, top-k), from the
    cache or the engine, question by question (all samples of one question before the next, so
    an interrupted run leaves complete questions); returns (records[sample][item], cache hits).
    Sample 0 is greedy; sample i > 0 draws at ``temperature`` with seed i."""
    import time

    from tqdm import tqdm

    from turnout.protocol import ChatRequest

    cache.parent.mkdir(parents=True, exist_ok=True)
    known = read_cache(cache)
    hits = 0
    runs: list[list[dict[str, Any]]] = [[] for _ in range(samples)]
    with cache.open("a", encoding="utf-8") as out:
        for item in tqdm(items, desc=f"{task} answers", unit="q", file=sys.stderr, disable=not sys.stderr.isatty()):
            for sample in range(samples):
                temp = 0.0 if sample == 0 else temperature
                key = cache_key(task, prompt, max_tokens, sample, temp, item.question)
                rec = known.get(key)
                if rec is None:
                    req = ChatRequest.model_validate({
                        "model": "eval", "temperature": temp, "max_tokens": max_tokens, "logprobs": True,
                        "top_logprobs": top_k, "seed": sample if sample else None,
                        "messages": messages(task, prompt, item, data_dir)})
                    t0 = time.perf_counter()
                    res = await engine.chat(req)
                    rec = {"key": key, "task": task, "prompt": prompt, "sample": sample, "temperature": temp,
                           "max_tokens": max_tokens, "answer": res.content or "", "finish_reason": res.finish_reason,
                           "prompt_tokens": res.usage.prompt_tokens, "completion_tokens": res.usage.completion_tokens,
                           "seconds": round(time.perf_counter() - t0, 3), **record_of(res)}
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                    known[key] = rec
                else:
                    hits += 1
                runs[sample].append(rec)
    return runs, hits


def cached_runs(items: list[Item], args: argparse.Namespace, ecfg: Any,
                prompt: str) -> tuple[list[list[dict[str, Any]]], int]:
    """The answers already cached for the leading questions that have all their samples."""
    from turnout.registry import weights_path
    from turnout.weights import sha256_file

    path = weights_path(ecfg.dialect, ecfg)
    tag = sha256_file(path) if path is not None else getattr(ecfg, "model", "")
    known = read_cache(Path(args.cache_dir) / f"{ecfg.dialect}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.jsonl")
    samples = max(1, args.samples)
    runs: list[list[dict[str, Any]]] = [[] for _ in range(samples)]
    for item in items:
        keys = [cache_key(args.task, prompt, args.max_tokens, s, 0.0 if s == 0 else args.temperature, item.question)
                for s in range(samples)]
        if not all(k in known for k in keys):
            break
        for s, k in enumerate(keys):
            runs[s].append(known[k])
    return runs, sum(map(len, runs))


def run(args: argparse.Namespace) -> int:
    from turnout.config import load_config
    from turnout.engines.llamacpp import LlamaCppEngineConfig
    from turnout.engines.registry import engine_class
    from turnout.evals import cascade_tasks

    data_dir = Path(args.data_dir)
    items = cascade_tasks.load(args.task, data_dir, args.limit, args.seed,
                               Path(args.mmlu_answers) if args.mmlu_answers else None)
    if not items:
        raise ValueError(f"no {args.task} questions to run")
    cfg = load_config(args.config)
    if args.engine not in cfg.engines:
        raise ValueError(f"no engine {args.engine!r} in the configuration; engines: {sorted(cfg.engines)}")
    ecfg = cfg.engines[args.engine]
    prompt = args.prompt if args.task == "gsm8k" else "plain"

    async def go() -> tuple[list[list[dict[str, Any]]], int]:
        engine = engine_class(ecfg.dialect)(args.engine, ecfg)  # no request timeout: an evaluation waits
        await engine.start()
        try:
            tag = engine.info.weights_sha256 or engine.info.model
            cache = (Path(args.cache_dir)
                     / f"{engine.info.dialect}-{hashlib.sha256(tag.encode()).hexdigest()[:12]}.jsonl")
            return await generate(items, engine, task=args.task, prompt=prompt, data_dir=data_dir,
                                  max_tokens=args.max_tokens, samples=max(1, args.samples),
                                  temperature=args.temperature, cache=cache)
        finally:
            await engine.close()

    runs, hits = cached_runs(items, args, ecfg, prompt) if args.cache_only else asyncio.run(go())
    if not runs[0]:
        raise ValueError("no answers in the cache for these questions; run without --cache-only first")
    items = items[: len(runs[0])]
    if args.generate_only:
        print(f"{sum(map(len, runs))} answers ({hits} from cache)")
        return 0
    from turnout.evals.cascade_report import print_report, summarize

    report = summarize(args.task, items, runs, save_combination=args.save_combination)
    report["cached"] = hits
    report["prompt"] = prompt
    report["engine"] = args.engine if not isinstance(ecfg, LlamaCppEngineConfig) else f"{args.engine} (embedded)"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
