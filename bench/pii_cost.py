"""The PII detector's CPU per text and its flag rate on benign text (issue 25, Must have 5 and 7).

    python bench/pii_cost.py [--runs 200] [--benign N] [--json]

Cost: CPU time (``time.process_time``, the whole process, so onnxruntime's threads count) of
``PiiGuard.inspect`` with no result cache, the transformer on one onnxruntime thread, on a short
prompt and on a 2,000-character prose text with a few personal details; p50 and p95 over
``--runs`` calls each, after a warm-up.

Benign flag rate: the first N rows (default 2,000) of ``guards-extra/nq_open_queries.csv`` and all
of ``guards-extra/mtbench_vicuna_prompts.csv`` (texts with no personal data about a private
person): findings per 1,000 characters, the share of texts with any finding, and the findings by
type. Public figures and places in the questions ("who was the first president of Kenya") are
counted too: the detector cannot tell them from private ones, so this is an upper bound on the
false-positive rate.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.exists()), None)

SHORT = "Can you write a short reply to Jane Doe (jane.doe@example.com) saying the invoice is paid?"
PROSE = (
    "Thanks for the update on the quarterly review. The team met on Tuesday to go through the open items, "
    "and most of the discussion was about the data pipeline, which still drops a few records each night when "
    "the upstream export runs late. We agreed to add a retry with a longer back-off and to alert on the count "
    "of dropped rows rather than on each failure. Marta Kowalski from the analytics group will own that change "
    "and expects to have it in review by the end of next week. On the budget side, the cloud bill went up by "
    "about twelve percent, mostly storage for old snapshots that nobody has looked at in months; we will move "
    "anything older than ninety days to the archive tier. The hiring plan is unchanged: two backend engineers "
    "and one designer, with interviews starting in the new year. Please send comments on the roadmap draft "
    "before Friday so that we can circulate a clean version to the wider group. A few people asked about the "
    "offsite; it will be in the same venue as last year, and travel can be booked through the usual portal. "
    "If you need to reach me while I am away, my mobile is +44 7700 900123, and my deputy can sign anything "
    "urgent. Finally, a reminder that the security training is due for everyone by the end of the month, and "
    "that the new expense policy applies from the first of next month. The summary of the customer interviews "
    "is attached: the main themes are onboarding friction, the export format, and the lack of a bulk edit "
    "screen. We will pick two of these for the next cycle after the planning session. Let me know if I missed "
    "anything from the notes, and thanks again to everyone who stayed late on Thursday to get the release out. "
    "For the record, the vendor call moved to the twelfth, and Daniel Osei will dial in from the Accra office; "
    "the contract renewal with our hosting provider is still with legal, who expect to finish their review "
    "soon. The test environment will be down on Saturday morning for the database upgrade, so plan any load "
    "tests for the afternoon or for the following week."
)


def _guard() -> Any:
    from turnout.guards.pii import PiiGuard
    from turnout.guards.pii_model import RampartNer

    guard = PiiGuard(cache_size=0)
    if "model" in guard.recognisers:
        guard.recognisers["model"] = RampartNer(threads=1)  # single thread: CPU per text, not latency
    return guard


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def cost(guard: Any, runs: int) -> dict[str, Any]:
    out = {}
    for name, text in (("short", SHORT), ("prose_2000", PROSE[:2000])):
        for _ in range(5):
            guard.inspect(text)
        cpu = []
        for _ in range(runs):
            c = time.process_time()
            guard.inspect(text)
            cpu.append((time.process_time() - c) * 1000)
        out[name] = {"chars": len(text), "cpu_ms_p50": round(_pct(cpu, 50), 2), "cpu_ms_p95": round(_pct(cpu, 95), 2)}
    return out


def _texts(path: Path, limit: int | None) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [r["text"] for r in csv.DictReader(fh) if r.get("label", "0") == "0"]
    return rows[:limit] if limit else rows


def benign(guard: Any, n: int) -> dict[str, Any]:
    if SHARED is None:
        return {}
    out = {}
    for name, limit in (("nq_open_queries", n), ("mtbench_vicuna_prompts", None)):
        texts = _texts(SHARED / "guards-extra" / f"{name}.csv", limit)
        types: Counter[str] = Counter()
        flagged = chars = 0
        for t in texts:
            found = guard.inspect(t)
            chars += len(t)
            flagged += bool(found)
            types.update(f.type for f in found)
        total = sum(types.values())
        out[name] = {"texts": len(texts), "chars": chars, "findings": total,
                     "per_1000_chars": round(1000 * total / max(chars, 1), 3),
                     "texts_flagged": round(flagged / max(len(texts), 1), 4), "by_type": dict(types.most_common())}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--benign", type=int, default=2000, help="rows of nq_open_queries.csv (0: skip benign)")
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    guard = _guard()
    report: dict[str, Any] = {}
    if not args.no_cost:
        report["cost"] = cost(guard, args.runs)
    if args.benign:
        report["benign"] = benign(guard, args.benign)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    for name, v in report.get("cost", {}).items():
        print(f"cost {name:<11} {v['chars']:>5} chars  CPU p50 {v['cpu_ms_p50']:.2f} ms  p95 {v['cpu_ms_p95']:.2f} ms")
    for name, v in report.get("benign", {}).items():
        print(f"benign {name:<24} {v['texts']:>5} texts  {v['per_1000_chars']:.3f} findings / 1,000 chars  "
              f"{v['texts_flagged']:.3f} of texts flagged  {v['by_type']}")


if __name__ == "__main__":
    main()
