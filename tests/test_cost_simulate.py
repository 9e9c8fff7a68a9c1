"""`turnout cost simulate` (turnout/cost_sim.py): the simulator against closed-form queueing results,
its response to fewer replicas, determinism per seed, the pool's own balance strategies, its refusals,
and the command line (spec files, a turnout.yaml's pool and prices, a real gateway's ledger)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream
from tests.runcli import run_cli
from turnout import cost_sim
from turnout.cost_sim import SimSpecError, parse_spec, simulate

ROOT = Path(__file__).resolve().parents[1]


def spec(**over: Any) -> dict[str, Any]:
    """One replica serving single-turn requests in exactly 1 s (10 answer tokens at 10 tokens/s, a
    prompt of 1 token at a prefill too fast to matter), Poisson arrivals at 0.5/s: M/D/1 at rho 0.5."""
    base: dict[str, Any] = {
        "seed": 0, "duration_s": 200_000, "arrivals": {"rate": 0.5},
        "lengths": {"user": {"fixed": 1}, "answer": {"fixed": 10}},
        "replica": {"prefill_tps": 1e9, "decode_tps": 10, "slots": 1, "max_concurrency": 100_000},
        "replicas": [1]}
    for key, value in over.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_cli("cost", "simulate", *args, cwd=cwd)


# --- closed forms -------------------------------------------------------------------------------

def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    (r,) = simulate(parse_spec(spec()))
    lam, s = 0.5, 1.0
    rho = lam * s
    expected = rho * s / (2 * (1 - rho))  # M/D/1: Wq = rho S / (2 (1 - rho)) = 0.5 s
    assert r.queue_mean_s == pytest.approx(expected, rel=0.08)
    assert r.utilisation == pytest.approx(rho, rel=0.03)
    assert r.requests == pytest.approx(lam * 200_000, rel=0.02)
    assert r.spilled == r.refused == 0


def test_mg1_mean_wait_with_an_empirical_service_distribution() -> None:
    # answers of 2, 2, 2 or 34 tokens at 10 tokens/s: E[S] = 1.0 s, E[S^2] = (3 x 0.04 + 11.56) / 4 = 2.92
    (r,) = simulate(parse_spec(spec(lengths={"answer": {"samples": [2, 2, 2, 34]}})))
    expected = 0.5 * 2.92 / (2 * (1 - 0.5))  # P-K: Wq = lambda E[S^2] / (2 (1 - rho)) = 1.46 s
    assert r.queue_mean_s == pytest.approx(expected, rel=0.08)
    # the variance alone nearly triples the wait of the deterministic case at the same load
    (d,) = simulate(parse_spec(spec()))
    assert d.queue_mean_s is not None and r.queue_mean_s is not None and r.queue_mean_s > 2.5 * d.queue_mean_s


def test_closed_loop_of_one_client_never_queues_and_is_exact() -> None:
    # one client, 5 conversations of 3 turns: prefill 100 tokens/s, decode 10 tokens/s, 0.5 s overhead
    s = parse_spec({
        "arrivals": {"clients": 1, "conversations": 5}, "conversation": {"turns": 3, "system_tokens": 50},
        "lengths": {"user": {"fixed": 20}, "answer": {"fixed": 10}},
        "replica": {"prefill_tps": 100, "decode_tps": 10, "slots": 1, "overhead_s": 0.5, "cache": False},
        "replicas": [1]})
    (r,) = simulate(s)
    assert r.requests == 15 and r.queue_p99_s == 0
    # turn k's prompt: 50 + 30 (k - 1) + 20 -> 70, 100, 130 tokens; TTFT = 0.5 + prompt / 100 + 1 / 10
    assert r.ttft_p50_s == pytest.approx(0.5 + 1.0 + 0.1)
    assert r.ttft_p99_s == pytest.approx(0.5 + 1.3 + 0.1)
    assert r.prompt_tokens == r.prompt_tokens_evaluated == 5 * (70 + 100 + 130)
    assert r.simulated_s == pytest.approx(5 * (3 * 0.5 + 3.0 + 3 * 1.0))  # overheads, prefills, answers
    assert r.utilisation == pytest.approx(1.0)


def test_turns_may_have_their_own_message_lengths() -> None:
    s = parse_spec({
        "arrivals": {"clients": 1, "conversations": 2}, "conversation": {"turns": 3},
        "lengths": {"user": {"fixed": 5}, "answer": {"fixed": 10}, "by_turn": [{"fixed": 100}, {"fixed": 40}]},
        "replica": {"prefill_tps": 100, "decode_tps": 10, "cache": False}, "replicas": [1]})
    (r,) = simulate(s)
    # prompts: 100; 100 + 10 + 40 = 150; 150 + 10 + 5 (turn 3 takes user) = 165
    assert r.prompt_tokens == 2 * (100 + 150 + 165)


def test_the_cache_evaluates_only_the_new_part_of_a_conversation() -> None:
    base = {"arrivals": {"clients": 1, "conversations": 5}, "conversation": {"turns": 3, "system_tokens": 50},
            "lengths": {"user": {"fixed": 20}, "answer": {"fixed": 10}},
            "replica": {"prefill_tps": 100, "decode_tps": 10, "slots": 1, "cache": True}, "replicas": [1]}
    (r,) = simulate(parse_spec(base))
    # first conversation: 70 (all), then 20 + ... : turn 2 reuses 80 of 100, turn 3 reuses 110 of 130 -> 70 + 20 + 20;
    # the next conversations find the system prompt: 20 + 20 + 20
    assert r.prompt_tokens_evaluated == (70 + 20 + 20) + 4 * (20 + 20 + 20)


# --- sizing -------------------------------------------------------------------------------------

def example(**over: Any) -> cost_sim.SimSpec:
    data = json.loads(json.dumps(cost_sim.EXAMPLE))
    data.update(duration_s=3600, replicas=[1, 2, 4, 12])
    data["arrivals"]["start_hour"] = 9  # office hours: the peak of the daily curve
    data.update(over)
    return parse_spec(data)


def test_spill_rises_as_replicas_fall_and_the_bill_follows() -> None:
    results = simulate(example())
    spills = [r.spill_rate for r in results]
    assert spills == sorted(spills, reverse=True)
    assert spills[0] > 0.5 and spills[-1] < 0.01
    by_n = {r.replicas: r for r in results}
    assert by_n[1].spill_cost > by_n[2].spill_cost > by_n[12].spill_cost
    assert by_n[12].local_cost == pytest.approx(12 * 2.5, rel=0.01)  # owned: paid busy or idle
    # every request is answered (locally or by the frontier): the same workload at each count
    assert len({r.requests for r in results}) == 1 and all(r.refused == 0 for r in results)
    assert by_n[12].utilisation < by_n[4].utilisation < by_n[2].utilisation


def test_without_spill_a_short_fleet_queues_instead() -> None:
    data = json.loads(json.dumps(cost_sim.EXAMPLE))
    data["pool"]["spill"] = False
    data.update(duration_s=3600, replicas=[3, 12])
    data["arrivals"]["start_hour"] = 10
    short, ample = simulate(parse_spec(data))
    assert short.spilled == ample.spilled == 0
    assert short.refused > 0 and ample.refused == 0  # waited max_wait_s in the gateway for a free replica
    assert short.queue_p99_s is not None and ample.queue_p99_s is not None
    assert short.queue_p99_s > 10 * max(ample.queue_p99_s, 0.01)
    assert short.ttft_p99_s is not None and ample.ttft_p99_s is not None and short.ttft_p99_s > ample.ttft_p99_s


def test_servers_that_publish_their_queue_saturate_at_the_queue_threshold() -> None:
    # rho 0.9 on one replica with room for 1000 requests: only the server's queue reading can saturate it
    s = spec(duration_s=20_000, arrivals={"rate": 0.9}, pool={"spill": True, "queue_threshold": 2})
    (blind,) = simulate(parse_spec(s))
    (published,) = simulate(parse_spec({**s, "pool": {"spill": True, "queue_threshold": 2, "server_metrics": True}}))
    assert blind.spilled == 0
    assert published.spilled > 0.05 * published.requests
    assert published.queue_p99_s is not None and blind.queue_p99_s is not None
    assert published.queue_p99_s <= 2.0 + 1e-9 < blind.queue_p99_s  # at most 2 waiting 1 s answers ahead


def test_bursts_and_the_daily_curve_shape_the_arrivals() -> None:
    flat = parse_spec(spec(duration_s=86_400, arrivals={"rate": 0.2}))
    night = [1.0] * 12 + [0.0] * 12
    curved = parse_spec(spec(duration_s=43_200, arrivals={"rate": 0.2, "hourly": night}))
    late = parse_spec(spec(duration_s=43_200, arrivals={"rate": 0.2, "hourly": night, "start_hour": 12}))
    (f,), (c,), (n,) = simulate(flat), simulate(curved), simulate(late)
    assert f.requests == pytest.approx(0.2 * 86_400, rel=0.03)
    assert c.requests == pytest.approx(2 * 0.2 * 43_200, rel=0.03)  # the day's traffic in its first half
    assert n.requests == 0  # hours 12-23 have none
    bursty = parse_spec(spec(duration_s=86_400, arrivals={"rate": 0.2, "burst": {"factor": 4, "every_s": 3600,
                                                                                  "length_s": 600}}))
    (b,) = simulate(bursty)
    assert b.requests > 1.3 * f.requests  # bursts add traffic on top of the curve
    assert b.queue_p99_s is not None and f.queue_p99_s is not None and b.queue_p99_s > f.queue_p99_s


def test_daily_tokens_set_the_rate() -> None:
    s = parse_spec(spec(arrivals={"rate": None, "daily_tokens": 864_000}, duration_s=86_400))
    assert s.conversation_rate() == pytest.approx(1.0)  # 864k tokens / 86,400 s / 10 tokens per answer
    (r,) = simulate(s)
    assert r.output_tokens == pytest.approx(864_000, rel=0.03)


# --- determinism --------------------------------------------------------------------------------

def test_a_seed_gives_the_same_figures_and_another_seed_others() -> None:
    a = [r.to_dict() for r in simulate(example(seed=7, duration_s=900, replicas=[2, 4]))]
    b = [r.to_dict() for r in simulate(example(seed=7, duration_s=900, replicas=[2, 4]))]
    c = [r.to_dict() for r in simulate(example(seed=8, duration_s=900, replicas=[2, 4]))]
    assert a == b
    assert a != c


def test_p2c_is_deterministic_per_seed() -> None:
    s = spec(duration_s=3600, arrivals={"rate": 3}, pool={"balance": "p2c"}, replicas=[3])
    assert simulate(parse_spec(s))[0] == simulate(parse_spec(s))[0]


# --- the pool's own strategies ------------------------------------------------------------------

def conversations(balance: str, **options: Any) -> cost_sim.SimResult:
    return simulate(parse_spec({
        "arrivals": {"clients": 6, "conversations": 30}, "conversation": {"turns": 4, "system_tokens": 200},
        "lengths": {"user": {"mean": 60, "cv": 0.5}, "answer": {"fixed": 20}},
        "replica": {"prefill_tps": 200, "decode_tps": 20, "slots": 1, "max_concurrency": 4, "cache_conversations": 4},
        "pool": {"balance": balance, "options": options}, "replicas": [3]}))[0]


def test_prefix_placement_reuses_more_than_round_robin() -> None:
    rr, prefix = conversations("round_robin"), conversations("prefix", load_slack=1)
    assert rr.prompt_tokens == prefix.prompt_tokens
    assert prefix.prompt_tokens_evaluated < 0.7 * rr.prompt_tokens_evaluated
    assert prefix.ttft_p50_s is not None and rr.ttft_p50_s is not None and prefix.ttft_p50_s < rr.ttft_p50_s


def test_round_robin_spreads_evenly_and_least_outstanding_follows_load() -> None:
    # one long request in ten: round-robin keeps sending a replica its share behind a long one
    s = spec(duration_s=20_000, arrivals={"rate": 1.2}, lengths={"answer": {"samples": [5] * 9 + [60]}},
             replicas=[3])
    rr = simulate(parse_spec(s))[0]
    lo = simulate(parse_spec({**s, "pool": {"balance": "least_outstanding"}}))[0]
    assert lo.queue_mean_s is not None and rr.queue_mean_s is not None and lo.queue_mean_s < 0.8 * rr.queue_mean_s


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "message"), [
    (spec(lengths={"answer": {"fixed": 10, "mean": 5}}), "exactly one of fixed, mean"),
    (spec(arrivals={"hourly": [1.0] * 23}), "arrivals.hourly"),
    (spec(arrivals={"hourly": [0.0] * 24}), "not all 0"),
    (spec(arrivals={"rate": None, "clients": 2}), "clients needs conversations"),
    (spec(arrivals={"rate": None}), "give one of rate, daily_tokens"),
    (spec(arrivals={"clients": 2, "conversations": 3}), "excludes rate"),
    (spec(replica={"decode_tps": 0}), "replica.decode_tps"),
    (spec(replicas=[0, 2]), "counts from 1"),
    (spec(replica={"speed": 3}), "replica.speed"),
    ([1, 2], "must be a mapping"),
    (spec(arrivals={"rate": 1e6}, duration_s=86_400), "more than the"),
])
def test_bad_specs_are_refused_with_what_is_wrong(data: Any, message: str) -> None:
    with pytest.raises(SimSpecError, match=message):
        parse_spec(data)


def test_an_unknown_balance_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        simulate(parse_spec(spec(pool={"balance": "nope"})))


# --- the command line ---------------------------------------------------------------------------

def test_cli_example_table_and_json() -> None:
    out = cli("--example", "--replicas", "3-4", "--duration", "3600")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 3 ") or line.startswith("| 4 ")]
    assert len(rows) == 2 and "balance least_outstanding" in out.stdout
    js = cli("--example", "--replicas", "3,4", "--duration", "3600", "--json")
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert [r["replicas"] for r in doc["results"]] == [3, 4]
    assert doc["spec"]["replica"]["hourly_cost"] == 2.5
    for r in doc["results"]:
        assert r["cost_per_million"] == pytest.approx((r["local_cost"] + r["spill_cost"]) * 1e6 / r["output_tokens"])


def test_cli_spec_file_and_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(spec(duration_s=2000)))
    base = json.loads(cli("--spec", str(path), "--json").stdout)["results"][0]
    faster = json.loads(cli("--spec", str(path), "--decode-tps", "20", "--json").stdout)["results"][0]
    assert faster["utilisation"] == pytest.approx(base["utilisation"] / 2, rel=0.01)
    assert faster["queue_mean_s"] < base["queue_mean_s"]
    two = json.loads(cli("--spec", str(path), "--replicas", "2", "--seed", "3", "--json").stdout)
    assert two["spec"]["seed"] == 3 and two["results"][0]["replicas"] == 2


def test_cli_takes_the_pool_prices_and_spill_from_a_turnout_config(tmp_path: Path) -> None:
    cfg = {"engines": {
        "local": {"dialect": "openai", "locality": "local", "model": "m", "balance": "p2c",
                  "pricing": {"hourly_cost": 10.0},
                  "endpoints": [{"url": f"http://127.0.0.1:{9100 + i}/v1", "max_concurrency": 3} for i in range(4)],
                  "pool": {"queue_threshold": 1, "server_metrics": "none"}},
        "frontier": {"dialect": "openai", "locality": "remote", "base_url": "http://127.0.0.1:9/v1", "model": "f",
                     "pricing": {"input_per_m": 1.0, "output_per_m": 4.0}}},
        "routes": {"auto": {"chain": ["local", "frontier"], "spill": True}, "private": {"chain": ["local"]}}}
    (tmp_path / "turnout.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(spec(duration_s=3600, arrivals={"rate": 4})))
    out = cli("--spec", "fleet.yaml", "--config", "turnout.yaml", "--replicas", "1", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["spec"]["pool"]["balance"] == "p2c" and doc["spec"]["pool"]["spill"] is True
    assert doc["spec"]["replica"]["hourly_cost"] == 2.5  # the pool's $10/hour over its four endpoints
    assert doc["spec"]["replica"]["max_concurrency"] == 3
    r = doc["results"][0]
    assert r["spilled"] > 0  # 4 requests/s of 1 s each on one replica holding 3
    assert r["spill_cost"] > 0 and r["local_cost"] == pytest.approx(2.5, rel=0.01)
    private = json.loads(cli("--spec", "fleet.yaml", "--config", "turnout.yaml", "--route", "private",
                             "--replicas", "1", "--duration", "600", "--json", cwd=tmp_path).stdout)
    assert private["spec"]["pool"]["spill"] is False and private["results"][0]["spilled"] == 0
    bad = cli("--spec", "fleet.yaml", "--config", "turnout.yaml", "--route", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "no such route" in bad.stderr


@pytest.mark.parametrize(("args", "message"), [
    ((), "give one of --spec FILE and --example"),
    (("--example", "--spec", "x.yaml"), "give one of --spec FILE and --example"),
    (("--spec", "missing.yaml"), "no such file"),
    (("--example", "--replicas", "3-1"), "--replicas"),
    (("--example", "--replicas", "two"), "--replicas"),
    (("--example", "--balance", "nope"), "nope"),
    (("--example", "--slots", "0"), "replica.slots"),
    (("--example", "--route", "auto"), "--route needs --config"),
    (("--example", "--from-ledger", "missing.sqlite"), "no such file"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_cli_refuses_a_spec_that_is_not_a_mapping_or_not_yaml(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("arrivals: {rate: [\n")
    (tmp_path / "not-a-ledger.sqlite").write_text("hello")
    for args, message in ((("--spec", "list.yaml"), "must be a mapping"), (("--spec", "broken.yaml"), "not YAML"),
                          (("--example", "--from-ledger", "not-a-ledger.sqlite"), "not a turnout ledger")):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_cli_lengths_from_a_real_gateway_ledger(gateway_factory: Any, upstream: Upstream, tmp_path: Path) -> None:
    gw: Gateway = gateway_factory({
        "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                                 "model": "fake-frontier", "api_key_env": "TURNOUT_TEST_FRONTIER_KEY",
                                 "resilience": dict(FAST_RESILIENCE)}},
        "routes": {"auto": {"chain": ["frontier"]}}, "guards": {"enabled": False}})
    for text in ("hello", "a somewhat longer question about the weather in Lisbon today", "x " * 200):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                       json={"model": "auto", "messages": [{"role": "user", "content": text}]})
        assert r.status_code == 200, r.text
    rows = gw.ledger_after(2)
    assert rows
    lengths = cost_sim.lengths_from_ledger(gw.db)
    assert lengths.user.samples is not None and lengths.answer.samples is not None
    ledger = gw.ledger()
    assert sorted(lengths.user.samples) == sorted(r["prompt_tokens"] for r in ledger)
    assert sorted(lengths.answer.samples) == sorted(r["completion_tokens"] for r in ledger)
    out = cli("--example", "--from-ledger", str(gw.db), "--replicas", "1", "--duration", "600", "--json",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert sorted(doc["spec"]["lengths"]["user"]["samples"]) == sorted(lengths.user.samples)
    assert doc["spec"]["conversation"]["turns"] == 1


def test_the_spec_in_docs_fleet_md_is_the_example_spec() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "fleet.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b.split("```", 1)[0]) for b in doc.split("```yaml\n")[1:]]
    specs = [b for b in blocks if "engines" not in b]
    assert len(specs) == 1
    # the example leaves duration_s to its default, a day; the page spells it out
    assert cost_sim.parse_spec(specs[0]) == cost_sim.parse_spec({**cost_sim.EXAMPLE, "duration_s": 86400})
