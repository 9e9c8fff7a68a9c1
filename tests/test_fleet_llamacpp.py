"""A pool over real llama.cpp servers (docs/fleet.md): two ``python -m llama_cpp.server`` processes
serving the shipped SmolLM2 on loopback, behind a gateway, observed from outside (response headers,
/metrics, /readyz, the admin API, the ledger): round-robin spread, prefix stickiness, draining,
ejection of a killed server and its re-admission once it is back.

The servers are started once for the module and the answers are 4 tokens at most: they run on the
CPU. The server needs llama-cpp-python's ``server`` extra (fastapi, pydantic-settings,
starlette-context); ``TURNOUT_LLAMA_SERVER_PYTHON`` names a Python that has it (default: this one),
and the module skips, saying so, where none has. Spill-over and its sensitive exception are placement
logic, tested over stand-in servers in tests/test_pool.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, module_gateway, until
from turnout.engines.smollm2 import smollm2_gguf
from turnout.testing.procs import Proc, start_server

PYTHON = os.environ.get("TURNOUT_LLAMA_SERVER_PYTHON") or sys.executable
SLOW = {"timeout": 120, "first_token_timeout": 120, "idle_timeout": 60, "retries": 0, "breaker_failures": 1000}
POOL = {"probe_interval_s": 0.5, "probe_timeout_s": 5, "eject_after": 2, "cooldown_s": 1}


def llama_server(port: int | None = None) -> Proc:
    return start_server("llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", "smollm2",
                        "--n_ctx", "512", "--n_threads", "1", "--interrupt_requests", "false", "--host", "127.0.0.1",
                        port=port,
                        ready_pattern="Uvicorn running on", timeout=180, python=PYTHON)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Proc]]:
    probe = subprocess.run([PYTHON, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"llama_cpp.server cannot start with {PYTHON}: {probe.stderr.strip().splitlines()[-1]} "
                    "(pip install 'llama-cpp-python[server]', or set TURNOUT_LLAMA_SERVER_PYTHON)")
    procs = [llama_server(), llama_server()]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, servers: list[Proc]) -> Iterator[Gateway]:
    def pool(balance: str, **options: Any) -> dict[str, Any]:
        return {"dialect": "openai", "locality": "local", "model": "smollm2", "balance": balance,
                "endpoints": [{"url": p.url + "/v1", "max_concurrency": 2} for p in servers],
                "pool": {**POOL, "options": options}, "resilience": dict(SLOW)}

    config = {"auth": "open", "guards": {"enabled": False},
              "engines": {"fleet": pool("round_robin"), "sticky": pool("prefix", block_chars=16)}}
    yield from module_gateway(tmp_path_factory, config)


def chat(gw: Gateway, model: str, messages: list[dict[str, str]]) -> httpx.Response:
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=180,
                   json={"model": model, "messages": messages, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]  # the model answered
    return r


def hi(text: str = "Say hi.") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def names(servers: list[Proc]) -> list[str]:
    return [p.url.removeprefix("http://") for p in servers]


def state(gw: Gateway, engine: str) -> dict[str, dict[str, Any]]:
    data = httpx.get(gw.url + "/v1/turnout/pools", timeout=10).json()["data"]
    return {e["name"]: e for p in data if p["engine"] == engine for e in p["endpoints"]}


def metric(gw: Gateway, name: str, **labels: str) -> float:
    for line in httpx.get(gw.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_round_robin_alternates_between_the_servers(gw: Gateway, servers: list[Proc]) -> None:
    got = [chat(gw, "fleet", hi()) for _ in range(4)]
    where = [r.headers["x-turnout-endpoint"] for r in got]
    assert sorted(set(where)) == sorted(names(servers)) and where[0] != where[1] and where[:2] == where[2:]
    rows = {r["request_id"]: r for r in gw.ledger_after(3)} | {r["request_id"]: r for r in gw.ledger()}
    for r in got:
        row = rows[r.headers["x-request-id"]]
        assert row["engine"] == "fleet" and row["endpoint"] == r.headers["x-turnout-endpoint"]
        assert row["completion_tokens"] > 0


def test_prefix_keeps_each_conversation_on_its_server(gw: Gateway, servers: list[Proc]) -> None:
    talks = [[{"role": "system", "content": "You answer about apples."}],
             [{"role": "system", "content": "You answer about boats, briefly."}]]
    where: list[set[str]] = [set(), set()]
    for turn in range(2):
        for i, talk in enumerate(talks):
            talk.append({"role": "user", "content": f"Tell me one fact, number {turn}."})
            r = chat(gw, "sticky", talk)
            where[i].add(r.headers["x-turnout-endpoint"])
            talk.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
    assert [len(w) for w in where] == [1, 1], where  # each conversation stayed on its server
    assert where[0] != where[1]  # and the two were spread over the pool


def test_draining_moves_new_requests_and_resume_brings_them_back(gw: Gateway, servers: list[Proc]) -> None:
    a, b = names(servers)
    r = httpx.post(f"{gw.url}/v1/turnout/pools/fleet/{a}/drain", timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "draining"
    assert {chat(gw, "fleet", hi()).headers["x-turnout-endpoint"] for _ in range(2)} == {b}
    assert metric(gw, "turnout_endpoint_up", engine="fleet", endpoint=a) == 0.0
    assert httpx.post(f"{gw.url}/v1/turnout/pools/fleet/{a}/resume", timeout=10).json()["state"] == "up"
    assert a in {chat(gw, "fleet", hi()).headers["x-turnout-endpoint"] for _ in range(2)}


def test_a_killed_server_is_ejected_and_readmitted_when_back(gw: Gateway, servers: list[Proc]) -> None:
    a, b = names(servers)
    port = servers[1].port
    servers[1].stop()  # b is gone: connection refused
    got = [chat(gw, "fleet", hi()).headers["x-turnout-endpoint"] for _ in range(3)]
    assert got == [a, a, a]  # no client saw the dead server: its requests failed over within the pool
    until(lambda: state(gw, "fleet")[b]["state"] == "ejected", "b ejected")
    ready = httpx.get(gw.url + "/readyz", timeout=10).json()["engines"]["fleet"]
    assert ready["ready"] is True and ready["detail"] == f"1/2 endpoints up ({b}: ejected)"
    assert metric(gw, "turnout_endpoint_ejections_total", engine="fleet", endpoint=b) >= 1
    servers[1] = llama_server(port)  # back on the same address
    until(lambda: state(gw, "fleet")[b]["state"] == "up", "b re-admitted by a probe")
    assert metric(gw, "turnout_endpoint_readmissions_total", engine="fleet", endpoint=b) >= 1
    assert b in {chat(gw, "fleet", hi()).headers["x-turnout-endpoint"] for _ in range(2)}
