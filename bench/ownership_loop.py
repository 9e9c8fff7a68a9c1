"""The ownership loop measured end to end (issue 26 item 6): traffic -> capture -> `turnout dataset
build` -> `turnout tune` -> a signed adapter served by the embedded engine -> held-out replay.

    B="python bench/ownership_loop.py --task pii --work /tmp/loop-pii"
    $B traffic --via frontier                   # (a) training traffic through the gateway, captured
    $B traffic --via frontier --slice validation          # the selection set, its own database
    $B build --sources checked                  # (b) turnout dataset build
    $B build --sources checked --db traffic-validation --out dataset-val
    $B tune --tag r8 -- --rank 8 --lr 2e-3 --epochs 3 --batch 8   # (c) turnout tune --sign-key (key made here)
    #   or on a GPU: bench/data/ownership_device.sh, then `$B sign --tag TAG` here; `gpu-eval` scores candidates
    $B replay --slice heldout --name heldout-base              # the base, capture off
    $B replay --slice heldout --via frontier --name heldout-frontier   # all-frontier, the same requests
    $B replay --slice validation --adapter r8 --cascade=-1e9 --name val-all-local   # signals, all local
    $B thresholds --replay val-all-local.json   # the cascade threshold, from validation only
    $B replay --slice heldout --adapter r8 --cascade=-0.04 --name heldout-r8  # (d) models verify, serve, replay
    $B report heldout-base heldout-r8           # the held-out table

Every step is what a user runs: real `turnout serve` processes on loopback, the function endpoint
(``fn:NAME``), the gateway's capture and ledger (SQLite), the `turnout dataset build`, `turnout tune`
and `turnout models verify` commands. Hyper-parameters are chosen on the validation slice; the
held-out slice is replayed once per candidate that is reported.

Tasks (data under /work/shared/data; the split is by sentence *template* where the data has them, so
held-out inputs are of shapes the adapter never saw):

- ``pii``: the function of bench/functions_extraction.py (bench/functions/extract_contact): the first
  PERSON and EMAIL_ADDRESS in the text of presidio-research's synthetic sentences; templates split 60/10/30.
- ``injection``: bench/functions_triage/classify_prompt: is a prompt a jailbreak attempt or benign
  (jackhhao/llm-warden's labelled prompts, up to 1,500 characters; no templates: a random split).

The "frontier" is a stand-in (named as such everywhere): the loopback OpenAI upstream of
turnout.testing answers each escalation with the data set's gold label, so its accuracy is 1.0 by
construction and it declares ``terms: {train_on_outputs: allowed}`` (a real provider's terms may
forbid distillation; `turnout dataset build` refuses those unless policy.distillation allows them).
Escalations are priced as gpt-4o-mini ($0.15 / $0.60 per 1M tokens); the local engine at the
llamacpp default TCO price, $0.05 an hour while busy (turnout.results: busy seconds x hourly cost; the
ledger's busy time is wall time, so `report` also prices the local part on the gateway's CPU seconds).
All-frontier cost: the same requests replayed through the stand-in (``replay --via frontier``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import cpu_seconds  # noqa: E402  (a process's CPU with its live descendants, from /proc)

SHARED = Path(os.environ.get("TURNOUT_SHARED_DATA", "/work/shared/data"))
STAND_IN_TERMS = {"train_on_outputs": "allowed",
                  "source": "bench stand-in: answers with the data set's gold labels (no provider terms apply)"}


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return str(a).strip().casefold() == str(b).strip().casefold()


@dataclass
class Task:
    name: str
    function: str
    functions: str  # the folder under bench/ that holds it (functions.path)

    def items(self) -> list[dict[str, Any]]:  # each: variables, gold, group
        raise NotImplementedError

    def correct(self, answer: Any, gold: dict[str, Any]) -> bool:
        return isinstance(answer, dict) and all(same(answer.get(k), v) for k, v in gold.items())

    def split(self, seed: int, sizes: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
        """train / validation / heldout: disjoint inputs; disjoint groups (templates) where the data has them."""
        items = self.items()
        rng = random.Random(seed)
        groups = sorted({it["group"] for it in items}, key=str)
        rng.shuffle(groups)
        cut1, cut2 = int(len(groups) * 0.6), int(len(groups) * 0.7)
        where = {g: ("train" if i < cut1 else "validation" if i < cut2 else "heldout") for i, g in enumerate(groups)}
        out: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "heldout": []}
        seen: set[str] = set()
        shuffled = items[:]
        rng.shuffle(shuffled)
        for it in shuffled:
            key = json.dumps(it["variables"], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            out[where[it["group"]]].append(it)
        return {k: v[:sizes[k]] for k, v in out.items()}


class Pii(Task):
    def items(self) -> list[dict[str, Any]]:
        records = json.loads((SHARED / "pii" / "data_synth_dataset_v2.json").read_text(encoding="utf-8"))
        out = []
        for r in records:
            first: dict[str, str] = {}
            # the first span *in the text* (presidio lists spans in no reading order: often the last first)
            for s in sorted(r["spans"], key=lambda s: s["start_position"]):
                first.setdefault(s["entity_type"], s["entity_value"])
            out.append({"variables": {"text": r["full_text"]}, "group": r["template_id"],
                        "gold": {"person": first.get("PERSON"), "email": first.get("EMAIL_ADDRESS")}})
        return out


class Injection(Task):
    def items(self) -> list[dict[str, Any]]:
        with (SHARED / "injection" / "jailbreak_dataset_train.csv").open(encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if 0 < len(r["prompt"]) <= 1500]
        return [{"variables": {"prompt": r["prompt"]}, "group": i, "gold": {"label": r["type"]}}
                for i, r in enumerate(rows)]


TASKS: dict[str, Task] = {
    "pii": Pii("pii", "extract_contact", "functions"),
    "injection": Injection("injection", "classify_prompt", "functions_triage"),
}


LOCAL_HOURLY = 0.05  # the llamacpp engine's default TCO price (turnout.engines.llamacpp), USD an hour busy


def gateway_config(task: Task, work: Path, db: Path, upstream: str, capture: bool, adapter: Path | None,
                   public_key: Path | None, threshold: float = -1e9, cascade: float | None = None,
                   via_frontier: bool = False) -> Path:
    small: dict[str, Any] = {"dialect": "llamacpp", "n_ctx": 2048,
                             "terms": {"train_on_outputs": "allowed", "source": "SmolLM2: Apache-2.0"}}
    if adapter is not None:
        small["adapter"] = str(adapter)
        small["adapter_public_keys"] = [str(public_key)]
    cfg: dict[str, Any] = {
        "engines": {
            "small": small,
            "big": {"dialect": "openai", "locality": "remote", "base_url": upstream + "/v1", "model": "stand-in",
                    "pricing": {"input_per_m": 0.15, "output_per_m": 0.60}, "terms": STAND_IN_TERMS},
        },
        # triage (classify_prompt): local first, escalating a label whose least likely token is under threshold
        # private (extract_contact): the embedded engine alone, or with --cascade a cascade to the stand-in
        "routes": {"private": {"chain": ["big"]} if via_frontier else {"chain": ["small"]} if cascade is None else
                   {"chain": ["small", "big"], "strategy": "cascade", "threshold": cascade,
                    "confidence_signal": "min_logprob"},
                   "strong": {"chain": ["big"]},
                   "triage": {"chain": ["big"]} if via_frontier else
                   {"chain": ["small", "big"], "strategy": "cascade", "threshold": threshold,
                    "confidence_signal": "min_logprob"}},
        "guards": {"enabled": False},
        "functions": {"path": str(ROOT / "bench" / task.functions)},
        "storage": {"sqlite_path": str(db)},
    }
    if capture:
        cfg["capture"] = {"functions": {task.function: "on"}}
    path = work / f"turnout-{db.stem}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def traffic(task: Task, work: Path, items: list[dict[str, Any]], db: Path, capture: bool,
            adapter: Path | None = None, threshold: float = -1e9, cascade: float | None = None,
            via_frontier: bool = False) -> list[dict[str, Any]]:
    """Each item through the gateway's function endpoint (the stand-in primed with its gold answer);
    each result is also appended to DB.results.jsonl as it comes (a run cut short keeps its part).
    ``cpu_s``: the CPU seconds the gateway's processes spent on the request (the local engine runs one
    llama.cpp thread by default on this machine, so this is about the engine's busy time on a quiet one)."""
    import httpx

    from turnout.testing.procs import start_server

    partial = db.with_suffix(".results.jsonl").open("w", encoding="utf-8")
    up = start_server("turnout.testing.upstream")
    cfg = gateway_config(task, work, db, up.url, capture, adapter,
                         work / "key.pub.pem" if adapter else None, threshold, cascade, via_frontier)
    gw = start_server("turnout", "serve", "--config", str(cfg), timeout=180)
    results = []
    try:
        with httpx.Client(timeout=300) as client:
            ready = client.get(gw.url + "/readyz")
            if adapter is not None and (ready.status_code != 200 or "adapter" not in ready.text):
                raise SystemExit(f"the engine did not load the adapter: {ready.status_code} {ready.text[:300]}")
            for i, it in enumerate(items):
                client.post(up.url + "/__control/reset")
                client.post(up.url + "/__control/scenarios",
                            json={"replies": {"stand-in": [json.dumps(it["gold"])]}})
                cpu0, t0 = cpu_seconds(gw.pid), time.perf_counter()
                resp = client.post(gw.url + "/v1/chat/completions", json={
                    "model": f"fn:{task.function}",
                    "messages": [{"role": "user", "content": json.dumps(it["variables"])}]})
                h = resp.headers
                answer = json.loads(resp.json()["choices"][0]["message"]["content"]) if resp.status_code == 200 \
                    else None
                ok = task.correct(answer, it["gold"])
                results.append({"engine": h.get("x-turnout-engine"), "attempts": h.get("x-turnout-function-attempts"),
                                "status": resp.status_code, "correct": ok, "answer": answer, "gold": it["gold"],
                                "s": round(time.perf_counter() - t0, 3),
                                "cpu_s": round(cpu_seconds(gw.pid) - cpu0, 3), "load_avg": os.getloadavg()[0]})
                partial.write(json.dumps(results[-1]) + "\n")
                partial.flush()
                print(f"{i + 1:>4}/{len(items)} {h.get('x-turnout-engine')!s:<6} {'ok ' if ok else 'bad'} "
                      f"{json.dumps(answer)[:60]}  gold {json.dumps(it['gold'])[:50]}", file=sys.stderr)
    finally:
        partial.close()
        gw.stop()
        up.stop()
    return results


def ledger_figures(db: Path, function: str) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT function_attempt, engine, cost_usd, baseline_cost_usd, latency_ms FROM requests "
                        "WHERE function = ?", (function,)).fetchall()
    conn.close()
    firsts = [r for r in rows if r[0] == "first"]
    return {"rows": len(rows), "requests": len(firsts), "hybrid_usd": sum(r[2] for r in rows),
            "frontier_usd": sum(r[3] for r in firsts),
            "local_usd": sum(r[2] for r in rows if r[1] == "small"),
            "attempts": dict(Counter(r[0] for r in rows))}


def summarize(results: list[dict[str, Any]], ledger: dict[str, Any]) -> dict[str, Any]:
    n = len(results)
    local = [r for r in results if r["engine"] == "small"]
    per = 1000 / max(ledger["requests"], 1)
    out: dict[str, Any] = {
        "n": n, "local": len(local), "local_share": len(local) / n,
        "local_correct": sum(r["correct"] for r in local),
        "local_accuracy": sum(r["correct"] for r in local) / max(len(local), 1),
        "hybrid_accuracy": sum(r["correct"] for r in results) / n,
        "errors": sum(r["status"] != 200 for r in results),
        "hybrid_usd_per_1k": ledger["hybrid_usd"] * per, "frontier_usd_per_1k": ledger["frontier_usd"] * per,
        "local_usd_per_1k": ledger["local_usd"] * per, "ledger": ledger,
        "mean_s": sum(r["s"] for r in results) / n}
    if all("cpu_s" in r for r in results):
        cpu = sum(r["cpu_s"] for r in results)
        out.update({"gateway_cpu_s": cpu, "mean_cpu_s": cpu / n,
                    "mean_load_avg": sum(r["load_avg"] for r in results) / n})
    return out


def signals(db: Path, function: str) -> list[float | None]:
    """The weak draft's min_logprob of each request's first attempt, in order (cascade routes only)."""
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT signals FROM requests WHERE function = ? AND function_attempt = 'first' "
                        "ORDER BY rowid", (function,)).fetchall()
    conn.close()
    return [json.loads(r[0]).get("min_logprob") if r[0] else None for r in rows]


def thresholds(results: list[dict[str, Any]], target: float) -> None:
    """For each candidate threshold: the share kept local and the accuracy of what is kept (escalations
    answered by the stand-in are correct by construction); the lowest threshold reaching ``target``
    hybrid-equivalent accuracy on the local answers is printed last."""
    scored = sorted(((r["min_logprob"] if r["min_logprob"] is not None else -1e9), r["correct"]) for r in results)
    n = len(scored)
    best = None
    print("threshold  kept_local  local_accuracy  hybrid_accuracy")
    for i in range(n + 1):
        t = scored[i][0] if i < n else 0.0
        kept = [c for s, c in scored if s >= t]
        acc = sum(kept) / len(kept) if kept else 1.0
        hybrid = (sum(kept) + (n - len(kept))) / n
        print(f"{t:9.4f}  {len(kept) / n:10.3f}  {acc:14.3f}  {hybrid:15.3f}")
        if best is None and hybrid >= target:
            best = (t, len(kept) / n, hybrid)
    print(f"chosen: threshold {best[0]:.4f} keeps {best[1]:.3f} local, hybrid accuracy {best[2]:.3f}" if best
          else "no threshold reaches the target")


def engine_accuracy(results: list[dict[str, Any]]) -> float:
    """The local model's own accuracy: local answers kept and correct, over all items (an escalated
    item counts as wrong for the local model)."""
    return sum(r["correct"] for r in results if r["engine"] == "small") / len(results)


def ensure_key(work: Path) -> Path:
    """The P-256 signing key of this work folder (made once, with openssl); key.pub.pem beside it."""
    key = work / "key.pem"
    if not key.exists():
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
                       check=True)
        subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(work / "key.pub.pem")],
                       check=True, capture_output=True)
    return key


def answers_equal(answer: str, gold: str) -> bool:
    """Two JSON answers with the same keys and values (values compared as ``same``), or equal text."""
    try:
        a, g = json.loads(answer), json.loads(gold)
    except ValueError:
        return answer.strip() == gold.strip()
    if not isinstance(a, dict) or not isinstance(g, dict):
        return bool(a == g)
    return a.keys() == g.keys() and all(same(a[k], g[k]) for k in g)


def gpu_eval(base: Path, data: Path, adapters: list[Path], batch: int = 32) -> None:
    """Greedy answers (transformers, no grammar) of the base and of each adapter to the prompts of a dataset
    file, against its last answers. For choosing between adapters before the gateway's replays; the figures
    reported are the gateway's (llama.cpp, grammar-constrained), not these."""
    import torch
    from peft import PeftModel

    from turnout.tune.train import device, load_base

    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").split("\n") if line.strip()]
    model, tok = load_base(base, None)
    model.to(device()).eval()
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    pad = tok.pad_token_id
    for adapter in [None, *adapters]:
        m = PeftModel.from_pretrained(model, str(adapter / "peft")) if adapter else model
        m.eval()
        right, t0 = 0, time.perf_counter()
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = m.generate(**{k: v.to(m.device) for k, v in enc.items()}, max_new_tokens=48, do_sample=False,
                                 pad_token_id=pad)
            for r, g in zip(chunk, gen[:, enc["input_ids"].shape[1]:], strict=True):
                text = tok.decode(g, skip_special_tokens=True)
                right += answers_equal(text, r["messages"][-1]["content"])
        print(json.dumps({"adapter": str(adapter) if adapter else "base", "n": len(rows), "right": right,
                          "accuracy": round(right / len(rows), 4), "s": round(time.perf_counter() - t0, 1)}),
              flush=True)
        if adapter is not None:
            model = m.unload()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turnout", *args], capture_output=True, text=True, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="pii")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--n-train", type=int, default=160)
    ap.add_argument("--n-val", type=int, default=40)
    ap.add_argument("--n-heldout", type=int, default=100)
    sub = ap.add_subparsers(dest="step", required=True)
    a = sub.add_parser("traffic", help="(a) training traffic through the gateway, captured")
    a.add_argument("--threshold", type=float, default=-1e9, help="triage route: the cascade's min_logprob threshold")
    a.add_argument("--slice", choices=("train", "validation"), default="train",
                   help="validation: the validation slice's traffic, captured into its own database, for `build "
                        "--db validation` (a selection set: never trained on)")
    a.add_argument("--via", choices=("local", "frontier"), default="local",
                   help="local: the function's route as served (the base first, escalating); frontier: every call "
                        "to the stand-in, the gateway before any adapter (its answers are then source `checked`)")
    b = sub.add_parser("build", help="(b) turnout dataset build")
    b.add_argument("--validation", type=float, default=0.0)
    b.add_argument("--sources", default="distill", help="turnout dataset build --sources")
    b.add_argument("--db", default="traffic", help="the traffic step's database (traffic, traffic-validation)")
    b.add_argument("--out", default="dataset", help="the folder under --work")
    t = sub.add_parser("tune", help="(c) turnout tune (signed)")
    t.add_argument("--tag", required=True)
    t.add_argument("--dataset", default="dataset/train.jsonl")
    t.add_argument("tune_args", nargs=argparse.REMAINDER, help="passed to turnout tune (--steps, --rank, --lr ...)")
    r = sub.add_parser("replay", help="(d) replay a slice through the base or a served adapter, capture off")
    r.add_argument("--slice", choices=("validation", "heldout"), required=True)
    r.add_argument("--adapter", default=None, help="the tag of an adapter of the tune step")
    r.add_argument("--threshold", type=float, default=-1e9, help="triage route: the cascade's min_logprob threshold")
    r.add_argument("--cascade", type=float, default=None,
                   help="pii: make the private route a min_logprob cascade to the stand-in at this threshold")
    r.add_argument("--name", default=None, help="the result file's name (default SLICE-ADAPTER)")
    r.add_argument("--via", choices=("local", "frontier"), default="local",
                   help="frontier: every call to the stand-in (the all-frontier cost of the same requests)")
    th = sub.add_parser("thresholds", help="the triage threshold from a replay kept all local (validation only)")
    th.add_argument("--replay", required=True, help="a replay's result file, run with the default threshold")
    th.add_argument("--target", type=float, default=0.98, help="accuracy the local answers kept must reach")
    g = sub.add_parser("gpu-eval", help="selection on a GPU (or CPU): greedy answers of the base and of adapters' "
                       "PEFT weights (transformers) to a built dataset's prompts, scored against its answers")
    g.add_argument("--base", type=Path, required=True, help="the base GGUF")
    g.add_argument("--data", type=Path, required=True, help="a dataset file (prompt + messages), e.g. the "
                   "validation traffic's build")
    g.add_argument("adapters", nargs="*", type=Path, help="adapter folders (each with peft/)")
    s = sub.add_parser("sign", help="sign an adapter folder trained elsewhere (what turnout tune --sign-key does)")
    s.add_argument("--tag", required=True)
    p = sub.add_parser("report", help="the held-out table: one column per replay")
    p.add_argument("names", nargs="+", help="replay files (without .json), e.g. heldout-base heldout-r8")
    p.add_argument("--frontier-name", default="heldout-frontier", help="the replay with --via frontier")
    args = ap.parse_args()
    task = TASKS[args.task]
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    splits = task.split(args.seed, {"train": args.n_train, "validation": args.n_val, "heldout": args.n_heldout}) \
        if args.step in ("traffic", "replay") else {}
    if args.step == "traffic":
        db = work / ("traffic.sqlite" if args.slice == "train" else f"traffic-{args.slice}.sqlite")
        if db.exists():
            raise SystemExit(f"{db} exists: the traffic step runs once per work folder")
        keys = {k: {json.dumps(i["variables"], sort_keys=True) for i in v} for k, v in splits.items()}
        assert not (keys["train"] & keys["heldout"]) and not (keys["validation"] & keys["heldout"])
        t0 = time.perf_counter()
        res = traffic(task, work, splits[args.slice], db, capture=True, threshold=args.threshold,
                      via_frontier=args.via == "frontier")
        out = {"split": {k: len(v) for k, v in splits.items()},
               "groups": {k: len({i["group"] for i in v}) for k, v in splits.items()},
               "wall_s": round(time.perf_counter() - t0, 1), **summarize(res, ledger_figures(db, task.function))}
        db.with_suffix(".json").write_text(json.dumps({"summary": out, "results": res}, indent=1))
        print(json.dumps(out, indent=1))
    elif args.step == "build":
        cfg = work / f"turnout-{args.db}.yaml"
        cfg_args = ["--sources", args.sources]
        done = cli("dataset", "build", "--config", str(cfg), "--tenant", "anonymous", "--function", task.function,
                   "--validation", str(args.validation), "--out", str(work / args.out), "--json", *cfg_args)
        print(done.stdout[-3000:], done.stderr[-2000:])
        return done.returncode
    elif args.step == "tune":
        key = ensure_key(work)
        out = work / f"adapter-{args.tag}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        extra = [a for a in args.tune_args if a != "--"]
        proc = subprocess.run([sys.executable, "-m", "turnout", "tune", "--dataset", str(work / args.dataset),
                               "--out", str(out), "--seed", "7", "--threads", "2", "--sign-key", str(key), *extra],
                              cwd=ROOT, text=True, stdout=subprocess.PIPE)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(proc.stdout)
        if proc.returncode != 0:
            return proc.returncode
        fig = {"tag": args.tag, "args": extra, "wall_s": round(time.perf_counter() - t0, 1),
               "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
               "load_avg": os.getloadavg()}
        (out.parent / f"tune-{args.tag}.json").write_text(json.dumps(fig, indent=1))
        print(json.dumps(fig))
    elif args.step == "replay":
        adapter = work / f"adapter-{args.adapter}" if args.adapter else None
        if adapter is not None:  # the CI gate a user runs before serving: manifest, base, signature
            cfg = gateway_config(task, work, work / "verify.sqlite", "http://127.0.0.1:9", False, adapter,
                                 work / "key.pub.pem")
            v = cli("models", "verify", "--config", str(cfg))
            print(v.stdout.strip(), v.stderr.strip()[-500:])
            if v.returncode != 0:
                return v.returncode
        name = args.name or f"{args.slice}-{args.adapter or 'base'}"
        db = work / f"{name}.sqlite"
        db.unlink(missing_ok=True)
        res = traffic(task, work, splits[args.slice], db, capture=False, adapter=adapter, threshold=args.threshold,
                      cascade=args.cascade, via_frontier=args.via == "frontier")
        for r, sig in zip(res, signals(db, task.function), strict=True):
            r["min_logprob"] = sig
        out = {"slice": args.slice, "adapter": args.adapter, **summarize(res, ledger_figures(db, task.function)),
               "engine_accuracy": engine_accuracy(res)}
        (work / f"{name}.json").write_text(json.dumps({"summary": out, "results": res}, indent=1))
        print(json.dumps(out, indent=1))
    elif args.step == "gpu-eval":
        gpu_eval(args.base, args.data, args.adapters)
    elif args.step == "sign":
        from turnout.adapter_manifest import sign

        print(sign(work / f"adapter-{args.tag}", ensure_key(work)))
    elif args.step == "thresholds":
        res = json.loads((work / args.replay).read_text())["results"]
        thresholds(res, args.target)
    elif args.step == "report":
        report(work, task.function, args.names, args.frontier_name)
    return 0


def request_costs(db: Path, function: str) -> list[float]:
    """Each request's ledger cost, in order (a replay through the stand-in: one row a request)."""
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT cost_usd FROM requests WHERE function = ? AND function_attempt = 'first' "
                        "ORDER BY rowid", (function,)).fetchall()
    conn.close()
    return [r[0] for r in rows]


def costs(replay: dict[str, Any], frontier: list[float]) -> dict[str, float]:
    """$ / 1k requests of a replay: the ledger's hybrid cost (local engine: wall busy seconds x $0.05/h), its
    frontier part (each escalated request at what the all-frontier replay paid for that very request), the
    local part as the ledger has it (the rest) and as CPU seconds of the gateway x $0.05/h would price it."""
    res, summ = replay["results"], replay["summary"]
    n = len(res)
    per = 1000 / n
    remote = sum(f for r, f in zip(res, frontier, strict=True) if r["engine"] != "small")
    cpu = sum(r.get("cpu_s", 0.0) for r in res) * LOCAL_HOURLY / 3600
    return {"hybrid": summ["ledger"]["hybrid_usd"] * per, "remote": remote * per,
            "local_wall": (summ["ledger"]["hybrid_usd"] - remote) * per, "local_cpu": cpu * per,
            "hybrid_cpu": (remote + cpu) * per, "all_frontier": sum(frontier) * per}


def report(work: Path, function: str, names: list[str], frontier_name: str) -> None:
    """The held-out table (markdown), one column per replay file (the base's, the adapter's ...), with the
    all-frontier cost of the same requests from the replay through the stand-in (`replay --via frontier`)."""
    frontier = request_costs(work / f"{frontier_name}.sqlite", function)
    reps = [json.loads((work / f"{n}.json").read_text()) for n in names]
    for r in reps:  # per request figures (replays written before summarize kept them)
        n = len(r["results"])
        r["summary"]["mean_cpu_s"] = sum(x.get("cpu_s", 0.0) for x in r["results"]) / n
        r["summary"]["mean_load_avg"] = sum(x.get("load_avg", 0.0) for x in r["results"]) / n
    cols = [(r["summary"], costs(r, frontier)) for r in reps]

    def row(label: str, f: Any) -> str:
        return f"| {label} | " + " | ".join(f(s, c) for s, c in cols) + " |"

    print("| held-out | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, f in [
        ("requests", lambda s, c: str(s["n"])),
        ("handled locally", lambda s, c: f"{s['local']} ({s['local_share']:.1%})"),
        ("accuracy of the local answers kept", lambda s, c: f"{s['local_accuracy']:.3f}"),
        ("hybrid accuracy (stand-in: 1.000)", lambda s, c: f"{s['hybrid_accuracy']:.3f}"),
        ("hybrid $ / 1k, the ledger (local: wall busy s x $0.05/h)", lambda s, c: f"{c['hybrid']:.4f}"),
        ("  of which frontier / local", lambda s, c: f"{c['remote']:.4f} / {c['local_wall']:.4f}"),
        ("hybrid $ / 1k, local priced on gateway CPU s x $0.05/h", lambda s, c: f"{c['hybrid_cpu']:.4f}"),
        ("  of which local", lambda s, c: f"{c['local_cpu']:.4f}"),
        ("all-frontier $ / 1k (the same requests through the stand-in)", lambda s, c: f"{c['all_frontier']:.4f}"),
        ("mean latency s / gateway CPU s a request", lambda s, c: f"{s['mean_s']:.2f} / {s['mean_cpu_s']:.2f}"),
        ("mean load average (2 cores)", lambda s, c: f"{s['mean_load_avg']:.1f}"),
    ]:
        print(row(label, f))
    for n in names:
        tag = json.loads((work / f"{n}.json").read_text())["summary"].get("adapter")
        if not tag:
            continue
        m = json.loads((work / f"adapter-{tag}" / "manifest.json").read_text())
        t = m["training"]
        print(f"\n{n}: adapter {tag}: {m['hyperparameters']} on {t['device']}: steps {t['steps']}, s/step "
              f"{t['s_per_step']}, training {t.get('seconds')} s, final loss {t['final_loss']}, "
              f"total {t['total_s']} s; "
              f"dataset {m['dataset']['examples']} examples, {m['dataset']['tokens']} tokens; files " +
              ", ".join(f"{k} {v['bytes']:,} B" for k, v in m["files"].items()))


if __name__ == "__main__":
    sys.exit(main())
