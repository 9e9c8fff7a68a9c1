"""Cost of the secrets detector per text: a short prompt and a 10,000-character code file,
p50/p95 of wall clock and of process CPU time, single thread (issue 25, Must have 7).

    python bench/secrets_cost.py [--n 300] [--root PATH]

``--root`` imports ``turnout`` from another checkout (e.g. an older commit unpacked with
``git archive``) so that before and after are timed by the same script on the same machine.
The code file is built from a fixed seed: Python with imports, a lockfile section, hashes,
UUIDs, base64 test data and one keyed credential, so every stage of the detector runs.
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import string
import sys
import time
from pathlib import Path

SHORT = "Can you write a Python function that reads a CSV file and sums the second column? #{}"


def code_file(size: int = 10_000, seed: int = 7) -> str:
    rng = random.Random(seed)
    alnum = string.ascii_letters + string.digits
    blocks = [
        "import os\nimport json\nfrom pathlib import Path\n\n",
        "def load(path: str) -> dict:\n    with open(path) as fh:\n        return json.load(fh)\n\n",
        "class Client:\n    def __init__(self, url: str, token: str | None = None) -> None:\n"
        "        self.url = url\n        self.token = token or os.environ.get(\"API_TOKEN\")\n\n",
        f'CHECKSUM = "{"".join(rng.choice("0123456789abcdef") for _ in range(64))}"\n',
        f'REQUEST_ID = "{"".join(rng.choice("0123456789abcdef") for _ in range(8))}-0000-4000-8000-000000000000"\n',
        f'VECTOR = "{base64.b64encode(bytes(rng.randrange(256) for _ in range(48))).decode()}"\n',
        '"integrity": "sha512-' + base64.b64encode(bytes(rng.randrange(256) for _ in range(64))).decode() + '",\n',
        "for i, row in enumerate(rows):\n    if row.get(\"status\") != \"ok\":\n        continue\n"
        "    total += float(row[\"amount\"])\n",
    ]
    out: list[str] = []
    while sum(map(len, out)) < size:
        out.append(rng.choice(blocks))
    text = "".join(out)[: size - 60]
    return text + f'\napi_key = "{"".join(rng.choice(alnum) for _ in range(40))}"\n'


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="texts per case (the long case runs n/3)")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout to import turnout from")
    args = ap.parse_args()
    sys.path.insert(0, str(args.root))
    from turnout.guards.secrets import SecretsGuard

    guard = SecretsGuard()
    doc = code_file()
    guard.inspect(doc)  # warm: rule catalogue, detect-secrets plugins
    print(f"secrets detector, {args.root}")
    for label, text, n in (("short prompt", SHORT, args.n), ("10,000-char code file", doc + " #{}", args.n // 3)):
        wall, cpu = [], []
        for i in range(n):
            t = text.replace("#{}", f"#{i}")
            w, c = time.perf_counter(), time.thread_time()
            guard.inspect(t)
            cpu.append((time.thread_time() - c) * 1000)
            wall.append((time.perf_counter() - w) * 1000)
        print(f"  {label:<24} CPU p50 {percentile(cpu, 50):7.3f} ms  p95 {percentile(cpu, 95):7.3f} ms   "
              f"wall p50 {percentile(wall, 50):7.3f} ms  p95 {percentile(wall, 95):7.3f} ms  (n={n})")


if __name__ == "__main__":
    main()
