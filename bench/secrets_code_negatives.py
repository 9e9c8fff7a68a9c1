"""Share of real source files the secrets detector flags: installed packages' code, docs and
config as a (nearly all) negative corpus nobody tuned the fixtures on (issue 25, Must have 6).

    python bench/secrets_code_negatives.py [--root PATH] [--site DIR] [--start 0] [--n 2500] [--show]

Files (``.py .js .json .toml .cfg .ini .yaml .yml .md .txt`` under ``--site``, default this
interpreter's site-packages) are sorted, shuffled with a fixed seed and read up to 10,000
characters each; files ``--start`` to ``--start + --n`` are scanned. ``--root`` imports
``turnout`` from another checkout (before / after). ``--show`` prints every finding, so each
flag can be judged: a few are real test credentials shipped in packages, most are not secrets.
The figure depends on what is installed; compare before and after on the same environment only.
"""

from __future__ import annotations

import argparse
import random
import sys
import sysconfig
from collections import Counter
from pathlib import Path

SUFFIXES = (".py", ".js", ".json", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".md", ".txt")


def corpus(site: Path, start: int, n: int, seed: int = 3) -> list[Path]:
    """Files ``start`` to ``start + n`` of the shuffled list (sorted by relative path first)."""
    names = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    random.Random(seed).shuffle(names)
    return [site / name for name in names[start: start + n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout to import turnout from")
    ap.add_argument("--site", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                    help="the folder of source files (default: this interpreter's site-packages)")
    ap.add_argument("--start", type=int, default=0, help="first file of the shuffled list")
    ap.add_argument("--n", type=int, default=2500, help="files to scan")
    ap.add_argument("--show", action="store_true", help="print every finding with its context")
    args = ap.parse_args()
    sys.path.insert(0, str(args.root))
    from turnout.guards.secrets import SecretsGuard

    guard = SecretsGuard()
    files = corpus(args.site, args.start, args.n)
    flagged = 0
    types: Counter[str] = Counter()
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")[:10_000]
        except (UnicodeDecodeError, OSError):
            continue
        found = guard.inspect(text)
        flagged += bool(found)
        for f in found:
            types[f.type] += 1
            if args.show:
                print(f"  {p.relative_to(args.site)}  {f.type}  {text[max(0, f.start - 50): f.end + 20]!r}")
    print(f"secrets detector, {args.root}: {flagged} of {len(files)} files flagged "
          f"({flagged / max(1, len(files)):.4f}); files {args.start}..{args.start + len(files)} of {args.site}")
    print("  findings by type: " + (", ".join(f"{t} {c}" for t, c in types.most_common()) or "none"))


if __name__ == "__main__":
    main()
