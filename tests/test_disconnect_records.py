"""A client that leaves at any step of the pipeline: its ledger row is written all the same, and
the gateway's log gains at most one line (never a traceback).

Each step is held open with a real part while the client goes: rate limits and budgets in a
private Redis server whose writes are paused (``CLIENT PAUSE WRITE``: admit, and the budget's
settlement in the record step), the loopback upstream (the call, before and after the first
token), and the SQLite ledger locked by another connection (the row's commit). A private Redis,
so pausing it disturbs no other test.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, Upstream
from tests.test_backpressure import read_until, upstream_connections, wait_for
from turnout.governance.key_store import SQLiteKeyStore
from turnout.governance.keys import Limits
from turnout.testing.procs import free_port, start_server

HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        assert wait_for(lambda: _pings(client), timeout=10), "the private redis-server did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-frontier") as proc:
        yield Upstream(proc)


def start_gateway(tmp: Path, upstream: Upstream, redis_port: int) -> tuple[Gateway, str]:
    """A gateway in ``keys`` mode whose key has a rate limit and a budget (kept in the private
    Redis), and its key."""
    import yaml

    db = tmp / "ledger.sqlite"
    with SQLiteKeyStore(db) as store:
        key = store.create("acme", limits=Limits(rpm=10_000, usd_per_day=100.0)).plaintext
    cfg = {
        "auth": "keys",
        "storage": {"redis_url": f"redis://127.0.0.1:{redis_port}/0"},
        "engines": {"frontier": {
            "dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1", "model": "fake-frontier",
            "pricing": {"input_per_m": 2.5, "output_per_m": 10.0},
            "resilience": {"retries": 0, "breaker_failures": 1000}}},
        "routes": {"chat": {"chain": ["frontier"]}},
    }
    path = tmp / "turnout.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = start_server("turnout", "serve", "--config", str(path), "--db", str(db), timeout=60, cwd=str(tmp))
    return Gateway(proc, db), key


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, own_upstream: Upstream,
       redis_port: int) -> Iterator[tuple[Gateway, str]]:
    gateway, key = start_gateway(tmp_path_factory.mktemp("disconnect"), own_upstream, redis_port)
    try:
        yield gateway, key
    finally:
        gateway.proc.stop()


@pytest.fixture(autouse=True)
def _clean(own_upstream: Upstream, redis_port: int) -> Iterator[None]:
    own_upstream.reset()
    yield
    import redis

    redis.Redis(port=redis_port).client_unpause()
    own_upstream.reset()


def send(gw: Gateway, key: str, stream: bool) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    data = json.dumps({"model": "chat", "messages": HI, "stream": stream}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def new_rows(gw: Gateway, before: int) -> list[dict[str, Any]]:
    return gw.ledger_after(before, timeout=15)


def log_lines(gw: Gateway) -> list[str]:
    return gw.proc.output().splitlines()


def pause_writes(redis_port: int) -> None:
    """Hold every write to the private Redis (rate limits, budget reservations and settlements)."""
    import redis

    redis.Redis(port=redis_port).client_pause(30_000, all=False)


def unpause(redis_port: int) -> None:
    import redis

    redis.Redis(port=redis_port).client_unpause()


def leave_in_admit(gw: Gateway, key: str, up: Upstream, redis_port: int) -> None:
    pause_writes(redis_port)  # the request's rate-limit count cannot be written
    sock = send(gw, key, stream=False)
    time.sleep(0.8)
    sock.close()
    time.sleep(0.3)
    unpause(redis_port)


def leave_before_the_first_token(gw: Gateway, key: str, up: Upstream, redis_port: int) -> None:
    up.default({"name": "stall_first_token", "seconds": 30})
    sock = send(gw, key, stream=True)
    assert wait_for(lambda: upstream_connections(up.proc.port) >= 1)
    sock.close()


def leave_mid_stream(gw: Gateway, key: str, up: Upstream, redis_port: int) -> None:
    up.default({"name": "stall_midstream", "seconds": 30, "after_chunks": 2})
    sock = send(gw, key, stream=True)
    read_until(sock, b'"content"')
    sock.close()


def leave_while_the_budget_settles(gw: Gateway, key: str, up: Upstream, redis_port: int) -> None:
    up.default({"name": "ok", "delay_ms": 1500})
    sock = send(gw, key, stream=False)
    time.sleep(0.7)  # admitted and reserved; the upstream is answering
    pause_writes(redis_port)  # so the record step's settlement waits
    time.sleep(1.5)
    sock.close()
    time.sleep(0.3)
    unpause(redis_port)


def _leave_while_the_row_commits(gw: Gateway, key: str, stream: bool) -> None:
    lock = sqlite3.connect(gw.db, isolation_level=None, timeout=30)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the ledger
    try:
        sock = send(gw, key, stream=stream)
        if stream:
            read_until(sock, b'"finish_reason":"stop"')  # the whole answer; [DONE] waits for the row
        else:
            time.sleep(1.0)
        sock.close()
        time.sleep(0.3)
    finally:
        lock.execute("COMMIT")
        lock.close()


def leave_while_the_row_commits(gw: Gateway, key: str, up: Upstream, redis_port: int) -> None:
    _leave_while_the_row_commits(gw, key, stream=False)


def leave_a_stream_while_its_row_commits(gw: Gateway, key: str, up: Upstream, redis_port: int) -> None:
    _leave_while_the_row_commits(gw, key, stream=True)


# step -> (how the client leaves there, the row's status, whether an engine answered)
STEPS = {
    "admit": (leave_in_admit, "client_closed", False),
    "call-before-first-token": (leave_before_the_first_token, "client_closed", False),
    "call-mid-stream": (leave_mid_stream, "client_closed", True),
    "record-budget": (leave_while_the_budget_settles, "ok", True),
    "record-ledger": (leave_while_the_row_commits, "ok", True),
    "record-ledger-stream": (leave_a_stream_while_its_row_commits, "ok", True),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_client_that_leaves_keeps_its_row_and_the_log_quiet(gw: tuple[Gateway, str], own_upstream: Upstream,
                                                              redis_port: int, step: str) -> None:
    gateway, key = gw
    leave, status, answered = STEPS[step]
    before, lines = len(gateway.ledger()), len(log_lines(gateway))
    leave(gateway, key, own_upstream, redis_port)
    rows = new_rows(gateway, before)
    assert len(rows) == 1, rows  # the row is there, once
    (row,) = rows
    assert row["status"] == status and row["tenant"] == "acme", row
    assert (row["engine"] == "frontier") == answered and (row["cost_usd"] > 0) == answered, row
    if status == "client_closed":
        assert row["http_status"] == 499
    time.sleep(0.5)  # anything the gateway would log about it
    added = log_lines(gateway)[lines:]
    assert len(added) <= 1 and not any("Traceback" in ln or "CancelledError" in ln for ln in added), added
    # and the gateway still answers
    import httpx

    own_upstream.reset()
    resp = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "chat", "messages": HI},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_a_record_left_running_is_written_before_the_gateway_stops(tmp_path: Path, own_upstream: Upstream,
                                                                    redis_port: int) -> None:
    """The client left while its budget was being settled, then the gateway is stopped: the
    shutdown waits for that record (``Gateway.drain``) before it closes the ledger."""
    gateway, key = start_gateway(tmp_path, own_upstream, redis_port)
    try:
        own_upstream.default({"name": "ok", "delay_ms": 1500})
        sock = send(gateway, key, stream=False)
        time.sleep(0.7)
        pause_writes(redis_port)
        time.sleep(1.5)  # the answer is in; its settlement waits on Redis
        sock.close()
        time.sleep(0.3)
        gateway.proc.popen.terminate()  # SIGTERM: a graceful stop
        time.sleep(1.0)
        assert gateway.ledger() == []  # still waiting on the settlement
        unpause(redis_port)
        assert gateway.proc.popen.wait(30) in (0, -15)  # uvicorn re-raises the signal once it has shut down
    finally:
        unpause(redis_port)
        gateway.proc.stop()
    (row,) = gateway.ledger()
    assert row["status"] == "ok" and row["engine"] == "frontier" and row["cost_usd"] > 0, row
    out = gateway.proc.output()
    assert "Application shutdown complete" in out and "Traceback" not in out
