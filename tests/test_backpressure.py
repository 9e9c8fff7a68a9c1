"""Backpressure and cancellation over real sockets.

* the gateway-wide bound (``server.max_in_flight``): past it, a fast 503 with Retry-After;
* the per-engine bound (``resilience.max_concurrency`` + ``max_queue``): past it the engine
  refuses at once; the chain falls back, or the client gets a 503 with Retry-After;
* a client that goes away cancels the upstream work: a remote upstream sees its connection
  closed, the embedded llama.cpp model stops generating.

Each module-level gateway talks to its own loopback upstream, so upstream delays and
connection counts here are not disturbed by other tests.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, Upstream, _factory
from turnout.testing.procs import Proc, start_server

HI = [{"role": "user", "content": "hello there"}]
DID_NOT_HANG = 60.0  # seconds; a generous bound, not a timing claim


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-frontier") as proc:
        yield Upstream(proc)


def frontier(url: str, **resilience: Any) -> dict[str, Any]:
    res = {"timeout": 30, "first_token_timeout": 30, "idle_timeout": 30, "retries": 0, "backoff": 0.01,
           "breaker_failures": 1000, **resilience}
    return {"dialect": "openai", "locality": "remote", "base_url": url + "/v1", "model": "fake-frontier",
            "resilience": res}


@pytest.fixture(scope="module")
def quiet_upstream() -> Iterator[Upstream]:
    """Only the disconnect tests use it (engine ``edge``), so its connections are theirs alone."""
    with start_server("turnout.testing.upstream", "--model", "fake-edge") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, own_upstream: Upstream,
             quiet_upstream: Upstream) -> Iterator[dict[str, Gateway]]:
    """``bounded``: server.max_in_flight 2.  ``engines``: frontier with 1 slot and a queue of
    1, edge (for the disconnect tests) and the embedded model."""
    started: list[Proc] = []
    start = _factory(tmp_path_factory.mktemp("backpressure"), started)
    bounded = start({
        "engines": {"frontier": frontier(own_upstream.url)},
        "routes": {"auto": {"chain": ["frontier"]}},
        "server": {"max_in_flight": 2},
    })
    engines = start({
        "engines": {
            "frontier": frontier(own_upstream.url, max_concurrency=1, max_queue=1),
            "edge": frontier(quiet_upstream.url),
            "local": {"dialect": "llamacpp", "n_ctx": 1024},
        },
        "routes": {"remote-only": {"chain": ["frontier"]}, "auto": {"chain": ["frontier", "local"]},
                   "private": {"chain": ["local"]}, "edge-only": {"chain": ["edge"]}},
    })
    yield {"bounded": bounded, "engines": engines}
    for proc in started:
        proc.stop()


@pytest.fixture(autouse=True)
def _reset(own_upstream: Upstream) -> Iterator[None]:
    own_upstream.reset()
    yield
    own_upstream.reset()


def post(url: str, model: str, **extra: Any) -> tuple[httpx.Response, float]:
    """One request; returns the response and the monotonic time it completed."""
    body = {"model": model, "messages": HI, "max_tokens": 5, **extra}
    resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=DID_NOT_HANG)
    return resp, time.monotonic()


def fire(url: str, model: str, n: int) -> list[tuple[httpx.Response, float]]:
    with cf.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(post, url, model) for _ in range(n)]
        return [f.result(timeout=DID_NOT_HANG) for f in futures]


def ledger_row(db: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        finally:
            conn.close()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"no ledger row for {request_id}"
        time.sleep(0.05)


def test_gateway_wide_bound_refuses_fast_with_retry_after(gateways: dict[str, Gateway], own_upstream: Upstream) -> None:
    gw = gateways["bounded"]
    own_upstream.client.post("/__control/scenarios", json={"delay_ms": 1500}).raise_for_status()
    results = fire(gw.url, "auto", 6)
    ok = [(r, t) for r, t in results if r.status_code == 200]
    busy = [(r, t) for r, t in results if r.status_code == 503]
    assert len(ok) == 2 and len(busy) == 4, [r.status_code for r, _ in results]
    first_answer = min(t for _, t in ok)
    for resp, done_at in busy:
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "overloaded" and resp.json()["error"]["type"]
        assert done_at < first_answer  # refused at once, not after queueing behind the slow ones
    assert len(own_upstream.requests()) == 2  # refused requests never reached the upstream
    # the bound is on requests in flight, not a cumulative quota: it serves again
    own_upstream.client.post("/__control/scenarios", json={"delay_ms": 0}).raise_for_status()
    assert all(r.status_code == 200 for r, _ in fire(gw.url, "auto", 2))


def test_engine_bound_refuses_past_its_queue(gateways: dict[str, Gateway], own_upstream: Upstream) -> None:
    gw = gateways["engines"]
    own_upstream.client.post("/__control/scenarios", json={"delay_ms": 1000}).raise_for_status()
    results = fire(gw.url, "remote-only", 5)
    ok = [(r, t) for r, t in results if r.status_code == 200]
    busy = [(r, t) for r, t in results if r.status_code == 503]
    assert len(ok) == 2 and len(busy) == 3, [r.status_code for r, _ in results]  # 1 slot + 1 queued
    for resp, done_at in busy:
        err = resp.json()["error"]
        assert err["code"] == "all_engines_failed" and "capacity" in err["message"]
        assert resp.headers["retry-after"] == "1"
        assert done_at < min(t for _, t in ok)
        row = ledger_row(gw.db, resp.headers["x-request-id"])
        assert row["status"] == "error" and row["http_status"] == 503 and "capacity" in row["hops"]
    assert len(own_upstream.requests()) == 2


def test_engine_at_capacity_falls_back_along_the_chain(gateways: dict[str, Gateway], own_upstream: Upstream) -> None:
    gw = gateways["engines"]
    own_upstream.client.post("/__control/scenarios", json={"delay_ms": 1500}).raise_for_status()
    results = fire(gw.url, "auto", 3)
    assert all(r.status_code == 200 for r, _ in results), [r.text for r, _ in results]
    engines = sorted(r.headers["x-turnout-engine"] for r, _ in results)
    assert engines == ["frontier", "frontier", "local"]
    local = next(r for r, _ in results if r.headers["x-turnout-engine"] == "local")
    assert local.headers["x-turnout-fallbacks"] == "frontier:engine_unavailable"


# ---------------------------------------------------------------- client disconnects

def _tcp() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        out.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), f[3], f[9]))
    return out


def _my_inodes() -> set[str]:
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def upstream_connections(port: int) -> int:
    """TCP connections the upstream holds open (ESTABLISHED or CLOSE_WAIT on its port), not
    counting this test process's own (the control API client's)."""
    socks = _tcp()
    mine = _my_inodes()
    my_ports = {lp for lp, rp, _, inode in socks if rp == port and inode in mine}
    return sum(1 for lp, rp, st, _ in socks if lp == port and st in ("01", "08") and rp not in my_ports)


def wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def raw_request(url: str, body: dict[str, Any]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=DID_NOT_HANG)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    got = b""
    while got.count(marker) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {got!r}"
        got += chunk
    return got


def test_disconnect_mid_stream_closes_the_upstream_connection(gateways: dict[str, Gateway],
                                                              quiet_upstream: Upstream) -> None:
    gw = gateways["engines"]
    port = quiet_upstream.proc.port
    # the upstream sends two chunks, then would stay silent for 30 s
    quiet_upstream.default({"name": "stall_midstream", "seconds": 30, "after_chunks": 2})
    assert upstream_connections(port) == 0
    sock = raw_request(gw.url, {"model": "edge-only", "messages": HI, "stream": True})
    head = read_until(sock, b'"content"', 1)  # headers and the first token arrived; then the upstream is silent
    assert b"200 OK" in head.split(b"\r\n")[0]
    request_id = next(ln.split(b":", 1)[1].strip().decode() for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"x-request-id:"))
    assert upstream_connections(port) >= 1
    sock.close()  # the client goes away mid-stream
    assert wait_for(lambda: upstream_connections(port) == 0), "the upstream still holds the connection"
    row = ledger_row(gw.db, request_id)
    assert row["status"] == "client_closed" and row["http_status"] == 499 and row["engine"] == "edge"
    assert 0 < row["completion_tokens"] < 20  # what was produced before the client left, not a whole answer
    quiet_upstream.reset()


def test_disconnect_before_the_first_token_closes_the_upstream_connection(gateways: dict[str, Gateway],
                                                                          quiet_upstream: Upstream) -> None:
    """Issue 23, L6: the client leaves while a stream's first token is awaited. The gateway used
    to wait on, then relay the whole answer (arriving at once) to nobody and record it ok/200."""
    gw = gateways["engines"]
    port = quiet_upstream.proc.port
    quiet_upstream.default({"name": "stall_first_token", "seconds": 30})  # then the whole answer at once
    assert upstream_connections(port) == 0
    before = len(gw.ledger())
    sock = raw_request(gw.url, {"model": "edge-only", "messages": HI, "stream": True})
    assert wait_for(lambda: upstream_connections(port) >= 1)  # the gateway is waiting on the first token
    sock.close()
    assert wait_for(lambda: upstream_connections(port) == 0), "the upstream still holds the connection"
    rows = gw.ledger_after(before)
    assert rows and rows[-1]["status"] == "client_closed" and rows[-1]["http_status"] == 499, rows
    assert rows[-1]["stream"] == 1 and rows[-1]["completion_tokens"] == 0
    assert "Traceback" not in gw.proc.output() and "CancelledError" not in gw.proc.output()
    quiet_upstream.reset()


def test_disconnect_while_waiting_closes_the_upstream_connection(gateways: dict[str, Gateway],
                                                                 quiet_upstream: Upstream) -> None:
    gw = gateways["engines"]
    port = quiet_upstream.proc.port
    quiet_upstream.client.post("/__control/scenarios", json={"delay_ms": 30000}).raise_for_status()
    assert upstream_connections(port) == 0
    sock = raw_request(gw.url, {"model": "edge-only", "messages": HI})
    assert wait_for(lambda: upstream_connections(port) >= 1)  # the gateway is waiting on the upstream
    before = len(gw.ledger())
    sock.close()
    assert wait_for(lambda: upstream_connections(port) == 0), "the upstream still holds the connection"
    rows = gw.ledger_after(before)
    assert rows and rows[-1]["status"] == "client_closed" and rows[-1]["http_status"] == 499
    # the gateway's stderr: a client leaving is an outcome, not a crash (it logged a CancelledError traceback)
    assert "Traceback" not in gw.proc.output() and "CancelledError" not in gw.proc.output()
    quiet_upstream.reset()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks (USER_HZ = 100)


def test_disconnect_stops_the_embedded_model(gateways: dict[str, Gateway]) -> None:
    gw = gateways["engines"]
    max_tokens = 600
    body = {"model": "private", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]}
    sock = raw_request(gw.url, body)
    head = read_until(sock, b'"content"', 5)  # a few tokens in
    request_id = next(ln.split(b":", 1)[1].strip().decode() for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"x-request-id:"))
    sock.close()
    row = ledger_row(gw.db, request_id, timeout=DID_NOT_HANG)
    assert row["status"] == "client_closed" and row["engine"] == "local"
    assert row["completion_tokens"] < max_tokens // 4, row
    # generation stopped: the gateway process is idle, not still decoding for nobody
    pid = gw.proc.pid
    c0 = cpu_seconds(pid)
    time.sleep(1.0)
    assert cpu_seconds(pid) - c0 < 0.3
    # and the model is free for the next request
    resp, _ = post(gw.url, "private")
    assert resp.status_code == 200 and resp.headers["x-turnout-engine"] == "local"
    assert resp.json()["usage"]["completion_tokens"] <= 5


def test_a_stream_whose_client_left_stops_even_when_the_rest_is_buffered() -> None:
    """In process, as Starlette runs it under uvicorn (ASGI 2.3): the client is gone before the
    first event is sent, and the relay never has to wait (the upstream's rest is all buffered),
    so Starlette's cancellation has no pause to land in. The stream stops at the mark the
    disconnect listener leaves on the call: the relay is closed, not drained to nobody."""
    import asyncio

    from turnout.call import Call
    from turnout.protocol import ChatRequest
    from turnout.results import Delta
    from turnout.server.exchange import EventStream, sse

    relayed: list[int] = []
    closed: list[bool] = []

    async def buffered() -> Any:  # never suspends, as a relay over an already-read upstream
        try:
            for i in range(50):
                relayed.append(i)
                yield Delta(content=f"w{i} ")
        finally:
            closed.append(True)

    async def run() -> list[dict[str, Any]]:
        call = Call()
        req = ChatRequest(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:  # uvicorn after a disconnect: returns at once
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST", "headers": []}
        await EventStream(call, sse(call, req, buffered()), {})(scope, receive, send)  # type: ignore[arg-type]
        assert call.client_closed
        return sent

    sent = asyncio.run(run())
    assert closed == [True] and len(relayed) <= 2, relayed  # was: all 50 relayed, then recorded as a whole answer
    assert sum(1 for m in sent if m.get("body")) <= 1
