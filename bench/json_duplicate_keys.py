"""What refusing duplicate JSON keys costs (turnout.server.body.read_json): orjson parses the
body, then ``json`` with an ``object_pairs_hook`` checks each object's keys once. Prints the
time of each per body shape.

    python bench/json_duplicate_keys.py
"""

from __future__ import annotations

import json
import timeit

import orjson

from turnout.server.body import _unique_keys

BODIES = {
    "chat, 339 B": {"model": "auto", "max_tokens": 64, "temperature": 0.2,
                    "messages": [{"role": "system", "content": "You are helpful."},
                                 {"role": "user", "content": "hello there, how are you " * 8}]},
    "chat, 390 KB prompt": {"model": "auto", "messages": [{"role": "user", "content": "x y z " * 65_000}]},
    "documents, 10,000 objects": {"documents": [{"id": str(i), "text": "t" * 50, "metadata": {"a": 1}}
                                                for i in range(10_000)]},
}


def main() -> None:
    for name, body in BODIES.items():
        raw = orjson.dumps(body)
        n = max(10, 2_000_000 // len(raw))
        parse = min(timeit.repeat(lambda: orjson.loads(raw), number=n, repeat=5)) / n * 1e6
        check = min(timeit.repeat(lambda: json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys),
                                  number=n, repeat=5)) / n * 1e6
        print(f"{name:<28} {len(raw):>9,} bytes  orjson {parse:9.1f} us  duplicate check +{check:9.1f} us")


if __name__ == "__main__":
    main()
