"""What the task engine adds around its model calls: a gateway (auth: open) whose engines are
the loopback OpenAI-wire fake (a scripted planner and a "local" executor), tasks of one plan
step and three executor steps, the step cache off. For each task, the time from POST to
``succeeded`` (polled every 20 ms) next to the same four chat requests sent straight to the
gateway, one after the other.

    python bench/tasks_overhead.py [--tasks 20]

Printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from turnout.testing.procs import start_server  # noqa: E402

PLAN = {"steps": [{"id": f"s{i}", "kind": "llm", "instruction": f"step {i}: summarise {{{{input.text}}}}"}
                  for i in range(3)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="turnout-bench-tasks-"))
    with start_server("turnout.testing.upstream", "--port", "0", add_port=False) as fake:
        cfg = {"auth": "open",
               "engines": {"gpt": {"dialect": "openai", "locality": "remote", "base_url": fake.url + "/v1",
                                   "model": "fake-planner"},
                           "small": {"dialect": "openai", "locality": "local", "base_url": fake.url + "/v1",
                                     "model": "fake-local"}},
               "routes": {"frontier": {"chain": ["gpt"]}, "local": {"chain": ["small"]}},
               "guards": {"enabled": False}, "storage": {"sqlite_path": str(tmp / "t.sqlite")},
               "tasks": {"poll_s": 0.02, "cache_ttl_s": 0}}
        (tmp / "turnout.yaml").write_text(yaml.safe_dump(cfg))
        with start_server("turnout", "serve", "--config", str(tmp / "turnout.yaml"), timeout=90) as gw:
            # direct calls take one too
            httpx.post(fake.url + "/__control/scenarios",
                       json={"replies": {"fake-planner": [json.dumps(PLAN)] * 2 * args.tasks}})
            c = httpx.Client(base_url=gw.url, timeout=30)
            task_s, direct_s = [], []
            for i in range(args.tasks):
                t0 = time.perf_counter()
                tid = c.post("/v1/turnout/tasks", json={"goal": f"g{i}", "inputs": {"text": f"text {i}"}}).json()["id"]
                while (state := c.get(f"/v1/turnout/tasks/{tid}").json()["state"]) not in ("succeeded", "failed"):
                    time.sleep(0.02)
                assert state == "succeeded", c.get(f"/v1/turnout/tasks/{tid}").json()
                task_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for model in ("frontier", "local", "local", "local"):
                    r = c.post("/v1/chat/completions", json={"model": model, "messages": [
                        {"role": "user", "content": f"step: summarise text {i}"}]})
                    assert r.status_code == 200
                direct_s.append(time.perf_counter() - t0)
    tp50, dp50 = statistics.median(task_s) * 1000, statistics.median(direct_s) * 1000
    print(f"tasks: {args.tasks}, each 1 plan call + 3 executor calls, step cache off, poll 20 ms")
    print(f"task, POST to succeeded  p50 {tp50:7.1f} ms   max {max(task_s) * 1000:7.1f} ms")
    print(f"4 direct chat calls      p50 {dp50:7.1f} ms   max {max(direct_s) * 1000:7.1f} ms")
    print(f"ratio task / direct: {tp50 / dp50:.2f}; added per task: {tp50 - dp50:.1f} ms")


if __name__ == "__main__":
    main()
