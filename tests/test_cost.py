"""TCO calculator: the worked example, hand-computed crossovers, the CLI, and measuring a real
(loopback) OpenAI-compatible streaming endpoint."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runcli import run_cli as cli
from turnout import cost

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return cli("cost", *args, cwd=ROOT)


# --- the worked example -----------------------------------------------------------------------

def test_worked_example_reproduced_exactly() -> None:
    fl = cost.fleet(cost.EXAMPLE)  # 60M tokens/day, 200 tokens/s, $2.50/hour
    assert fl.tokens_per_accelerator_per_day == 17_280_000  # "17.3M tokens per accelerator per day"
    assert round(fl.accelerators_exact, 2) == 3.47
    assert fl.accelerators == 4  # "four accelerators with margin"
    assert fl.cost_per_day == 240.0  # 4 x $2.50 x 24
    assert fl.cost_per_million == pytest.approx(4.0)  # "about $4 per 1M tokens"
    assert fl.floor_per_million == pytest.approx(60 / 17.28)  # one accelerator fully busy


@pytest.mark.parametrize(("headroom", "accelerators"), [(1.0, 4), (1.15, 4), (1.2, 5), (2.0, 7)])
def test_headroom_rounds_up_whole_accelerators(headroom: float, accelerators: int) -> None:
    # 60M / 17.28M = 3.472; x1.2 = 4.17 -> 5; x2 = 6.94 -> 7
    assert cost.accelerators_needed(60e6, 200, headroom) == accelerators


def test_exact_multiple_is_not_rounded_up_by_float_noise() -> None:
    # 3 accelerators' worth exactly: 3 * 17.28M, no headroom
    assert cost.accelerators_needed(3 * 17_280_000, 200, 1.0) == 3
    assert cost.accelerators_needed(0, 200) == 0


# --- crossover --------------------------------------------------------------------------------

def test_crossover_hand_computed_simple_case() -> None:
    # $1/hour -> d = $24/day; 1000 tokens/s -> 86.4M/day, headroom 1; API $0.50/1M.
    # first crossover: 24 / 0.5 = 48M. k = 0.5 * 86.4 / 24 = 1.8, 1/(k-1) = 1.25 -> one band after
    # the first boundary (86.4M): renting wins again until 2 * 48M = 96M.
    first, always = cost.crossover_volume(1000, 1.0, 0.5, headroom=1.0)
    assert first == pytest.approx(48e6)
    assert always == pytest.approx(96e6)
    own = lambda v: cost.owned_cost_per_day(v, 1000, 1.0, 1.0)
    api = lambda v: cost.api_cost_per_day(v, 0.5)
    assert own(47e6) > api(47e6) and own(49e6) < api(49e6)
    assert own(90e6) > api(90e6)  # 2 accelerators = $48 > $45 rented: the band
    assert all(own(v) <= api(v) for v in range(96_000_000, 2_000_000_000, 1_000_000))


def test_crossover_worked_example_against_five_dollars() -> None:
    # capacity per accelerator with headroom 1.15: 17.28M / 1.15 = 15.026M; d = $60/day; API $5/1M.
    # first = 60 / 5 = 12M. k = 5 * 15.026 / 60 = 1.252 -> bands after boundaries 1..3; last ends at 4 * 12M.
    rep = cost.report(cost.EXAMPLE, price_per_million=5.0)
    c = rep.crossover
    assert c is not None
    assert c.crossover_tokens_per_day == pytest.approx(12e6)
    assert c.owning_always_wins_above == pytest.approx(48e6)
    assert c.api_cost_per_day == pytest.approx(300.0) and c.owning_cheaper
    # brute force agrees: renting wins at 46M (4 accelerators $240 > $230), owning from 48M on
    assert cost.owned_cost_per_day(46e6, 200, 2.5) > cost.api_cost_per_day(46e6, 5.0)
    assert all(cost.owned_cost_per_day(v, 200, 2.5) <= cost.api_cost_per_day(v, 5.0)
               for v in range(48_000_000, 1_000_000_000, 250_000))


def test_no_crossover_when_api_is_below_the_owned_floor() -> None:
    # with headroom the owned floor is 60 / 15.026 = $3.99/1M; at $3/1M renting always wins
    first, always = cost.crossover_volume(200, 2.5, 3.0)
    assert first is None and always is None
    rep = cost.report(cost.EXAMPLE, price_per_million=3.0)
    assert rep.crossover is not None and not rep.crossover.owning_cheaper
    assert rep.notes and "cheaper at every volume" in rep.notes[0]


def test_no_bands_when_api_is_far_above_the_floor() -> None:
    # $10/1M: first = 6M; k = 10 * 15.026 / 60 = 2.5 > 2 -> no band, owning always wins from 6M
    assert cost.crossover_volume(200, 2.5, 10.0) == (pytest.approx(6e6), pytest.approx(6e6))


def test_hybrid_mix_hand_computed() -> None:
    # 20% escalated at $5/1M: local 48M -> 48 * 1.15 / 17.28 = 3.19 -> 4 accelerators = $240; API 12M = $60
    h = cost.hybrid(cost.EXAMPLE, 5.0, 0.2)
    assert (h.accelerators, h.owned_cost_per_day, h.api_cost_per_day) == (4, 240.0, pytest.approx(60.0))
    assert h.cost_per_day == pytest.approx(300.0) and h.cost_per_million == pytest.approx(5.0)
    assert h.all_api_cost_per_day == pytest.approx(300.0)
    assert h.crossover_tokens_per_day == pytest.approx(12e6 / 0.8)  # 15M
    # 50% escalated: local 30M -> 1.997 -> 2 accelerators $120 + 30M x $5 = $150
    h2 = cost.hybrid(cost.EXAMPLE, 5.0, 0.5)
    assert (h2.accelerators, h2.cost_per_day) == (2, pytest.approx(270.0))
    # all escalated is all-API; none escalated is all-owned
    assert cost.hybrid(cost.EXAMPLE, 5.0, 1.0).cost_per_day == pytest.approx(300.0)
    assert cost.hybrid(cost.EXAMPLE, 5.0, 0.0).cost_per_day == 240.0


@pytest.mark.parametrize("kw", [
    {"daily_tokens": -1, "tokens_per_second": 200, "hourly_cost": 2.5},
    {"daily_tokens": 1e6, "tokens_per_second": 0, "hourly_cost": 2.5},
    {"daily_tokens": 1e6, "tokens_per_second": 200, "hourly_cost": -2.5},
    {"daily_tokens": 1e6, "tokens_per_second": 200, "hourly_cost": 2.5, "headroom": 0.9},
    {"daily_tokens": math.inf, "tokens_per_second": 200, "hourly_cost": 2.5},
])
def test_bad_inputs_raise_value_error(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        cost.FleetInputs(**kw)


def test_parse_amount() -> None:
    assert cost.parse_amount("60M") == 60e6
    assert cost.parse_amount("1.5k") == 1500
    assert cost.parse_amount("2e9") == 2e9
    assert cost.parse_amount("1_000") == 1000
    with pytest.raises(ValueError, match="not a number"):
        cost.parse_amount("lots")


# --- CLI --------------------------------------------------------------------------------------

def test_cli_example_text_and_json() -> None:
    text = run_cli("--example")
    assert text.returncode == 0, text.stderr
    assert "17.28M tokens/day" in text.stdout and "-> 4 " in text.stdout and "$240.00/day" in text.stdout
    assert "$4.00" in text.stdout
    out = run_cli("--daily-tokens", "60M", "--tokens-per-second", "200", "--hourly-cost", "2.50",
                  "--api-price", "5", "--escalated-share", "0.2", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fleet"]["accelerators"] == 4
    assert data["fleet"]["cost_per_day"] == 240.0
    assert data["fleet"]["cost_per_million"] == pytest.approx(4.0)
    assert data["crossover"]["crossover_tokens_per_day"] == pytest.approx(12e6)
    assert data["hybrid"]["cost_per_day"] == pytest.approx(300.0)


@pytest.mark.parametrize(("args", "message"), [
    (["--daily-tokens", "-5", "--tokens-per-second", "200", "--hourly-cost", "2"], "daily tokens must be >= 0"),
    (["--daily-tokens", "5M", "--tokens-per-second", "0", "--hourly-cost", "2"], "tokens/s per accelerator"),
    (["--daily-tokens", "lots", "--tokens-per-second", "200", "--hourly-cost", "2"], "--daily-tokens"),
    (["--tokens-per-second", "200"], "missing --daily-tokens"),
    (["--example", "--escalated-share", "1.5", "--api-price", "5"], "escalated share"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    r = run_cli(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    png = tmp_path / "cost.png"
    r = run_cli("--example", "--api-price", "5", "--escalated-share", "0.2", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# --- measuring a real streaming endpoint ------------------------------------------------------

TOKENS_PER_REQUEST = 20
TOKEN_DELAY = 0.005
STREAMS = {"open": 0, "peak": 0}  # concurrent streams the server below has seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sse_server() -> Iterator[str]:
    """A real HTTP server on loopback speaking OpenAI's streaming chat dialect: 20 one-token
    deltas 5 ms apart, then a usage chunk if the client asked for one."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = min(TOKENS_PER_REQUEST, body.get("max_tokens", TOKENS_PER_REQUEST))
        STREAMS["open"] += 1
        STREAMS["peak"] = max(STREAMS["peak"], STREAMS["open"])
        try:
            for i in range(n):
                await asyncio.sleep(TOKEN_DELAY)
                chunk = {"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        finally:
            STREAMS["open"] -= 1
        if (body.get("stream_options") or {}).get("include_usage") and body.get("model") != "no-usage":
            usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": n + 9}}
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    port = _free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}/v1"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_measure_counts_server_reported_tokens_over_wall_time(sse_server: str) -> None:
    STREAMS["peak"] = 0
    m = cost.measure_tokens_per_second(sse_server, "m", concurrency=4, requests=8, max_tokens=64)
    assert (m.succeeded, m.completion_tokens, m.token_source) == (8, 8 * TOKENS_PER_REQUEST, "usage")
    assert m.tokens_per_second == pytest.approx(m.completion_tokens / m.wall_seconds)
    # the streams ran side by side (one after another, the server would have seen one at a time;
    # each lasts >= 100 ms), not a timing: a loaded machine slows them, it cannot serialise them
    assert 2 <= STREAMS["peak"] <= 4
    # 4 streams at most 1 token per 5 ms each: never faster than 800 tokens/s
    assert m.tokens_per_second <= 4 / TOKEN_DELAY * 1.02
    assert m.ttft_p50_seconds is not None and m.ttft_p50_seconds >= TOKEN_DELAY
    assert m.per_stream_tokens_per_second is not None and m.per_stream_tokens_per_second <= 1 / TOKEN_DELAY * 1.05


def test_measure_falls_back_to_counting_chunks(sse_server: str) -> None:
    m = cost.measure_tokens_per_second(sse_server, "no-usage", concurrency=2, requests=2, max_tokens=10)
    assert (m.completion_tokens, m.token_source) == (20, "chunks")


def test_measure_unreachable_endpoint_raises_connection_error() -> None:
    with pytest.raises(ConnectionError, match="no request"):
        cost.measure_tokens_per_second(f"http://127.0.0.1:{_free_port()}/v1", "m", 1, 2, 8)


def test_cli_measure_feeds_the_fleet_model(sse_server: str) -> None:
    r = run_cli("--measure-url", sse_server, "--model", "m", "--concurrency", "2", "--requests", "4",
                "--daily-tokens", "60M", "--hourly-cost", "2.5", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    measured = data["measurement"]["tokens_per_second"]
    assert data["measurement"]["completion_tokens"] == 4 * TOKENS_PER_REQUEST
    assert data["fleet"]["inputs"]["tokens_per_second"] == measured
    assert data["fleet"]["accelerators"] == cost.accelerators_needed(60e6, measured)
    bad = run_cli("--measure-url", f"http://127.0.0.1:{_free_port()}/v1", "--model", "m", "--requests", "1")
    assert bad.returncode == 1 and "measurement failed" in bad.stderr
