"""Graceful shutdown and durability, with real processes and signals.

* SIGTERM: the listening socket closes at once (new connections are refused) while requests
  in flight, streamed or not, still complete successfully; then the process exits.
* SIGKILL: no completed request is lost. Every request that got its whole response has its
  ledger row after a restart on the same SQLite file, and the audit chain verifies.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Upstream
from turnout.testing.procs import Proc, start_server

HI = [{"role": "user", "content": "hello there"}]
DID_NOT_HANG = 60.0


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-frontier") as proc:
        yield Upstream(proc)


def start_gateway(tmp: Path, upstream_url: str, db: Path) -> Proc:
    cfg = {
        "engines": {"frontier": {
            "dialect": "openai", "locality": "remote", "base_url": upstream_url + "/v1", "model": "fake-frontier",
            "pricing": {"input_per_m": 2.5, "output_per_m": 10.0},
            "resilience": {"timeout": 30, "first_token_timeout": 30, "idle_timeout": 30},
        }},
        "routes": {"auto": {"chain": ["frontier"]}},
    }
    path = tmp / "turnout.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return start_server("turnout", "serve", "--config", str(path), "--db", str(db), timeout=60, cwd=str(tmp))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_in_flight_requests(tmp_path: Path, own_upstream: Upstream) -> None:
    own_upstream.reset()
    gw = start_gateway(tmp_path, own_upstream.url, tmp_path / "ledger.sqlite")
    try:
        # the upstream answers slowly: 2 s for the JSON request, a 2 s pause inside the stream
        slow_json = {"model": "auto", "messages": HI}
        slow_stream = {"model": "auto", "messages": HI, "stream": True}
        results: dict[str, Any] = {}

        def json_call() -> None:
            results["json"] = httpx.post(gw.url + "/v1/chat/completions", json=slow_json, timeout=DID_NOT_HANG)

        def stream_call() -> None:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=slow_stream, timeout=DID_NOT_HANG) as r:
                results["stream_status"] = r.status_code
                results["stream"] = [ln for ln in r.iter_lines() if ln.startswith("data: ")]

        own_upstream.queue({"name": "ok", "delay_ms": 2000},
                           {"name": "stall_midstream", "seconds": 2, "after_chunks": 2})
        t1 = threading.Thread(target=json_call)
        t1.start()
        deadline = time.monotonic() + DID_NOT_HANG
        while len(own_upstream.requests()) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t2 = threading.Thread(target=stream_call)
        t2.start()
        while len(own_upstream.requests()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        gw.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not refused(gw.port):  # the listening socket closes at once
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert gw.alive(), "exited before the requests in flight were done"

        t1.join(DID_NOT_HANG)
        t2.join(DID_NOT_HANG)
        assert results["json"].status_code == 200
        assert results["json"].json()["choices"][0]["message"]["content"] == "echo: hello there"
        assert results["stream_status"] == 200 and results["stream"][-1] == "data: [DONE]"
        text = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content") or ""
                       for ln in results["stream"][:-1] if json.loads(ln[6:])["choices"])
        assert text == "echo: hello there"
        assert gw.popen.wait(DID_NOT_HANG) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        conn = sqlite3.connect(tmp_path / "ledger.sqlite")
        try:
            statuses = [r[0] for r in conn.execute("SELECT status FROM requests ORDER BY id")]
        finally:
            conn.close()
        assert statuses == ["ok", "ok"]
        assert "Traceback" not in gw.output()
    finally:
        gw.stop()


def test_sigkill_loses_no_completed_request(tmp_path: Path, own_upstream: Upstream) -> None:
    own_upstream.reset()
    own_upstream.client.post("/__control/scenarios", json={"delay_ms": 5}).raise_for_status()
    db = tmp_path / "ledger.sqlite"
    gw = start_gateway(tmp_path, own_upstream.url, db)
    completed: list[str] = []
    failed = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        nonlocal failed
        with httpx.Client(timeout=10) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                body = {"model": "auto", "messages": HI, "stream": (i + n) % 3 == 0}
                try:
                    with http.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
                        data = r.read()  # the whole response, to its last byte
                        ok = r.status_code == 200 and (not body["stream"] or data.rstrip().endswith(b"[DONE]"))
                        rid = r.headers.get("x-request-id")
                except httpx.HTTPError:
                    with lock:
                        failed += 1
                    continue
                if ok and rid:
                    with lock:
                        completed.append(rid)

    try:
        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client, i) for i in range(6)]
            deadline = time.monotonic() + DID_NOT_HANG
            while len(completed) < 150:
                assert time.monotonic() < deadline, f"only {len(completed)} requests completed"
                time.sleep(0.01)
            os.kill(gw.pid, signal.SIGKILL)  # mid-load, no warning
            gw.popen.wait(10)
            time.sleep(0.5)
            stop.set()
            for f in futures:
                f.result(DID_NOT_HANG)
    finally:
        stop.set()
        gw.stop()
    assert failed > 0  # the kill really hit requests in flight
    done = set(completed)

    again = start_gateway(tmp_path, own_upstream.url, db)  # restart on the same file
    try:
        r = httpx.post(again.url + "/v1/chat/completions", json={"model": "auto", "messages": HI}, timeout=DID_NOT_HANG)
        assert r.status_code == 200
        conn = sqlite3.connect(db)
        try:
            recorded = {row[0] for row in conn.execute("SELECT request_id FROM requests")}
        finally:
            conn.close()
        missing = done - recorded
        assert not missing, f"{len(missing)} of {len(done)} completed requests have no ledger row"
        assert r.headers["x-request-id"] in recorded
    finally:
        again.stop()
    audit = subprocess.run([sys.executable, "-m", "turnout", "audit", "verify", "--db", str(db)],
                           capture_output=True, text=True, timeout=DID_NOT_HANG, cwd=str(tmp_path))
    assert audit.returncode == 0, audit.stdout + audit.stderr
