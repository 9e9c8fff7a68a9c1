"""What scrubbing an upstream's error message costs before the ledger stores it
(``turnout.guards.scrub``, issue 23 L3): the detector's build, then per message.

    python bench/scrub.py [--n 500]

Messages: a 225-character 400 quoting an e-mail address, an AWS key id and a card number; a
plain 60-character one with nothing to find; 400 KB of text (cut to ``SCAN_CHARS`` first).
Printed: build time, then p50 / p99 / mean per call for each. It asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turnout.guards import scrub  # noqa: E402

MESSAGES = {
    "400 quoting PII and a key (225 chars)": (
        "Invalid request: the field 'messages[0].content' contains 'Contact jane.doe@example.com, key "
        "AKIAZ7QW3XK5N2R4T6YB and card 4111 1111 1111 1111'. Please check https://platform.example.com/docs "
        "and retry; request id req_8f3a2b."),
    "plain (60 chars)": "The model 'gpt-x' does not exist or you do not have access.",
    "400 KB": "AKIA" * 100_000,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    t0 = time.perf_counter()
    scrub.scrub("")
    print(f"build: {(time.perf_counter() - t0) * 1000:.1f} ms (once per process)")
    for name, text in MESSAGES.items():
        times = []
        for _ in range(args.n):
            t = time.perf_counter()
            scrub.scrub(text)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        print(f"{name:40s} p50 {statistics.median(times):.3f} ms  p99 {times[int(0.99 * (len(times) - 1))]:.3f} ms  "
              f"mean {statistics.fmean(times):.3f} ms")
    print("scrubbed:", scrub.scrub(MESSAGES["400 quoting PII and a key (225 chars)"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
