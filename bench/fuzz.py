"""The full schemathesis run: tests/test_fuzz.py with many more examples per operation.

    python bench/fuzz.py [--examples 2000]

A real gateway (engine: the loopback OpenAI-wire upstream) is fuzzed from its own
/openapi.json, positive and negative data; every response must be non-5xx and match the
document, every schema violation must get a 4xx, and the gateway must log no traceback.
Prints the pytest summary and the wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=2000, help="examples per operation and mode (default 2000)")
    args = p.parse_args()
    env = {**os.environ, "TURNOUT_FUZZ_EXAMPLES": str(args.examples)}
    t0 = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q", "-p", "no:cacheprovider",
                          "-o", "timeout=0"], cwd=ROOT, env=env)
    print(f"fuzz: {args.examples} examples per operation and mode, {time.monotonic() - t0:.0f} s, "
          f"{'no failures' if rc == 0 else 'FAILURES (see above)'}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
