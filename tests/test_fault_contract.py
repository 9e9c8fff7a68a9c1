"""The reliability contract (turnout/testing/contract.py), row by row, over real sockets.

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
from turnout.testing.contract import ALONE, RESCUE, ROWS, WITH_FALLBACK, Outcome, Row
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


def test_gateway_stayed_healthy(gw: Gateway) -> None:
    """After every fault, the gateway still answers, and it logged no traceback."""
    done = gw.openai(timeout=30).chat.completions.create(model=ALONE, messages=HI)
    assert done.choices[0].message.content == ANSWER
    assert "Traceback" not in gw.proc.output()


def test_docs_table_is_generated_from_the_contract() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
    assert doc.read_text(encoding="utf-8") == contract.markdown(), (
        "docs/reliability.md is out of date: python -m turnout.testing.contract --markdown > docs/reliability.md")
