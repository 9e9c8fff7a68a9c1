"""Pools (docs/fleet.md): one engine over several endpoints of the same model.

Units: the configuration's refusals, the balance strategies' picks, the prefix index, the
servers' metrics as the prober reads them. Then a gateway over several OpenAI stand-in servers
(real processes on loopback; only the placement is under test here, not generation: the
llama.cpp servers are in tests/test_fleet_llamacpp.py): weighted round-robin, prefix stickiness,
spill-over and its exceptions (a sensitive request, a route without spill), draining with a
request in flight, the admin API's answers, all observed from outside: response headers, the
ledger, /metrics and each stand-in's own request log.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Gateway, Upstream, module_gateway, until
from turnout.config import ConfigError, parse_config
from turnout.config_pool import EndpointConfig
from turnout.engines.balance import LeastOutstanding, PowerOfTwo, RoundRobin
from turnout.engines.endpoint import Endpoint, ServerLoad
from turnout.engines.openai_http import OpenAIEngine, OpenAIEngineConfig
from turnout.engines.pool_probe import probe_url, server_load
from turnout.engines.prefix import PrefixAware, PrefixIndex, block_hashes
from turnout.protocol import ChatRequest
from turnout.testing.procs import start_server

SYSTEM = ("You are the support assistant of a company that sells garden tools. Answer briefly, politely, "
          "and only about the company's products, orders and deliveries. ") * 3


# ==== units ===================================================================================
def _engine_cfg(**over: Any) -> dict[str, Any]:
    return {"dialect": "openai", "locality": "local", "model": "m", **over}


def test_config_takes_base_url_or_endpoints_not_both_nor_neither() -> None:
    two = [{"url": "http://127.0.0.1:1/v1"}, {"url": "http://127.0.0.1:2/v1"}]
    ok = parse_config({"engines": {"p": _engine_cfg(endpoints=two, balance="prefix")}})
    assert [e.label() for e in ok.engines["p"].endpoints] == ["127.0.0.1:1", "127.0.0.1:2"]  # type: ignore[attr-defined]
    for bad, words in (
        (_engine_cfg(endpoints=two, base_url="http://127.0.0.1:3/v1"), "either base_url"),
        (_engine_cfg(), "either base_url"),
        (_engine_cfg(endpoints=two, balance="fastest"), "unknown balance strategy 'fastest'"),
        (_engine_cfg(endpoints=[{"url": "http://h:1/v1"}, {"url": "http://h:1/v2"}]), "same name"),
        (_engine_cfg(endpoints=[{"url": "ftp://h:1/v1"}]), "endpoints.0.url"),
        (_engine_cfg(endpoints=two, pool={"eject_after": 0}), "pool.eject_after"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_config({"engines": {"p": bad}})
        assert words in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="round_robin, least_outstanding, p2c, prefix"):
        parse_config({"engines": {"p": _engine_cfg(endpoints=two, balance="fastest")}})


def test_the_worked_configurations_in_docs_fleet_md_are_valid() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "fleet.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in doc.split("```yaml\n")[1:]]
    blocks = [b for b in blocks if "engines" in yaml.safe_load(b)]  # not the simulation's spec
    assert len(blocks) == 2  # four vLLM replicas; llama.cpp servers
    frontier = {"dialect": "openai", "locality": "remote", "base_url": "https://api.example/v1", "model": "m"}
    for block in blocks:
        data = yaml.safe_load(block)
        data["engines"].setdefault("frontier", frontier)
        cfg = parse_config(data, "docs/fleet.md")
        assert cfg.engines["local"].endpoints and cfg.engines["local"].balance == "prefix"  # type: ignore[attr-defined]
        assert cfg.routes["auto"].spill is True


def _eps(*weights: float, in_flight: tuple[int, ...] = ()) -> list[Endpoint]:
    out = []
    for i, w in enumerate(weights):
        cfg = EndpointConfig(url=f"http://127.0.0.1:{9000 + i}/v1", weight=w, max_concurrency=4)
        engine = OpenAIEngine("p", OpenAIEngineConfig(dialect="openai", locality="local", model="m", base_url=cfg.url))
        e = Endpoint(cfg, engine)
        e.in_flight = in_flight[i] if in_flight else 0
        out.append(e)
    return out


def _req(*turns: str, system: str = SYSTEM) -> ChatRequest:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return ChatRequest.model_validate({"model": "p", "messages": msgs})


def test_round_robin_follows_weights_smoothly() -> None:
    eps = _eps(2, 1, 1)
    rr = RoundRobin({})
    picks = [rr.pick(_req("hi"), eps).name for _ in range(8)]
    assert Counter(picks) == {eps[0].name: 4, eps[1].name: 2, eps[2].name: 2}
    assert all(a != b or a == eps[0].name for a, b in zip(picks, picks[1:], strict=False))  # never B,B or C,C
    assert picks[:4].count(eps[0].name) == 2  # interleaved, not A,A,A,A first


def test_least_outstanding_and_p2c_avoid_the_busy_endpoint() -> None:
    eps = _eps(1, 1, 1, in_flight=(3, 0, 1))
    assert LeastOutstanding({}).pick(_req("hi"), eps) is eps[1]
    eps[1].in_flight = 1  # a tie between 1 and 2: both get turns
    lo = LeastOutstanding({})
    assert {lo.pick(_req("hi"), eps).name for _ in range(4)} == {eps[1].name, eps[2].name}
    heavy = _eps(1, 1, 1, in_flight=(9, 0, 1))
    p2c = PowerOfTwo({"seed": 7})
    picks = Counter(p2c.pick(_req("hi"), heavy).name for _ in range(60))
    assert heavy[0].name not in picks  # the less loaded of any two is never the most loaded
    assert len(picks) == 2
    weighted = _eps(1, 1, 4, in_flight=(9, 0, 1))  # weight: 1 in flight on a 4x endpoint is the least load
    assert LeastOutstanding({}).pick(_req("hi"), weighted) in (weighted[2], weighted[1])


def test_prefix_follows_the_conversation_until_its_endpoint_is_overloaded() -> None:
    eps = _eps(1, 1, 1)
    pa = PrefixAware({"load_slack": 2})
    first = pa.pick(_req("where is my order 1234?"), eps)
    pa.placed(_req("where is my order 1234?"), first)
    # the same long system prompt: where it is cached (while that endpoint is not overloaded)
    assert pa.pick(_req("do you sell rakes?"), eps) is first
    other = pa.pick(_req("do you sell rakes?", system="You are a poet. " * 20), eps)
    assert other is not first  # nothing cached anywhere: the endpoint holding the fewest prefixes
    pa.placed(_req("do you sell rakes?", system="You are a poet. " * 20), other)
    turn2 = _req("where is my order 1234?", "It left on Monday.", "when will it arrive?")
    assert pa.pick(turn2, eps) is first
    pa.placed(turn2, first)
    first.in_flight = 3  # 3 more than the least loaded (slack 2): the conversation moves
    moved = pa.pick(_req("where is my order 1234?", "It left on Monday.", "when will it arrive?", "ok", "thanks"), eps)
    assert moved is not first
    first.in_flight = 2  # within the slack: back
    assert pa.pick(turn2, eps) is first
    pa.forget(first)  # ejected or drained: what it cached is gone
    first.in_flight = 0
    assert pa.tree(first).match(block_hashes("system\x1f" + SYSTEM, 64)) == 0


def test_prefix_index_matches_leading_blocks_and_stays_bounded() -> None:
    text = "x" * 64 + "y" * 64 + "z" * 64
    hashes = block_hashes(text, 64)
    assert len(hashes) == 3 and block_hashes("x" * 64 + "q" * 64, 64)[0] == hashes[0]
    assert block_hashes("q" * 64 + "y" * 64, 64)[1] != hashes[1]  # a block's hash stands for its whole prefix
    idx = PrefixIndex(limit=4)
    idx.add(hashes[:2])
    assert idx.match(hashes) == 2
    idx.add(block_hashes("a" * 64 * 4, 64))
    assert len(idx.blocks) == 4 and idx.match(hashes) == 0  # least recently used went first


def test_an_endpoint_is_ejected_after_consecutive_failures_and_readmitted_after_its_cooldown() -> None:
    e = _eps(1)[0]
    assert not e.failure(3) and not e.failure(3)
    e.succeeded()  # a success in between: consecutive failures start again
    assert not e.failure(3) and not e.failure(3, request=False)
    assert e.failure(3) and e.state == "ejected" and not e.eligible
    assert (e.failed, e.ejections) == (4, 1)  # the probe's failure is not a failed request
    assert not e.cooled(60.0) and e.cooled(0.0)
    e.readmit()
    assert e.state == "up" and e.failures == 0 and e.readmissions == 1
    e.draining = True
    assert e.state == "draining" and not e.eligible


VLLM_METRICS = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="Qwen/Qwen2.5-7B-Instruct"} 7.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="Qwen/Qwen2.5-7B-Instruct"} 12.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="Qwen/Qwen2.5-7B-Instruct"} 0.42
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 123456.0
"""
LLAMACPP_METRICS = """# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 5
"""


def test_server_metrics_as_the_prober_reads_them() -> None:
    v = server_load(VLLM_METRICS)
    assert v is not None and (v.waiting, v.running, v.kv_use) == (7.0, 12.0, 0.42)
    ll = server_load(LLAMACPP_METRICS)
    assert ll is not None and (ll.waiting, ll.running, ll.kv_use) == (5.0, 2.0, None)
    assert server_load("# TYPE other gauge\nother 1\n") is None
    e = _eps(1)[0]
    e.fresh_s = 60
    e.server = ServerLoad(waiting=5, running=2, at=time.monotonic())
    assert e.load() == 7 and e.saturated(5) and not e.saturated(6)
    e.in_flight = 4  # full (max_concurrency 4) whatever the server says
    assert e.saturated(100)
    e.server.at = time.monotonic() - 120  # stale: the gateway's own count only
    assert e.load() == 4
    assert probe_url("http://h:1/v1", "models") == "http://h:1/v1/models"
    assert probe_url("http://h:1/v1/", "/health") == "http://h:1/health"


# ==== a gateway over stand-in servers ===========================================================
FAST = {"timeout": 20, "first_token_timeout": 20, "retries": 0, "breaker_failures": 1000}
POOL = {"probe_interval_s": 0.3, "cooldown_s": 0.5, "probe_timeout_s": 2}


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[Upstream]]:
    procs = [start_server("turnout.testing.upstream", "--model", "fake-local") for _ in range(3)]
    try:
        yield [Upstream(p) for p in procs]
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def overflow() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-overflow") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, replicas: list[Upstream], overflow: Upstream) -> Iterator[Gateway]:
    urls = [r.url + "/v1" for r in replicas]

    def pool(balance: str, weights: tuple[float, ...], **ep: Any) -> dict[str, Any]:
        return {"dialect": "openai", "locality": "local", "model": "fake-local", "balance": balance,
                "endpoints": [{"url": u, "weight": w, **ep} for u, w in zip(urls, weights, strict=False)],
                "pool": dict(POOL), "resilience": dict(FAST)}

    config = {
        "auth": "open",
        "engines": {
            "rr": pool("round_robin", (2, 1, 1)),
            "sticky": pool("prefix", (1, 1, 1)),
            "tight": pool("least_outstanding", (1, 1), max_concurrency=1),
            "vectors": {**pool("round_robin", (1, 1)), "embedding_model": "fake-embed"},
            "overflow": {"dialect": "openai", "locality": "local", "model": "fake-overflow",
                         "base_url": overflow.url + "/v1", "resilience": dict(FAST)},
        },
        "routes": {
            "burst": {"chain": ["tight", "overflow"], "spill": True},
            "queue": {"chain": ["tight", "overflow"]},
            "embed": {"chain": ["vectors"]},
        },
        "guards": {"enabled": False},
    }
    yield from module_gateway(tmp_path_factory, config)


@pytest.fixture
def clean(replicas: list[Upstream], overflow: Upstream) -> Iterator[None]:
    for u in (*replicas, overflow):
        u.reset()
    yield
    for u in (*replicas, overflow):
        u.reset()


def chat(gw: Gateway, model: str, messages: list[dict[str, str]] | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": model, "messages": messages or [{"role": "user", "content": "hello there"}], "max_tokens": 4}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=60)


def pools(gw: Gateway) -> dict[str, dict[str, Any]]:
    data = httpx.get(gw.url + "/v1/turnout/pools", timeout=10).json()["data"]
    return {p["engine"]: {e["name"]: e for e in p["endpoints"]} | {"_spills": p["spills"]} for p in data}


def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def name_of(up: Upstream) -> str:
    return up.url.removeprefix("http://")


def test_round_robin_spreads_by_weight_and_records_the_endpoint(gw: Gateway, replicas: list[Upstream],
                                                                clean: None) -> None:
    before = len(gw.ledger())
    seen = []
    for _ in range(8):
        r = chat(gw, "rr")
        assert r.status_code == 200, r.text
        assert r.headers["x-turnout-engine"] == "rr"
        seen.append((r.headers["x-request-id"], r.headers["x-turnout-endpoint"]))
    counts = Counter(ep for _, ep in seen)
    assert counts == {name_of(replicas[0]): 4, name_of(replicas[1]): 2, name_of(replicas[2]): 2}
    for up in replicas:  # each server's own log agrees with the gateway
        assert len(up.requests()) == counts[name_of(up)]
    gw.ledger_after(before + 7)  # the eighth row is committed
    rows = {r["request_id"]: r["endpoint"] for r in gw.ledger()}
    assert all(rows[rid] == ep for rid, ep in seen)
    assert metric(gw, "turnout_endpoint_requests_total", engine="rr", endpoint=name_of(replicas[0]),
                  outcome="ok") >= 4
    assert metric(gw, "turnout_endpoint_up", engine="rr", endpoint=name_of(replicas[1])) == 1.0


def test_prefix_keeps_each_conversation_on_one_endpoint(gw: Gateway, replicas: list[Upstream], clean: None) -> None:
    topics = ["where is my order 1234?", "do you sell rakes with wooden handles?", "can I return a broken hose?"]
    # three tenants' assistants (a shared system prompt would draw them all to where it is cached)
    talks: dict[int, list[dict[str, str]]] = {
        i: [{"role": "system", "content": f"Shop {i}. " + SYSTEM}] for i in range(3)}
    where: dict[int, set[str]] = {i: set() for i in range(3)}
    rr_where: dict[int, set[str]] = {i: set() for i in range(3)}
    for turn in range(3):
        for i, topic in enumerate(topics):  # the conversations interleave, as live traffic does
            talks[i].append({"role": "user", "content": f"{topic} (turn {turn})"})
            r = chat(gw, "sticky", talks[i])
            assert r.status_code == 200, r.text
            where[i].add(r.headers["x-turnout-endpoint"])
            talks[i].append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
            rr_where[i].add(chat(gw, "rr", talks[i][:-1]).headers["x-turnout-endpoint"])
    assert all(len(eps) == 1 for eps in where.values()), where  # sticky by conversation
    assert len(set().union(*where.values())) == 3  # and the conversations spread over the pool
    assert any(len(eps) > 1 for eps in rr_where.values())  # round-robin scatters the same conversations


def _hold(gw: Gateway, model: str, n: int, pool: str) -> list[cf.Future[httpx.Response]]:
    """Start ``n`` requests that the stand-ins hold, and wait until the pool has them in flight."""
    ex = cf.ThreadPoolExecutor(n)
    futures = [ex.submit(chat, gw, model, [{"role": "user", "content": f"slow {i}"}]) for i in range(n)]
    ex.shutdown(wait=False)
    until(lambda: sum(e["in_flight"] for k, e in pools(gw)[pool].items() if k != "_spills") == n,
          f"{n} requests in flight on {pool}")
    return futures


def test_spill_over_when_every_endpoint_is_saturated_never_for_sensitive(
        gw: Gateway, replicas: list[Upstream], overflow: Upstream, clean: None) -> None:
    for up in replicas[:2]:
        up.queue({"name": "ok", "delay_ms": 6000})  # each endpoint of `tight` holds one request (max_concurrency 1)
    held = _hold(gw, "burst", 2, "tight")
    before = len(gw.ledger())
    spilled = chat(gw, "burst", [{"role": "user", "content": "spill me"}])
    assert spilled.status_code == 200, spilled.text
    assert spilled.headers["x-turnout-engine"] == "overflow"
    assert spilled.headers["x-turnout-fallbacks"] == "tight:spill"
    assert spilled.headers["x-turnout-spill"].startswith("tight: every endpoint saturated")
    assert spilled.json()["choices"][0]["message"]["content"] == "echo: spill me"
    assert [r["body"]["messages"][-1]["content"] for r in overflow.requests()] == ["spill me"]
    # a sensitive request on the same route waits for the pool: it never spills, even to a local engine
    with cf.ThreadPoolExecutor(2) as ex:
        sensitive = ex.submit(chat, gw, "burst", [{"role": "user", "content": "my diagnosis"}],
                              {"x-turnout-sensitivity": "sensitive"})
        waiting = ex.submit(chat, gw, "queue", [{"role": "user", "content": "no spill route"}])
        until(lambda: metric(gw, "turnout_pool_waiting", engine="tight") == 2, "two requests waiting for the pool")
        for f in (sensitive, waiting):
            r = f.result(timeout=60)
            assert r.status_code == 200, r.text
            assert r.headers["x-turnout-engine"] == "tight" and "x-turnout-spill" not in r.headers
    for f in held:
        assert f.result(timeout=60).status_code == 200
    # nothing else went there
    assert [r["body"]["messages"][-1]["content"] for r in overflow.requests()] == ["spill me"]
    rows = {r["request_id"]: r for r in gw.ledger_after(before + 4)} | {r["request_id"]: r for r in gw.ledger()}
    row = rows[spilled.headers["x-request-id"]]
    assert row["engine"] == "overflow" and "spill" in row["labels"].split(",")
    assert '"code": "spill"' in row["hops"] or '"code":"spill"' in row["hops"]
    assert metric(gw, "turnout_spills_total", route="burst", engine="tight") == 1.0
    assert metric(gw, "turnout_pool_spills_total", engine="tight") == 1.0
    stats = httpx.get(gw.url + "/v1/dashboard/stats", timeout=10).json()
    assert stats["spills"]["burst"]["spilled"] == 1 and stats["spills"]["burst"]["requests"] == 4
    assert "queue" not in stats["spills"]  # the route that never spills has no row


def test_draining_lets_the_request_in_flight_finish(gw: Gateway, replicas: list[Upstream], clean: None) -> None:
    for up in replicas:
        up.queue({"name": "ok", "delay_ms": 3000})
    (slow,) = _hold(gw, "rr", 1, "rr")
    busy = next(k for k, e in pools(gw)["rr"].items() if k != "_spills" and e["in_flight"] == 1)
    for up in replicas:
        if name_of(up) != busy:
            up.reset()  # the other endpoints answer at once
    r = httpx.post(f"{gw.url}/v1/turnout/pools/rr/{busy}/drain", timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "draining" and r.json()["in_flight"] == 1
    after = {chat(gw, "rr").headers["x-turnout-endpoint"] for _ in range(6)}
    assert busy not in after and len(after) == 2
    done = slow.result(timeout=60)  # the drained endpoint's request in flight finishes, whole
    assert done.status_code == 200 and done.headers["x-turnout-endpoint"] == busy
    assert done.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert until(lambda: pools(gw)["rr"][busy]["in_flight"] == 0, "the drained endpoint empty")
    assert metric(gw, "turnout_endpoint_state", engine="rr", endpoint=busy, state="draining") == 1.0
    ready = httpx.get(gw.url + "/readyz", timeout=10).json()
    assert ready["engines"]["rr"]["ready"] is True  # two endpoints still up
    back = httpx.post(f"{gw.url}/v1/turnout/pools/rr/{busy}/resume", timeout=10)
    assert back.status_code == 200 and back.json()["state"] == "up"
    assert busy in {chat(gw, "rr").headers["x-turnout-endpoint"] for _ in range(4)}


def test_embeddings_fail_over_to_another_endpoint_of_the_pool(gw: Gateway, replicas: list[Upstream],
                                                             clean: None) -> None:
    """A replica that fails an embeddings call before answering: the pool asks the other one, once."""
    body = {"model": "embed", "input": ["a first text", "a second"]}

    def asked(up: Upstream) -> int:
        return sum(r["path"] == "/v1/embeddings" for r in up.requests())

    first = httpx.post(gw.url + "/v1/embeddings", json=body, timeout=60)
    assert first.status_code == 200, first.text
    served = next(u for u in replicas[:2] if asked(u) == 1)
    other = next(u for u in replicas[:2] if u is not served)  # round-robin over two: the other one is next
    other.queue("503")
    again = httpx.post(gw.url + "/v1/embeddings", json=body, timeout=60)
    assert again.status_code == 200, again.text
    assert [len(d["embedding"]) for d in again.json()["data"]] == [len(d["embedding"]) for d in first.json()["data"]]
    assert (asked(other), asked(served)) == (1, 2)  # the failing replica asked once, its turn taken by the other


def test_pool_admin_api_answers_unknown_names_with_openai_errors(gw: Gateway) -> None:
    for path, code in (("/v1/turnout/pools/overflow/x/drain", "pool_not_found"),
                       ("/v1/turnout/pools/nope/x/drain", "pool_not_found"),
                       ("/v1/turnout/pools/rr/127.0.0.1:1/resume", "endpoint_not_found")):
        r = httpx.post(gw.url + path, timeout=10)
        assert r.status_code == 404
        assert set(r.json()["error"]) == {"message", "type", "param", "code"} and r.json()["error"]["code"] == code
    assert re.fullmatch(r"\d+/\d+ endpoints up.*", httpx.get(gw.url + "/readyz", timeout=10).json()["engines"]["rr"]
                        .get("detail", "3/3 endpoints up"))


def test_the_endpoint_column_in_both_ledgers_and_their_audit_chains(pg_schema: str, tmp_path: Path) -> None:
    import asyncio

    from tests.conftest import PG_DSN
    from tests.runcli import run_cli
    from turnout.ledger.base import LedgerRow
    from turnout.ledger.postgres import PostgresLedger
    from turnout.ledger.postgres import read_rows as pg_rows
    from turnout.ledger.sqlite import SQLiteLedger, read_rows

    rows = [LedgerRow(ts=time.time(), request_id=f"r{i}", tenant="acme", alias="auto", status="ok", http_status=200,
                      engine="fleet", locality="local", endpoint=ep, labels=lab)
            for i, (ep, lab) in enumerate((("gpu-1:8000", ""), (None, "spill")))]

    async def write(ledger: Any) -> None:
        try:
            for row in rows:
                await ledger.record(row)
        finally:
            await ledger.close()

    asyncio.run(write(SQLiteLedger(tmp_path / "l.sqlite")))
    asyncio.run(write(PostgresLedger(PG_DSN, schema=pg_schema)))
    for got in (read_rows(tmp_path / "l.sqlite"), pg_rows(PG_DSN, schema=pg_schema)):
        assert [(r["endpoint"], r["labels"]) for r in got] == [("gpu-1:8000", ""), (None, "spill")]
    verify = run_cli("audit", "verify", "--db", str(tmp_path / "l.sqlite"), cwd=tmp_path)
    assert verify.returncode == 0 and "ok: 2 entries" in verify.stdout, verify.stdout + verify.stderr
    pg_verify = run_cli("audit", "verify", "--dsn", PG_DSN, "--schema", pg_schema, cwd=tmp_path)
    assert pg_verify.returncode == 0 and "ok: 2 entries" in pg_verify.stdout, pg_verify.stdout + pg_verify.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "l.sqlite") as db:  # the endpoint is part of what the chain commits to
        db.execute("UPDATE requests SET endpoint = 'gpu-2:8000' WHERE request_id = 'r0'")
    edited = run_cli("audit", "verify", "--db", str(tmp_path / "l.sqlite"), cwd=tmp_path)
    assert edited.returncode != 0 and "r0" in edited.stdout + edited.stderr
