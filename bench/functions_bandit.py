"""A two-variant bandit moving traffic after feedback, over real sockets: examples/functions/summarize
through a gateway in front of the loopback upstream (it echoes; no model runs), with simulated users
who give a thumbs up to every ``bullets`` answer and to one ``plain`` answer in three.

    python bench/functions_bandit.py [--episodes 40]

Prints the share of ``bullets`` per block of 10 new episodes, then `turnout functions report`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import httpx
import yaml

from turnout.cli.main import main as cli
from turnout.testing.procs import start_server

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=40)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fn-bandit-"))
    shutil.copytree(ROOT / "examples" / "functions", tmp / "functions", ignore=shutil.ignore_patterns("turnout.yaml"))
    with start_server("turnout.testing.upstream") as up:
        def engine(model: str, locality: str, pricing: dict[str, float]) -> dict[str, object]:
            return {"dialect": "openai", "locality": locality, "base_url": up.url + "/v1",
                    "model": model, "pricing": pricing}

        cfg = {"engines": {"small": engine("fake-small", "local", {"hourly_cost": 0.05}),
                           "big": engine("fake-big", "remote", {"input_per_m": 0.15, "output_per_m": 0.6})},
               "routes": {"private": {"chain": ["small"]}, "strong": {"chain": ["big"]}}, "guards": {"enabled": False},
               "functions": {"path": str(tmp / "functions")}}
        (tmp / "turnout.yaml").write_text(yaml.safe_dump(cfg))
        db = tmp / "ledger.sqlite"
        with start_server("turnout", "serve", "--config", str(tmp / "turnout.yaml"), "--db", str(db),
                          cwd=str(tmp)) as gw:
            block: list[str] = []
            for i in range(args.episodes):
                r = httpx.post(gw.url + "/v1/chat/completions", timeout=30, json={
                    "model": "fn:summarize", "metadata": {"episode": f"e{i}"},
                    "messages": [{"role": "user",
                                  "content": json.dumps({"text": "Cats sleep most of the day.", "words": 10})}]})
                v = r.headers["x-turnout-variant"]
                block.append(v)
                liked = v == "bullets" or i % 3 == 0
                httpx.post(gw.url + "/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                                          "score": "up" if liked else "down"})
                if len(block) == 10:
                    print(f"episodes {i - 8:>3}-{i + 1:<3} bullets share {block.count('bullets') / 10:.1f}")
                    block = []
        return cli(["functions", "report", "summarize", "--config", str(tmp / "turnout.yaml"), "--db", str(db)])


if __name__ == "__main__":
    raise SystemExit(main())
