"""Guard figures: PII span metrics and latency, injection metrics (the shipped model on a
whole file), secret recall on labelled fixtures, the cost of each detector per text, and the
per-request cost of the whole input scan and of pseudonymize + restore.

    python bench/guards.py [--pii FILE] [--injection FILE] [--secrets FILE] [--limit N]

Defaults to the shared data in ../shared/data (or /work/shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.exists()), None)


def _scan_bench(n: int = 300, pii_model: str | None = None) -> str:
    from turnout.evals.guards_metrics import percentile
    from turnout.guards.policy import decide
    from turnout.guards.pseudonymize import Pseudonymizer
    from turnout.guards.scanner import Scanner

    scanner = Scanner.default(pii_model=pii_model)
    messages = [
        "You are a helpful assistant.",
        ("Hi, I'm Maria Gonzalez (maria.gonzalez@example.com, +34 612 345 678). Please update my address to "
         "24 Clarke Avenue, Springfield and charge card 4111 1111 1111 1111."),
    ]
    total, cpu, restore = [], [], []
    for i in range(n):
        # a new user message each time (the system prompt repeats, as in real traffic and
        # served from the PII result cache after the first call)
        messages[1] = messages[1].rstrip("0123456789 #") + f" #{i}"
        t0, c0 = time.perf_counter(), time.process_time()
        insp = scanner.inspect_messages(messages)
        verdict = decide(insp, "remote")
        p = Pseudonymizer()
        masked = Scanner.apply(p, messages, verdict)
        total.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        t1 = time.perf_counter()
        r = p.stream()
        out = "".join(r.feed(masked[1][i:i + 7]) for i in range(0, len(masked[1]), 7)) + r.flush()
        restore.append((time.perf_counter() - t1) * 1000)
        assert out == messages[1]
    scanner.close()
    return (f"Input scan (2 messages, secrets + PII + injection + policy + pseudonymize): "
            f"p50 {percentile(total, 50):.1f} ms, p95 {percentile(total, 95):.1f} ms wall; "
            f"CPU p50 {percentile(cpu, 50):.1f} ms, p95 {percentile(cpu, 95):.1f} ms (all threads)\n"
            f"Streamed restore of one answer in 7-char chunks: p50 {percentile(restore, 50):.3f} ms")


def _detector_bench(n: int = 200) -> str:
    """Per-text cost of the injection and secrets guards: a short prompt and a 6,000-character
    document (wall clock and process CPU time)."""
    from turnout.evals.guards_metrics import percentile
    from turnout.guards.injection import InjectionGuard
    from turnout.guards.secrets import SecretsGuard

    inj, sec = InjectionGuard(), SecretsGuard()
    short = "Can you summarise the attached meeting notes and list the action items? #{}"
    doc = ("Quarterly report. Revenue grew in every region; costs fell after the move to the new warehouse. "
           * 60)[:6000] + " #{}"
    out = []
    for name, fn in (("injection", inj.score), ("secrets", sec.inspect)):
        for label, text in (("short prompt", short), ("6,000-char document", doc)):
            wall, cpu = [], []
            for i in range(n if label == "short prompt" else n // 4):
                t, c = time.perf_counter(), time.process_time()
                fn(text.format(i))
                wall.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            out.append(f"{name:<10} {label:<20} p50 {percentile(wall, 50):6.2f} ms  p95 {percentile(wall, 95):6.2f} ms"
                       f"  (CPU p50 {percentile(cpu, 50):.2f} ms)")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pii", default=str(SHARED / "pii" / "data_synth_dataset_v2.json") if SHARED else None)
    ap.add_argument("--injection",
                    default=str(SHARED / "injection" / "jailbreak_dataset_train.csv") if SHARED else None)
    ap.add_argument("--secrets", default=str(SHARED / "secrets-extra" / "secret_fixtures.jsonl") if SHARED else None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--pii-model", choices=("rampart", "spacy", "both", "all"), default="rampart",
                    help="the statistical PII recogniser; 'all' compares the three side by side")
    args = ap.parse_args()

    from turnout.evals.guards_cli import eval_injection, eval_pii, eval_secrets, format_report

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    if args.pii_model == "all":
        if not args.pii:
            raise SystemExit("--pii-model all needs --pii FILE")
        print(_compare(args.pii, args.limit))
        print(f"load average {os.getloadavg()[0]:.2f} at end")
        return 0
    report = {}
    if args.pii:
        report["pii"] = eval_pii(args.pii, limit=args.limit, model_ner=args.pii_model)
    if args.injection:
        report["injection"] = eval_injection(args.injection, limit=args.limit, score_only=True, progress=False)
    if args.secrets:
        report["secrets"] = eval_secrets(args.secrets, limit=args.limit, progress=False)
    print(format_report(report))
    print(_detector_bench())
    print(_scan_bench(pii_model=args.pii_model))
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


def _compare(path: str, limit: int | None) -> str:
    """The three statistical recognisers on the same records, with spaCy as the reference."""
    from turnout.evals.guards_cli import eval_pii

    rows = {m: eval_pii(path, limit=limit, model_ner=m, progress=False) for m in ("spacy", "rampart", "both")}
    base = rows["spacy"]["latency_ms"]
    out = [f"PII recognisers on {path} (held-out templates; latency over all records, wall clock)",
           f"  {'model':<9}{'F2 typed':>9}{'P typed':>9}{'R hidden':>9}{'P hidden':>9}"
           f"{'p50 ms':>8}{'p95 ms':>8}{'p95 vs spacy':>13}"]
    for m, r in rows.items():
        ta, tg, lat = r["heldout_templates"]["type_aware"], r["heldout_templates"]["type_agnostic"], r["latency_ms"]
        out.append(f"  {m:<9}{ta['f2']:>9.3f}{ta['precision']:>9.3f}{tg['recall']:>9.3f}{tg['precision']:>9.3f}"
                   f"{lat['p50']:>8.1f}{lat['p95']:>8.1f}{lat['p95'] / base['p95']:>12.2f}x")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
