"""`turnout serve --workers 2`: two gateway processes behind one port, sharing budgets, the audit
chain, API-key revocations and metrics (real processes: the gateway with its two workers, the
OpenAI-wire stand-in upstream; keys made with `turnout keys`; the chain checked with `turnout
audit verify`)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Upstream
from tests.keyed import cli, cli_key, frontier_config, serve, write_config
from tests.runcli import run_cli
from turnout.config import ConfigError, parse_config
from turnout.server.workers import resolve_workers
from turnout.testing.procs import Proc

# 10 words in, max_tokens 4: the echo answers "echo: w1 w2 w3", 4 completion tokens, so a request's actual
# cost is its estimate (input is free here): $0.00004 each, and a $0.0002 daily budget admits exactly 5
PRICING = {"input_per_m": 0.0, "output_per_m": 10.0}
WORDS = "one two three four five six seven eight nine ten"
BODY = {"model": "auto", "messages": [{"role": "user", "content": WORDS}], "max_tokens": 4}


Served = tuple[Proc, Path, dict[str, Any]]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("workers")
    cfg = frontier_config(upstream.url, tmp)
    cfg["engines"]["frontier"]["pricing"] = PRICING
    config = write_config(tmp, cfg)
    keys = {
        "admin": cli_key(config, "ops", "--roles", "admin"),
        "budget": cli_key(config, "budget", "--usd-day", "0.0002"),
        "counted": cli_key(config, "counted"),
        "revoked": cli_key(config, "leaver"),
        "cli_revoked": cli_key(config, "leaver2"),
        "chain": cli_key(config, "chain"),
    }
    proc = serve(config, "--workers", "2")
    try:
        yield proc, config, keys
    finally:
        for client in _OPEN:
            client.close()
        proc.stop()
    assert "Traceback" not in proc.output()


_OPEN: list[httpx.Client] = []  # closed when the module's gateway stops


def by_worker(url: str, want: int = 2, attempts: int = 200) -> dict[str, httpx.Client]:
    """One client per worker process, keyed by its pid: a client keeps its one connection, and so
    its worker; new connections are made until ``want`` workers have answered."""
    clients: dict[str, httpx.Client] = {}
    for _ in range(attempts):
        client = httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1))
        _OPEN.append(client)
        pid = client.get("/healthz").headers["x-turnout-worker"]
        if pid in clients:
            client.close()
            continue
        clients[pid] = client
        if len(clients) == want:
            return clients
    raise AssertionError(f"only workers {sorted(clients)} answered {attempts} new connections")


def worker_of(client: httpx.Client) -> str:
    return client.get("/healthz").headers["x-turnout-worker"]


def chat(client: httpx.Client, key: dict[str, Any], **over: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={**BODY, **over},
                       headers={"Authorization": f"Bearer {key['key']}"})


def test_two_worker_processes_answer_on_one_port(gateway: Served) -> None:
    proc, _, keys = gateway
    clients = by_worker(proc.url)
    assert str(proc.pid) not in clients  # the workers are children; the parent only supervises
    for pid, client in clients.items():
        r = chat(client, keys["counted"])
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "echo: one two three"
        assert worker_of(client) == pid  # the same connection, the same worker
    assert "2 worker process(es)" in proc.output()


def test_a_budget_is_spent_exactly_once_across_workers(gateway: Served) -> None:
    proc, _, keys = gateway
    a, b = by_worker(proc.url).values()
    first = [chat(a, keys["budget"]), chat(b, keys["budget"])]  # one on each worker before the rush
    with ThreadPoolExecutor(2) as pool:  # then 7 more through each worker at once
        rushes = [pool.submit(lambda c=c: [chat(c, keys["budget"]) for _ in range(7)]) for c in (a, b)]
        rest = [r for f in rushes for r in f.result()]
    statuses = [r.status_code for r in first + rest]
    assert statuses.count(200) == 5, statuses  # $0.0002 / $0.00004: counters in one process each would admit 10
    assert statuses.count(429) == 11, statuses
    refused = next(r for r in rest if r.status_code == 429).json()["error"]
    assert refused["code"] == "budget_exceeded"
    admin = {"Authorization": f"Bearer {keys['admin']['key']}"}
    usage = a.get("/v1/turnout/usage", params={"tenant": "budget"}, headers=admin)
    assert usage.status_code == 200, usage.text


def test_one_audit_chain_verifies_after_concurrent_requests(gateway: Served) -> None:
    proc, config, keys = gateway
    clients = list(by_worker(proc.url).values()) + list(by_worker(proc.url).values())  # two per worker
    # one thread per client: an httpx client's single connection is not shared between threads
    with ThreadPoolExecutor(len(clients)) as pool:
        batches = list(pool.map(lambda c: [chat(c, keys["chain"]).status_code for _ in range(10)], clients))
    results = [status for batch in batches for status in batch]
    assert results == [200] * 40
    db = str(config.parent / "turnout.sqlite")
    verified = run_cli("audit", "verify", "--db", db)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        entries = conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        chained = conn.execute("SELECT COUNT(*) FROM requests WHERE tenant = 'chain'").fetchone()[0]
        seqs = [r[0] for r in conn.execute("SELECT seq FROM audit_entries ORDER BY seq")]
    assert chained == 40
    assert entries >= rows and seqs == list(range(1, len(seqs) + 1))  # one chain, no gap, no fork


def _requests_total(text: str, tenant: str) -> float:
    pattern = re.compile(r'^turnout_requests_total\{([^}]*)\} (\S+)$', re.MULTILINE)
    return sum(float(v) for labels, v in pattern.findall(text) if f'tenant="{tenant}"' in labels)


def test_metrics_are_summed_over_the_workers(gateway: Served) -> None:
    proc, _, keys = gateway
    a, b = by_worker(proc.url).values()
    admin = {"Authorization": f"Bearer {keys['admin']['key']}"}
    before = _requests_total(a.get("/metrics", headers=admin).text, "counted")
    for _ in range(3):
        assert chat(a, keys["counted"]).status_code == 200
    for _ in range(5):
        assert chat(b, keys["counted"]).status_code == 200
    seen_a, seen_b = (c.get("/metrics", headers=admin) for c in (a, b))
    assert seen_a.status_code == seen_b.status_code == 200
    assert _requests_total(seen_a.text, "counted") == before + 8
    assert _requests_total(seen_b.text, "counted") == before + 8  # whichever worker answers the scrape
    assert "turnout_in_flight" in seen_a.text
    refused = a.get("/metrics", headers={"Authorization": f"Bearer {keys['counted']['key']}"})
    assert refused.status_code == 403  # a user key may not read metrics, on any worker


def test_a_revoked_key_is_refused_by_every_worker(gateway: Served) -> None:
    proc, config, keys = gateway
    a, b = by_worker(proc.url).values()
    leaver, cli_revoked = keys["revoked"], keys["cli_revoked"]
    for key in (leaver, cli_revoked):
        assert chat(a, key).status_code == chat(b, key).status_code == 200  # cached on both workers
    admin = {"Authorization": f"Bearer {keys['admin']['key']}"}
    revoked = a.delete(f"/v1/turnout/keys/{leaver['key_id']}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    for client in (a, b):  # through the API of one worker: every worker, from its next request
        r = chat(client, leaver)
        assert r.status_code == 401 and r.json()["error"]["code"] == "key_revoked", r.text
    assert chat(b, cli_revoked).status_code == 200  # other keys still work there
    # revoked from a shell (no worker told): every worker once its cached lookup lapses (KEY_CACHE_S)
    assert cli(config, "revoke", cli_revoked["key_id"]).returncode == 0
    deadline = time.monotonic() + 30
    while chat(a, cli_revoked).status_code != 401 or chat(b, cli_revoked).status_code != 401:
        assert time.monotonic() < deadline, "a worker still takes a key revoked from the shell"
        time.sleep(0.2)
    for client in (a, b):
        assert chat(client, cli_revoked).json()["error"]["code"] == "key_revoked"


def test_a_worker_that_dies_is_replaced_and_its_counts_kept(gateway: Served) -> None:
    import os
    import signal

    proc, _, keys = gateway
    admin = {"Authorization": f"Bearer {keys['admin']['key']}"}
    clients = by_worker(proc.url)
    a, b = clients.values()
    victim = next(iter(clients))
    assert chat(a, keys["counted"]).status_code == 200  # counted by the worker about to die
    before = _requests_total(b.get("/metrics", headers=admin).text, "counted")
    os.kill(int(victim), signal.SIGKILL)
    deadline = time.monotonic() + 180  # the supervisor starts a new worker (a model-free start: seconds)
    while True:
        try:
            pids = set(by_worker(proc.url, attempts=40))
        except (AssertionError, httpx.HTTPError):
            pids = set()
        if len(pids) == 2 and victim not in pids:
            break
        assert time.monotonic() < deadline, f"no replacement worker; answering: {pids}"
        time.sleep(0.5)
    c, d = by_worker(proc.url).values()
    assert chat(c, keys["counted"]).status_code == chat(d, keys["counted"]).status_code == 200
    after = _requests_total(c.get("/metrics", headers=admin).text, "counted")
    assert after == before + 2  # the dead worker's requests still count
    assert "in_flight" in c.get("/metrics", headers=admin).text


def test_workers_argument_and_auto() -> None:
    bad = run_cli("serve", "--workers", "0")
    assert bad.returncode == 2 and "1 to 256" in bad.stderr
    remote = parse_config({"engines": {"up": {"dialect": "openai", "base_url": "http://127.0.0.1:9/v1",
                                               "model": "m", "locality": "remote"}},
                           "routes": {"auto": {"chain": ["up"]}}}, "test")
    n, why = resolve_workers("auto", remote)
    assert n >= 1 and "one per core" in why
    local = parse_config({"engines": {"local": {"dialect": "llamacpp"}}, "routes": {"auto": {"chain": ["local"]}}},
                         "test")
    n, why = resolve_workers("auto", local)
    assert n == 1 and "local" in why
    assert resolve_workers(3, local)[0] == 3
    with pytest.raises(ConfigError, match="workers"):
        parse_config({"server": {"workers": 0}}, "test")


# What each worker's retraining round does (turnout.cli.router.run_fit): under the registry's fit lock, count the
# labels new since the last fit, fit only past the minimum, and record the fit with the count it used.
ROUND = """
import sys, time
from pathlib import Path
from turnout.routing.artifacts import Registry

registry = Registry(Path(sys.argv[1]))
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process starts its round at once
with registry.lock():
    new = 120 - registry.labels_at_last_fit()
    if new < 100:
        print("skipped")
    else:
        time.sleep(0.5)  # the fit
        registry.record("refused", None, labels=120)
        print("fitted")
"""


def test_one_retrain_per_round_across_worker_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    start_at = time.time() + 1.5  # all three are up by then
    procs = [subprocess.Popen([sys.executable, "-c", ROUND, str(tmp_path / "router"), str(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in outs]
    assert sorted(o.strip() for o, _ in outs) == ["fitted", "skipped", "skipped"]
    from turnout.routing.artifacts import Registry

    assert [e["event"] for e in Registry(tmp_path / "router").history()] == ["refused"]


def test_the_key_epoch_is_one_counter_for_every_process_that_maps_it(tmp_path: Path) -> None:
    from turnout.governance.epoch import KeyEpoch

    first, second = KeyEpoch(tmp_path / "keys.epoch"), KeyEpoch(tmp_path / "keys.epoch")
    assert first.value() == second.value() == 0
    first.bump()
    second.bump()
    assert first.value() == second.value() == 2
    first.close()
    first.close()  # twice: harmless
    assert KeyEpoch(tmp_path / "keys.epoch").value() == 2  # a worker started later sees it
    second.close()


def test_two_workers_on_postgresql_share_one_chain_and_one_budget(tmp_path: Path, upstream: Upstream,
                                                                    pg_schema: str) -> None:
    """The ledger, audit log and keys in PostgreSQL (appends serialise on the head row), limits in the
    SQLite file the workers share."""
    from tests.conftest import PG_DSN

    cfg = frontier_config(upstream.url, tmp_path)
    cfg["engines"]["frontier"]["pricing"] = PRICING
    cfg["storage"] = {"sqlite_path": str(tmp_path / "limits.sqlite"), "postgres_dsn": PG_DSN,
                      "postgres_schema": pg_schema}
    config = write_config(tmp_path, cfg)
    budget = cli_key(config, "budget", "--usd-day", "0.0002")
    proc = serve(config, "--workers", "2")
    try:
        a, b = by_worker(proc.url).values()
        with ThreadPoolExecutor(2) as pool:
            rushes = [pool.submit(lambda c=c: [chat(c, budget) for _ in range(6)]) for c in (a, b)]
            statuses = [r.status_code for f in rushes for r in f.result()]
    finally:
        proc.stop()
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses
    verified = run_cli("audit", "verify", "--dsn", PG_DSN, "--schema", pg_schema)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Traceback" not in proc.output()


def test_every_worker_accepts_once_listening_on_is_printed(tmp_path: Path, upstream: Upstream) -> None:
    """``listening on`` means every worker serves the port (the parent listens before any worker starts, and a
    worker counts as ready once its server accepts, not when the gateway's start-up ends): requests sent the
    moment the line is printed, each on a new connection, all succeed. (The gap this closed was a few event-loop
    turns wide and did not show from outside even before the fix; one start keeps the promise checked.)"""
    config = write_config(tmp_path, frontier_config(upstream.url, tmp_path))
    key = cli_key(config, "early")
    headers = {"Authorization": f"Bearer {key['key']}"}

    def fresh(i: int, url: str) -> int:  # a new connection each: none may be refused
        with httpx.Client(base_url=url, timeout=30) as client:
            if i % 2:
                return client.get("/healthz").status_code
            return client.post("/v1/chat/completions", json=BODY, headers=headers).status_code

    proc = serve(config, "--workers", "2")
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: fresh(i, proc.url), range(8)))
        assert statuses == [200] * 8, statuses
        answered = by_worker(proc.url)
        assert len(answered) == 2  # both workers answer
        for client in answered.values():
            client.close()
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()
