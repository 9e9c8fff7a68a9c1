"""Mid-stream rescue, failure classes and the circuit over an outage, over real sockets.

One gateway process; the primary ``frontier`` is the loopback OpenAI-wire upstream, which
plays a fault; the engines behind it are a second, healthy upstream process (same
deterministic answer: ``echo: <message>``; ``@diverge`` models answer otherwise) and the
Anthropic fake. No embedded model: every engine here is a loopback fake.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, Upstream, _factory
from tests.test_backpressure import upstream_connections, wait_for
from turnout.config import HedgeConfig, Resilience
from turnout.engines.deadline import MIN_SAMPLES, WINDOW, Deadlines, Spare
from turnout.engines.fallback import splice_point
from turnout.engines.hedge import Hedge
from turnout.engines.resilience import CircuitBreaker
from turnout.testing.procs import Proc, start_server

MESSAGE = "the quick brown fox jumps over the lazy dog again and again"
ANSWER = "echo: " + MESSAGE
HI = [{"role": "user", "content": MESSAGE}]
FAST = {"timeout": 2, "connect_timeout": 1, "first_token_timeout": 1, "idle_timeout": 1, "retries": 1,
        "backoff": 0.01, "max_retry_after": 1, "breaker_failures": 1000, "breaker_cooldown": 30}
CUT = {"name": "reset_midstream", "after_chunks": 5}  # the role chunk and four words, then a TCP RST


def _openai(url: str, model: str, **kw: Any) -> dict[str, Any]:
    return {"dialect": "openai", "locality": "remote", "base_url": url + "/v1", "model": model,
            "resilience": dict(FAST), **kw}


def rescue_config(a: str, b: str, claude: str, lead: str, racer: str) -> dict[str, Any]:
    return {
        "engines": {
            "frontier": _openai(a, "fake-frontier", pricing={"input_per_m": 2.5, "output_per_m": 10.0}),
            "backup": _openai(b, "fake-backup", pricing={"input_per_m": 1.0, "output_per_m": 4.0}),
            "vllm": _openai(b, "fake-vllm", continuation="prefill"),
            "openai-noprefill": _openai(b, "fake-gpt@noprefill", continuation="prefill"),
            "other": _openai(b, "fake-other@diverge"),
            "no-continue": _openai(b, "fake-none", continuation="none"),
            "claude": {"dialect": "anthropic", "locality": "remote", "base_url": claude, "model": "fake-claude",
                       "resilience": dict(FAST)},
            "small": _openai(a, "fake-small", context_window=8000),
            "small-too": _openai(b, "fake-small-too", context_window=8000),
            "large": _openai(b, "fake-large", context_window=200000),
            "lead": _openai(lead, "fake-lead", pricing={"input_per_m": 2.5, "output_per_m": 10.0}),
            "racer": _openai(racer, "fake-racer", pricing={"input_per_m": 1.0, "output_per_m": 4.0}),
            "learner": _openai(a, "fake-learner", resilience={
                **FAST, "first_token_timeout": 5, "fallback_first_token_timeout": 0.5, "ttft_multiple": 4}),
            "flaky": _openai(a, "fake-flaky", resilience={**FAST, "retries": 0, "breaker_failures": 2,
                                                           "breaker_probe": 1.0, "breaker_cooldown": 1.0}),
        },
        "routes": {
            "restart": {"chain": ["frontier", "backup"]},
            "prefill": {"chain": ["frontier", "vllm"]},
            "noprefill": {"chain": ["frontier", "openai-noprefill"]},
            "diverge": {"chain": ["frontier", "other"]},
            "none": {"chain": ["frontier", "no-continue"]},
            "anthropic": {"chain": ["frontier", "claude"]},
            "claude-first": {"chain": ["claude", "backup"]},
            "alone": {"chain": ["frontier"]},
            "context": {"chain": ["small", "small-too", "large"]},
            "context-alone": {"chain": ["small", "small-too"]},
            "outage": {"chain": ["flaky", "backup"]},
            "learn": {"chain": ["learner", "backup"]},
            "hedged": {"chain": ["lead", "racer"], "hedge": {"after": 0.3}},
        },
    }


@pytest.fixture(scope="module")
def second() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-backup") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="module")
def lead() -> Iterator[Upstream]:
    """The hedged route's first engine, alone on its upstream (its connections are counted)."""
    with start_server("turnout.testing.upstream", "--model", "fake-lead") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="module")
def racer() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-racer") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, second: Upstream,
       anthropic_upstream: Upstream, lead: Upstream, racer: Upstream) -> Iterator[Gateway]:
    started: list[Proc] = []
    gateway = _factory(tmp_path_factory.mktemp("rescue"), started)(
        rescue_config(upstream.url, second.url, anthropic_upstream.url, lead.url, racer.url))
    yield gateway
    for proc in started:
        proc.stop()


@pytest.fixture(autouse=True)
def clean(upstream: Upstream, second: Upstream, anthropic_upstream: Upstream) -> Iterator[None]:
    for u in (upstream, second, anthropic_upstream):
        u.reset()
    yield
    for u in (upstream, second, anthropic_upstream):
        u.reset()


def ledger_row(gw: Gateway, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in gw.ledger() if r["request_id"] == request_id]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"no ledger row for {request_id}"
        time.sleep(0.05)


def chats(u: Upstream) -> list[dict[str, Any]]:
    return [r for r in u.requests() if r["path"] in ("/v1/chat/completions", "/v1/messages")]


def stream(gw: Gateway, route: str, **extra: Any) -> tuple[httpx.Headers, list[Any]]:
    body = {"model": route, "messages": HI, "stream": True, **extra}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200, resp.read()
        events: list[Any] = []
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
        return resp.headers, events


def text_of(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events if isinstance(e, dict) and e.get("choices"))


def finish_chunks(events: list[Any]) -> list[dict[str, Any]]:
    return [e for e in events if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]]


# ---------------------------------------------------------------------------- mid-stream rescue

BREAKS = {
    "reset": (CUT, "engine_unavailable"),
    "stall": ({"name": "stall_midstream", "seconds": 3, "after_chunks": 5}, "engine_timeout"),
    "malformed": ({"name": "malformed_sse", "after_chunks": 5}, "upstream_protocol_error"),
    "error_event": ({"name": "error_midstream", "after_chunks": 5}, "upstream_protocol_error"),
    "no_finish": ("no_done", "upstream_protocol_error"),
}


@pytest.mark.parametrize("fault", list(BREAKS))
def test_restart_continues_the_same_answer(gw: Gateway, upstream: Upstream, second: Upstream, fault: str) -> None:
    scenario, code = BREAKS[fault]
    upstream.default(scenario)
    headers, events = stream(gw, "restart")
    assert text_of(events) == ANSWER  # one complete answer, nothing repeated, nothing missing
    assert events[-1] == "[DONE]" and len(finish_chunks(events)) == 1, events
    trailer = finish_chunks(events)[0]["turnout"]
    assert trailer["engines"] == ["frontier", "backup"] and trailer["model"] == "fake-backup"
    (splice,) = trailer["rescues"]
    assert splice["engine"] == "frontier" and splice["error"] == code and splice["rescue"] == "restart"
    assert splice["by"] == "backup" and 0 < splice["after_chars"] <= len(ANSWER)
    models = [e["model"] for e in events if isinstance(e, dict) and e.get("choices")]
    assert models[0] == "fake-frontier" and models[-1] == "fake-backup"  # each chunk names its engine's model
    # the fallback got the original request, without any prefill
    (fresh,) = chats(second)
    assert fresh["body"]["messages"] == HI and "continue_final_message" not in fresh["body"]
    row = ledger_row(gw, headers["x-request-id"])
    assert row["status"] == "ok" and row["engine"] == "backup", row
    (hop,) = json.loads(row["hops"])
    assert hop["engine"] == "frontier" and hop["rescue"] == "restart" and hop["by"] == "backup"
    assert hop["after_chars"] == splice["after_chars"]


def test_rescue_bills_both_engines(gw: Gateway, upstream: Upstream) -> None:
    upstream.default(CUT)
    headers, events = stream(gw, "restart")
    assert text_of(events) == ANSWER
    row = ledger_row(gw, headers["x-request-id"])
    words = len(ANSWER.split())
    # frontier delivered 4 words before the cut (counted per piece), backup answered all of them
    assert row["completion_tokens"] == 4 + words, row
    backup_only = (row["prompt_tokens"] // 2) * 1.0 / 1e6 + words * 4.0 / 1e6
    assert row["cost_usd"] > backup_only, row  # the frontier's part is billed too, at its price


def test_prefill_continues_from_the_text_sent(gw: Gateway, upstream: Upstream, second: Upstream) -> None:
    upstream.default(CUT)
    headers, events = stream(gw, "prefill")
    assert text_of(events) == ANSWER
    (splice,) = finish_chunks(events)[0]["turnout"]["rescues"]
    assert splice["rescue"] == "prefill" and splice["by"] == "vllm"
    (cont,) = chats(second)
    body = cont["body"]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][:-1] == HI and body["messages"][-1]["role"] == "assistant"
    assert body["messages"][-1]["content"] == ANSWER[: splice["after_chars"]]
    assert "turnout.prefill" not in json.dumps(body)  # turnout's marker is never forwarded
    assert ledger_row(gw, headers["x-request-id"])["engine"] == "vllm"


def test_anthropic_prefill(gw: Gateway, upstream: Upstream, anthropic_upstream: Upstream) -> None:
    upstream.default(CUT)
    _, events = stream(gw, "anthropic")
    assert text_of(events) == ANSWER
    (splice,) = finish_chunks(events)[0]["turnout"]["rescues"]
    assert splice["rescue"] == "prefill" and splice["by"] == "claude"
    (cont,) = chats(anthropic_upstream)
    last = cont["body"]["messages"][-1]
    assert last["role"] == "assistant" and last["content"][0]["text"] == ANSWER[: splice["after_chars"]].rstrip()


def test_a_fallback_that_rejects_prefill_restarts(gw: Gateway, upstream: Upstream, second: Upstream) -> None:
    upstream.default(CUT)
    headers, events = stream(gw, "noprefill")
    assert text_of(events) == ANSWER
    (splice,) = finish_chunks(events)[0]["turnout"]["rescues"]
    assert splice["rescue"] == "restart"
    rejected, fresh = chats(second)
    assert rejected["body"]["continue_final_message"] is True and "continue_final_message" not in fresh["body"]
    hops = json.loads(ledger_row(gw, headers["x-request-id"])["hops"])
    assert [h["engine"] for h in hops] == ["frontier", "openai-noprefill"]


def test_a_diverging_restart_ends_with_the_error_event(gw: Gateway, upstream: Upstream, second: Upstream) -> None:
    upstream.default(CUT)
    headers, events = stream(gw, "diverge")
    text = text_of(events)
    assert ANSWER.startswith(text) and 0 < len(text) < len(ANSWER)  # only the primary's part, nothing spliced
    assert "other" not in text
    assert events[-1]["error"]["code"] == "engine_unavailable" and "[DONE]" not in events
    assert finish_chunks(events) == []
    assert len(chats(second)) == 1  # the fallback was asked, and its answer thrown away
    row = ledger_row(gw, headers["x-request-id"])
    assert row["status"] == "error_midstream" and row["engine"] == "frontier", row
    hops = json.loads(row["hops"])
    assert [(h["engine"], h["code"]) for h in hops] == [("frontier", "engine_unavailable"),
                                                        ("other", "rescue_diverged")]
    assert row["cost_usd"] > 0  # the thrown-away answer is still billed


def test_no_continuation_keeps_the_error_event(gw: Gateway, upstream: Upstream, second: Upstream) -> None:
    upstream.default(CUT)
    headers, events = stream(gw, "none")
    assert events[-1]["error"]["code"] == "engine_unavailable" and chats(second) == []
    assert ledger_row(gw, headers["x-request-id"])["status"] == "error_midstream"


def test_json_request_falls_back_whole(gw: Gateway, upstream: Upstream) -> None:
    upstream.default(CUT)
    done = gw.openai(timeout=30).chat.completions.with_raw_response.create(model="restart", messages=HI)
    assert done.parse().choices[0].message.content == ANSWER and done.headers["x-turnout-engine"] == "backup"
    assert done.parse().model == "fake-backup"


# ---------------------------------------------------------------------------- the end marker

@pytest.mark.parametrize("route", ["alone", "restart"])
def test_finish_without_done_marker_is_complete(gw: Gateway, upstream: Upstream, second: Upstream,
                                                route: str) -> None:
    upstream.default("no_done_marker")
    headers, events = stream(gw, route)
    assert text_of(events) == ANSWER and events[-1] == "[DONE]"
    assert finish_chunks(events)[0]["choices"][0]["finish_reason"] == "stop"
    assert "turnout" not in finish_chunks(events)[0] and chats(second) == []
    row = ledger_row(gw, headers["x-request-id"])
    assert row["status"] == "ok" and row["engine"] == "frontier" and row["hops"] == "[]"


# ---------------------------------------------------------------------------- failure classes

@pytest.mark.parametrize("streamed", [False, True])
def test_context_length_exceeded_moves_to_a_larger_window(gw: Gateway, upstream: Upstream, second: Upstream,
                                                          streamed: bool) -> None:
    upstream.default("context_length_exceeded")
    if streamed:
        headers, events = stream(gw, "context")
        assert text_of(events) == ANSWER
    else:
        raw = gw.openai(timeout=30).chat.completions.with_raw_response.create(model="context", messages=HI)
        headers = raw.headers
    assert headers["x-turnout-engine"] == "large"
    assert len(chats(upstream)) == 1  # never resent to the engine that said it was too long
    assert [r["body"]["model"] for r in chats(second)] == ["fake-large"]  # the 8000-token twin was skipped


def test_context_length_exceeded_without_a_larger_engine_is_the_clients_400(gw: Gateway, upstream: Upstream,
                                                                            second: Upstream) -> None:
    upstream.default("context_length_exceeded")
    resp = httpx.post(gw.url + "/v1/chat/completions", json={"model": "context-alone", "messages": HI}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded", resp.text
    assert len(chats(upstream)) == 1 and chats(second) == []


@pytest.mark.parametrize("streamed", [False, True])
def test_content_policy_is_never_routed_around(gw: Gateway, upstream: Upstream, second: Upstream,
                                               streamed: bool) -> None:
    upstream.default("content_policy")
    resp = httpx.post(gw.url + "/v1/chat/completions", json={"model": "restart", "messages": HI, "stream": streamed},
                      timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "content_policy_violation", resp.text
    assert len(chats(upstream)) == 1 and chats(second) == []
    assert ledger_row(gw, resp.headers["x-request-id"])["status"] == "error"


@pytest.mark.parametrize("streamed", [False, True])
def test_anthropic_refusal_is_passed_on(gw: Gateway, anthropic_upstream: Upstream, second: Upstream,
                                        streamed: bool) -> None:
    anthropic_upstream.default("content_policy")
    if streamed:
        headers, events = stream(gw, "claude-first")
        assert finish_chunks(events)[0]["choices"][0]["finish_reason"] == "content_filter" and text_of(events) == ""
    else:
        raw = gw.openai(timeout=30).chat.completions.with_raw_response.create(model="claude-first", messages=HI)
        assert raw.parse().choices[0].finish_reason == "content_filter"
        headers = raw.headers
    assert headers["x-turnout-engine"] == "claude" and chats(second) == []  # not routed around
    assert len(chats(anthropic_upstream)) == 1


def test_a_silent_provider_is_not_retried(gw: Gateway, upstream: Upstream, second: Upstream) -> None:
    upstream.default({"name": "stall_headers", "seconds": 4})
    t0 = time.monotonic()
    headers, events = stream(gw, "restart")
    took = time.monotonic() - t0
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "backup"
    assert len(chats(upstream)) == 1, "a silent engine must not be asked again"
    assert took < 3.5, took  # one first-token timeout (1 s), not two, and not the stall itself


# ---------------------------------------------------------------------------- an outage and the circuit

def test_outage_opens_the_circuit_then_the_primary_is_probed_and_used_again(
        gw: Gateway, upstream: Upstream, second: Upstream) -> None:
    client = gw.openai(timeout=30)

    def ask() -> str:
        raw = client.chat.completions.with_raw_response.create(model="outage", messages=HI)
        assert raw.parse().choices[0].message.content == ANSWER
        return str(raw.headers["x-turnout-engine"])

    upstream.default("503")  # the outage
    assert [ask(), ask()] == ["backup", "backup"]
    assert len(chats(upstream)) == 2  # breaker_failures: 2 -> open
    for _ in range(3):
        assert ask() == "backup"
    assert len(chats(upstream)) == 2, "with the circuit open, the primary is not asked"
    upstream.reset()  # the outage ends
    time.sleep(1.2)  # breaker_probe 1 s (its breaker_cooldown): half-open
    assert ask() == "flaky"  # the probe goes to the primary and succeeds
    assert ask() == "flaky"  # closed again
    assert len(chats(upstream)) == 2


def test_the_first_token_timeout_learns_the_engines_latency(gw: Gateway, upstream: Upstream) -> None:
    """With a spare, an engine first gets fallback_first_token_timeout (0.5 s here); once its times to
    first token are known, ttft_multiple (4) x their p95: a slow engine is waited for as long as it needs."""
    upstream.default({"name": "ok", "delay_ms": 800})
    headers, events = stream(gw, "learn")
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "backup"  # nothing known: cut at 0.5 s
    hops = json.loads(ledger_row(gw, headers["x-request-id"])["hops"])
    assert [(h["engine"], h["code"]) for h in hops] == [("learner", "engine_timeout")]
    upstream.default({"name": "ok", "delay_ms": 300})
    for _ in range(MIN_SAMPLES):
        assert stream(gw, "learn")[0]["x-turnout-engine"] == "learner"
    upstream.default({"name": "ok", "delay_ms": 800})  # 4 x its p95 (about 0.35 s) is about 1.4 s: waited for
    headers, events = stream(gw, "learn")
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "learner"
    assert "x-turnout-fallbacks" not in headers


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_probe_waits_twice_as_long_up_to_the_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, cooldown=1.0, probe=0.25, clock=clock)
    b.failure()
    assert b.allow() and b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow() and b.left() == 0.25
    for wait in (0.25, 0.5, 1.0, 1.0):  # each failed probe doubles the wait, up to the cooldown
        clock.now += wait - 0.01
        assert not b.allow()
        clock.now += 0.01
        assert b.allow(), wait  # the probe
        assert not b.allow()  # one probe at a time: the others are refused
        b.failure(probe=True)
    clock.now += 0.5
    b.failure()  # a request let through before the circuit opened fails late: open again from now, same wait
    assert b.left() == 1.0 and not b.allow()
    clock.now += 1.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()
    b.failure()
    b.failure()  # opened again: the first probe comes after the short interval again
    assert b.left() == 0.25


def test_a_probe_without_a_verdict_lets_the_next_request_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown=1.0, probe=0.25, clock=clock)
    b.failure()
    clock.now += 0.25
    assert b.allow() and not b.allow()
    b.abandon()  # the probe's client left, or the upstream rejected the request as malformed
    assert b.allow()


def test_first_token_timeout_with_and_without_a_spare() -> None:
    d = Deadlines(Resilience())  # the defaults: 30 s alone, 10 s with a spare, 3 x p95 between the two
    alone, spare, mid = Spare(), Spare(first_token=True), Spare(first_token=True, midstream=True)
    assert d.first_token(alone) == 30 and d.first_token(spare) == 10  # nothing known yet
    assert d.idle(alone) == d.idle(spare) == 30 and d.idle(mid) == 10
    for _ in range(MIN_SAMPLES - 1):
        d.ttft.observe(5.0)
    assert d.first_token(spare) == 10  # too few samples yet
    d.ttft.observe(5.0)
    assert d.first_token(spare) == 15 and d.first_token(alone) == 30  # a slow engine is given 3 x its p95
    for _ in range(WINDOW):
        d.ttft.observe(0.2)
    assert d.first_token(spare) == 10  # a fast one: never cut sooner than a careful client would
    for _ in range(WINDOW):
        d.ttft.observe(20.0)
    assert d.first_token(spare) == 30  # never longer than alone
    fixed = Deadlines(Resilience(ttft_multiple=0, first_token_timeout=5, fallback_idle_timeout=60))
    fixed.ttft.observe(20.0)
    assert fixed.first_token(spare) == 5 and fixed.idle(mid) == 30  # never looser than the engine's own


# ---------------------------------------------------------------------------- hedged first token

def test_hedge_the_faster_engine_answers_and_the_slow_one_is_closed(gw: Gateway, lead: Upstream,
                                                                     racer: Upstream) -> None:
    lead.reset()
    racer.reset()
    lead.default({"name": "stall_first_token", "seconds": 5})  # headers, then 5 s of silence
    t0 = time.monotonic()
    headers, events = stream(gw, "hedged")
    took = time.monotonic() - t0
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "racer"
    assert took < 4, took  # not the 5 s stall, nor the first-token timeout plus a fallback
    assert len(chats(lead)) == 1 and len(chats(racer)) == 1
    # the loser's request is cancelled: its connection to the slow upstream is closed
    assert wait_for(lambda: upstream_connections(lead.proc.port) == 0, timeout=3)
    row = ledger_row(gw, headers["x-request-id"])
    assert row["engine"] == "racer" and row["status"] == "ok"
    assert [(h["engine"], h["code"]) for h in json.loads(row["hops"])] == [("lead", "hedge_lost")]
    finish = finish_chunks(events)[0]
    (lost, won) = finish["turnout"]["usage"]["billed"]
    assert (lost["engine"], lost["delivered"], lost["completion_tokens"]) == ("lead", False, 0)
    assert lost["prompt_tokens"] > 0 and won["engine"] == "racer" and won["delivered"]
    # the cancelled request's prompt is billed: in usage (the client's and the ledger's) and in the cost
    assert row["prompt_tokens"] == finish["usage"]["prompt_tokens"] == lost["prompt_tokens"] + won["prompt_tokens"]
    assert row["cost_usd"] == pytest.approx(lost["prompt_tokens"] * 2.5 / 1e6 + won["prompt_tokens"] * 1.0 / 1e6
                                            + won["completion_tokens"] * 4.0 / 1e6)
    lead.reset()


def test_hedge_the_primary_wins_when_it_is_first(gw: Gateway, lead: Upstream, racer: Upstream) -> None:
    lead.reset()
    racer.reset()
    lead.default({"name": "stall_first_token", "seconds": 0.6})
    racer.client.post("/__control/scenarios", json={"delay_ms": 3000}).raise_for_status()
    headers, events = stream(gw, "hedged")
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "lead"
    assert len(chats(racer)) == 1  # the hedge was started, then lost
    assert wait_for(lambda: upstream_connections(racer.proc.port) == 0, timeout=3)
    hops = json.loads(ledger_row(gw, headers["x-request-id"])["hops"])
    assert [(h["engine"], h["code"]) for h in hops] == [("racer", "hedge_lost")]
    racer.reset()


def test_hedge_not_started_for_a_quick_primary(gw: Gateway, lead: Upstream, racer: Upstream) -> None:
    lead.reset()
    racer.reset()
    headers, events = stream(gw, "hedged")
    assert text_of(events) == ANSWER and headers["x-turnout-engine"] == "lead" and chats(racer) == []
    assert "x-turnout-fallbacks" not in headers


def test_hedge_delay_is_the_p95_of_recent_first_tokens() -> None:
    hedge = Hedge(HedgeConfig(after="p95", initial=2.0, min_samples=20, window=100, floor=0.05))
    assert hedge.delay("a") == 2.0  # too few samples yet
    for i in range(100):
        hedge.observe("a", (i + 1) / 100)  # 0.01 .. 1.00 s
    assert hedge.delay("a") == pytest.approx(0.96)
    assert hedge.delay("b") == 2.0  # per engine
    for _ in range(100):
        hedge.observe("a", 0.001)  # the window keeps the recent ones; the floor holds
    assert hedge.delay("a") == 0.05
    assert Hedge(HedgeConfig(after=0.5)).delay("a") == 0.5


# ---------------------------------------------------------------------------- the splice point

@pytest.mark.parametrize(("sent", "fresh", "want"), [
    ("echo: the", "echo: the quick", 9),         # the new part begins after "the"
    ("echo: the ", "echo: the quick", 9),        # trailing space sent: the rest is " quick" (lstripped later)
    ("echo:  the\n", "echo: the", 9),            # whitespace runs compare as one space
    ("ｅcho: the", "echo: the quick", 9),        # NFKC: a full-width letter is the letter
    ("echo: the", "echo: th", -1),               # too short to tell yet
    ("echo: the", "other: the", None),           # diverged
    ("echo: the", "echo: thx", None),
    ("", "anything", 0),
])
def test_splice_point(sent: str, fresh: str, want: int | None) -> None:
    assert splice_point(sent, fresh) == want
