"""The reliability contract (turnout/testing/contract.py), row by row and promise by promise,
over real sockets.

One gateway process for the module, configured by ``contract.contract_config``: routes
``auto`` = [frontier, local], ``remote-only`` = [frontier] and ``rescue`` = [frontier, backup];
the frontier engine is the loopback OpenAI-wire upstream, which plays each row's fault, and
backup a second, healthy one. Each row is checked on the three routes: the client's view (status,
error code, Retry-After, the stream's events), how many
requests reached the upstream, and the ledger row (status, engine, hops).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, Upstream, _factory
from turnout.testing import contract
from turnout.testing.contract import (
    ALONE,
    DEFAULTS,
    HEDGED,
    PROMISES,
    RECOVERY,
    RESCUE,
    ROWS,
    WITH_FALLBACK,
    Outcome,
    Promise,
    Row,
)
from turnout.testing.procs import Proc, start_server

HI = [{"role": "user", "content": "hello there"}]
ANSWER = "echo: hello there"
MAX_TOKENS = 3  # the upstream's answer is 3 words; the local fallback stays quick


@pytest.fixture(scope="module")
def backup() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-backup") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, backup: Upstream) -> Iterator[Gateway]:
    started: list[Proc] = []
    gateway = _factory(tmp_path_factory.mktemp("contract"), started)(
        contract.contract_config(upstream.url, backup.url))
    yield gateway
    for proc in started:
        proc.stop()


def ledger_row(gw: Gateway, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The row of one request; a stream's row is committed as the stream ends, so wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(gw.db)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        finally:
            conn.close()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"no ledger row for {request_id}"
        time.sleep(0.05)


def check_ledger(gw: Gateway, request_id: str, want: Outcome) -> None:
    row = ledger_row(gw, request_id)
    assert row["status"] == want.ledger, row
    assert row["engine"] == want.engine, row
    assert row["http_status"] == (want.http if not want.midstream else row["http_status"]), row
    assert tuple(h["engine"] for h in json.loads(row["hops"])) == want.hops, row
    if want.ledger == "ok":
        assert row["completion_tokens"] > 0 and row["error"] is None
    if want.rescue:
        splice = json.loads(row["hops"])[0]
        assert splice["rescue"] == want.rescue and splice["by"] == want.engine and splice["after_chars"] > 0, row


def play_json(gw: Gateway, route: str, want: Outcome) -> None:
    client = gw.openai(timeout=30)
    try:
        raw = client.chat.completions.with_raw_response.create(model=route, messages=HI, max_tokens=MAX_TOKENS)
    except openai.APIStatusError as exc:
        assert exc.status_code == want.http, exc.body
        headers = exc.response.headers
        assert exc.body["code"] == want.code and exc.body["message"], exc.body
        for engine in want.hops if want.code == "all_engines_failed" else ():
            assert f"{engine}:" in exc.body["message"]
    else:
        assert raw.status_code == want.http == 200
        headers = raw.headers
        done = raw.parse()
        assert headers["x-turnout-engine"] == want.engine
        assert done.choices[0].finish_reason in ("stop", "length")
        text = done.choices[0].message.content
        assert text == ANSWER if want.engine in ("frontier", "backup") else text
        assert done.model == f"fake-{want.engine}" if want.engine != "local" else done.model
    assert ("retry-after" in headers) == want.retry_after, dict(headers)
    check_ledger(gw, headers["x-request-id"], want)


def sse_data(resp: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            out.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def play_stream(gw: Gateway, route: str, want: Outcome) -> None:
    body = {"model": route, "messages": HI, "max_tokens": MAX_TOKENS, "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        headers = resp.headers
        assert resp.status_code == want.http, resp.read()
        if want.http != 200:
            err = json.loads(resp.read())["error"]
            assert err["code"] == want.code, err
            assert ("retry-after" in headers) == want.retry_after, dict(headers)
            check_ledger(gw, headers["x-request-id"], want)
            return
        events = sse_data(resp)
    assert headers["content-type"].startswith("text/event-stream")
    # the headers go out with the first token: they name the engine that began the answer
    assert headers["x-turnout-engine"] == ("frontier" if want.rescue or want.midstream else want.engine)
    chunks = [e for e in events if isinstance(e, dict) and "choices" in e]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    if want.midstream:
        # the first tokens arrived, then an error event; nothing claims the answer was whole
        assert text.startswith("echo:"), events
        assert isinstance(events[-1], dict) and events[-1]["error"]["code"] == want.code, events[-1]
        assert "[DONE]" not in events and finishes == [], events
    else:
        assert events[-1] == "[DONE]" and len(finishes) == 1, events
        assert text == ANSWER if want.engine in ("frontier", "backup") else text
        trailer = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]).get("turnout")
        if want.rescue:  # one answer, spliced where the frontier broke; the trailer says so
            assert trailer["engines"] == [*want.hops, want.engine], trailer
            assert [(r["engine"], r["rescue"], r["by"]) for r in trailer["rescues"]] == [
                (want.hops[0], want.rescue, want.engine)], trailer
        else:
            assert trailer is None, trailer
    check_ledger(gw, headers["x-request-id"], want)


def play_stream_sdk(gw: Gateway, route: str, want: Outcome) -> None:
    """The official client sees a mid-stream failure as an exception, never as a normal end."""
    raw = gw.openai(timeout=30).chat.completions.with_raw_response.create(
        model=route, messages=HI, max_tokens=MAX_TOKENS, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "".join(got).startswith("echo:")
    check_ledger(gw, raw.headers["x-request-id"], want)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
@pytest.mark.parametrize("route", [WITH_FALLBACK, ALONE, RESCUE])
def test_contract_row(gw: Gateway, upstream: Upstream, backup: Upstream, row: Row, route: str) -> None:
    want = {WITH_FALLBACK: row.with_fallback, ALONE: row.alone, RESCUE: row.rescued}[route]
    upstream.reset()
    backup.reset()
    if row.every_attempt:
        upstream.default(row.scenario)
    else:
        upstream.queue(row.scenario)
    try:
        for _ in range(row.requests):
            if not row.stream:
                play_json(gw, route, want)
            elif want.midstream and route == ALONE:
                play_stream_sdk(gw, route, want)
            else:
                play_stream(gw, route, want)
        attempts = [r for r in upstream.requests() if r["path"] == "/v1/chat/completions"]
        assert len(attempts) == row.attempts, [r["scenario"] for r in attempts]
    finally:
        upstream.reset()


# ---------------------------------------------------------------------------- timing, recovery, usage

def stream_events(gw: Gateway, route: str) -> tuple[httpx.Headers, list[Any]]:
    body = {"model": route, "messages": HI, "max_tokens": MAX_TOKENS, "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        return resp.headers, sse_data(resp)


def finished(events: list[Any]) -> dict[str, Any]:
    """The one finish chunk of a whole answer (after it, only ``[DONE]``)."""
    assert events[-1] == "[DONE]", events
    (chunk,) = [e for e in events if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]]
    return chunk


def text_of(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events if isinstance(e, dict) and e.get("choices"))


def slow_first_token_defaults(gw: Gateway, upstream: Upstream, backup: Upstream) -> None:
    upstream.default({"name": "stall_first_token", "seconds": 20})
    t0 = time.monotonic()
    headers, events = stream_events(gw, DEFAULTS)
    took = time.monotonic() - t0
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "backup"
    assert 9.5 < took < 12, took  # the 10 s first-token timeout with a spare, not the 20 s stall nor 30 s
    row = ledger_row(gw, headers["x-request-id"])
    assert [(h["engine"], h["code"]) for h in json.loads(row["hops"])] == [("patient", "engine_timeout")], row


def stall_midstream_defaults(gw: Gateway, upstream: Upstream, backup: Upstream) -> None:
    upstream.default({"name": "stall_midstream", "seconds": 40})
    t0 = time.monotonic()
    headers, events = stream_events(gw, DEFAULTS)
    took = time.monotonic() - t0
    assert text_of(events) == ANSWER and 9.5 < took < 12, (took, events)
    (splice,) = finished(events)["turnout"]["rescues"]
    assert (splice["engine"], splice["error"], splice["by"]) == ("patient", "engine_timeout", "backup")
    assert ledger_row(gw, headers["x-request-id"])["engine"] == "backup"


def probe_after_recovery(gw: Gateway, upstream: Upstream, backup: Upstream) -> None:
    client = gw.openai(timeout=30)

    def ask() -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(model=RECOVERY, messages=HI, max_tokens=MAX_TOKENS)
        assert raw.parse().choices[0].message.content == ANSWER
        return str(raw.headers["x-turnout-engine"]), str(raw.headers["x-request-id"])

    def asked() -> int:
        return len([r for r in upstream.requests() if r["path"] == "/v1/chat/completions"])

    upstream.default("503")  # the outage: two failures (a request and its retry) open the circuit
    outage: list[str] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        engine, rid = ask()
        assert engine == "backup"
        outage.append(rid)
        time.sleep(0.05)
    probes = asked() - 2
    assert 1 <= probes <= 6 < len(outage), (probes, len(outage))  # probes only, not every request
    hops = [json.loads(ledger_row(gw, rid)["hops"]) for rid in outage[1:]]
    assert all([h["code"] for h in hop] == ["circuit_open"] for hop in hops), hops
    refused = [hop[0]["attempts"] for hop in hops]
    assert [] in refused  # refused outright: no attempt of its own
    failed = [a for a in refused if a]  # a probe's 503, then its retry refused by the reopened circuit
    assert len(failed) == probes and all(len(a) == 1 and "503" in a[0]["error"] for a in failed), refused
    upstream.reset()  # the outage ends
    recovered = time.monotonic()
    while ask()[0] != "flaky":
        assert time.monotonic() - recovered < 5, "traffic never came back to the recovered engine"
        time.sleep(0.05)
    assert time.monotonic() - recovered < 1.5  # breaker_cooldown (1 s) at most, plus a request
    assert ask()[0] == "flaky"  # closed again


def billed(row: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    """The client's usage is the ledger's; the ``turnout.usage`` split sums to it."""
    usage, split = chunk["usage"], chunk["turnout"]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (row["prompt_tokens"], row["completion_tokens"])
    for kind in ("prompt_tokens", "completion_tokens"):
        assert usage[kind] == sum(b[kind] for b in split["billed"])
        assert split["discarded"][kind] == sum(b[kind] for b in split["billed"] if not b["delivered"])
    return dict(split)


def usage_after_rescue(gw: Gateway, upstream: Upstream, backup: Upstream) -> None:
    upstream.default("reset_midstream")
    headers, events = stream_events(gw, RESCUE)
    assert text_of(events) == ANSWER
    chunk = finished(events)
    split = billed(ledger_row(gw, headers["x-request-id"]), chunk)
    assert [(b["engine"], b["delivered"]) for b in split["billed"]] == [("frontier", True), ("backup", True)]
    part, fresh = (b["completion_tokens"] for b in split["billed"])
    assert part > 0 and fresh > 0 and chunk["usage"]["completion_tokens"] == part + fresh  # not the last engine's


def usage_after_hedge(gw: Gateway, upstream: Upstream, backup: Upstream) -> None:
    upstream.default({"name": "stall_first_token", "seconds": 5})
    headers, events = stream_events(gw, HEDGED)
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "backup"
    chunk = finished(events)
    split = billed(ledger_row(gw, headers["x-request-id"]), chunk)
    assert [(b["engine"], b["delivered"]) for b in split["billed"]] == [("frontier", False), ("backup", True)]
    assert split["discarded"]["prompt_tokens"] > 0 and split["discarded"]["completion_tokens"] == 0


PLAYS = {"slow-first-token-defaults": slow_first_token_defaults, "stall-midstream-defaults": stall_midstream_defaults,
         "probe-after-recovery": probe_after_recovery, "usage-after-rescue": usage_after_rescue,
         "usage-after-hedge": usage_after_hedge}


@pytest.mark.parametrize("promise", PROMISES, ids=[p.id for p in PROMISES])
def test_promise(gw: Gateway, upstream: Upstream, backup: Upstream, promise: Promise) -> None:
    upstream.reset()
    backup.reset()
    try:
        PLAYS[promise.id](gw, upstream, backup)
    finally:
        upstream.reset()


def test_every_promise_is_played() -> None:
    assert set(PLAYS) == {p.id for p in PROMISES}


def test_gateway_stayed_healthy(gw: Gateway) -> None:
    """After every fault, the gateway still answers, and it logged no traceback."""
    done = gw.openai(timeout=30).chat.completions.create(model=ALONE, messages=HI)
    assert done.choices[0].message.content == ANSWER
    assert "Traceback" not in gw.proc.output()


def test_docs_table_is_generated_from_the_contract() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
    assert doc.read_text(encoding="utf-8") == contract.markdown(), (
        "docs/reliability.md is out of date: python -m turnout.testing.contract --markdown > docs/reliability.md")
