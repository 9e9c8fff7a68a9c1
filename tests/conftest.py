"""Shared fixtures: real processes on loopback.

- ``upstream``: turnout.testing.upstream, an OpenAI-wire server standing in for a frontier API.
- ``anthropic_upstream``: the fake of Anthropic's Messages API (a paid API cannot run here).
- ``gateway_factory``: starts ``python -m turnout serve`` with a given turnout.yaml and SQLite file.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from turnout.testing.procs import Proc, preload_forkserver, start_server

# One thread for the math libraries (onnxruntime's guard models, numpy's BLAS) in this process and every process
# the tests start, unless the caller set it: the suite runs 3 workers on 2 cores, and these libraries' extra threads
# spin while they wait for a core (measured on the guard tests: 48.9 s of CPU with the default 2 threads, 36.3 s
# with one, the same wall time). `turnout serve --workers` sets the same variable for the same reason.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The servers the tests start (gateways, stand-ins) are forked from one process per worker that imported the
# gateway and its engines once (tests/preload.py): a start then skips the interpreter's own start and ~1 s of
# imports. Each server is still a process of its own, run by the same entry point as `python -m turnout`;
# tests/test_cli_start.py starts the command line itself.
preload_forkserver(["tests.preload"])

# A module's shared tests split into at most one group per worker, of about this many tests each: one group of
# the security matrix's 432 tests kept one worker busy long after the others had finished; a few more starts of
# its gateway (~1.3 s of CPU each) cost far less.
GROUP_SIZE = 50


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into the groups it schedules by
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs ``-n 3 --dist loadgroup``), tests spread one by one over the
    workers, except where a module shares state between its tests: a test that uses a module- or class-scoped
    fixture defined in its own module stays with its module's other such tests on one worker, so that fixture
    (often a gateway with its models) starts once — or, for a module of more than ``GROUP_SIZE`` such tests, in
    consecutive slices, one per worker at most, so that the fixture starts once a slice. Session fixtures start
    once per worker. Every worker computes the same groups from the same collection."""
    shared: dict[str, list[pytest.Item]] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        module_id = item.nodeid.split("::", 1)[0]
        if any(fixturedef.scope in ("module", "class") and fixturedef.baseid.startswith(module_id)
               for fixturedefs in info.name2fixturedefs.values() for fixturedef in fixturedefs):
            shared.setdefault(module_id, []).append(item)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    for module_id, group in shared.items():
        slices = max(1, min(workers, math.ceil(len(group) / GROUP_SIZE)))
        for i, item in enumerate(group):
            name = module_id if slices == 1 else f"{module_id}#{i * slices // len(group)}"
            item.add_marker(pytest.mark.xdist_group(name))


T = TypeVar("T")


def until(check: Callable[[], T | None], what: str, timeout: float = 90.0, every: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy (behaviour, not timing: the deadline is generous)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(every)


def redis_up(host: str = "127.0.0.1", port: int = 6379) -> bool:
    """Whether a Redis server answers there (tests that need one skip otherwise)."""
    try:
        import redis

        return bool(redis.Redis(host=host, port=port, socket_timeout=1).ping())
    except Exception:
        return False


PG_DSN = os.environ.get("TURNOUT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL server (dropped afterwards); skips if none answers."""
    psycopg = pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg: pip install 'turnout[scale]'")
    try:
        raw = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}: {exc}")
    name = f"turnout_test_{uuid.uuid4().hex[:10]}"
    yield name
    raw.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    raw.close()


def shared_data(*parts: str) -> Path:
    """A file or folder of the shared evaluation data: $TURNOUT_SHARED_DATA, else ../shared/data
    beside this checkout (where CI puts it). Skips, saying where it looked, when it is absent."""
    root = Path(os.environ.get("TURNOUT_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared evaluation data not found at {path} (set TURNOUT_SHARED_DATA)")
    return path


# Tests never reach paid APIs: engines only get loopback URLs, and no real keys are set.
for _var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
    os.environ.pop(_var, None)
# Fake keys for the loopback fakes: a remote engine whose api_key_env variable is unset is not
# started (turnout.engines.admission), so the engines of hybrid_config need one each.
os.environ["TURNOUT_TEST_FRONTIER_KEY"] = "test-frontier-key-not-real"
os.environ["ANTHROPIC_API_KEY"] = "test-anthropic-key-not-real"


class Upstream:
    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.url = proc.url
        self.client = httpx.Client(base_url=proc.url, timeout=10)

    def reset(self) -> None:
        self.client.post("/__control/reset").raise_for_status()

    def queue(self, *scenarios: Any) -> None:
        self.client.post("/__control/scenarios", json=list(scenarios)).raise_for_status()

    def default(self, scenario: Any) -> None:
        self.client.post("/__control/scenarios", json={"default": scenario}).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        data = self.client.get("/__control/requests").json()
        return data["requests"] if isinstance(data, dict) else data


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    with start_server("turnout.testing.upstream", "--model", "fake-frontier") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="session")
def anthropic_upstream() -> Iterator[Upstream]:
    with start_server("turnout.testing.anthropic_fake") as proc:
        yield Upstream(proc)


@pytest.fixture(scope="module")
def fake() -> Iterator[Proc]:
    """A module's own OpenAI-wire fake (the task tests script its planner answers)."""
    with start_server("turnout.testing.upstream", "--port", "0", add_port=False) as p:
        yield p


@pytest.fixture
def toolbox() -> Iterator[Proc]:
    """turnout.testing.toolbox: HTTP tools (send_email, create_ticket, ...) and their outbox."""
    with start_server("turnout.testing.toolbox", "--port", "0", add_port=False) as p:
        yield p


@pytest.fixture(autouse=False)
def clean_upstreams(upstream: Upstream, anthropic_upstream: Upstream) -> Iterator[None]:
    upstream.reset()
    anthropic_upstream.reset()
    yield


FAST_RESILIENCE = {
    "timeout": 5, "connect_timeout": 2, "first_token_timeout": 3, "idle_timeout": 2,
    "retries": 1, "backoff": 0.01, "max_retry_after": 2, "breaker_failures": 50, "breaker_cooldown": 30,
}


# Guards load the PII model and MiniLM at start (~2 s a gateway) and scan every request: off in
# the shared configs. A test that asserts guard behaviour opts in: hybrid_config(..., guards=GUARDS_ON).
GUARDS_ON: dict[str, Any] = {"enabled": True}


def hybrid_config(upstream_url: str, anthropic_url: str, **overrides: Any) -> dict[str, Any]:
    """Local llama.cpp + OpenAI-wire frontier + Anthropic fake; guards off unless ``guards=`` says."""
    cfg: dict[str, Any] = {
        "engines": {
            "local": {"dialect": "llamacpp", "n_ctx": 1024},
            "frontier": {
                "dialect": "openai", "locality": "remote", "base_url": upstream_url + "/v1", "model": "fake-frontier",
                "api_key_env": "TURNOUT_TEST_FRONTIER_KEY",
                "pricing": {"input_per_m": 2.5, "output_per_m": 10.0}, "resilience": dict(FAST_RESILIENCE),
            },
            "claude": {
                "dialect": "anthropic", "locality": "remote", "base_url": anthropic_url, "model": "fake-claude",
                "pricing": {"input_per_m": 3.0, "output_per_m": 15.0}, "resilience": dict(FAST_RESILIENCE),
            },
        },
        "routes": {
            "auto": {"chain": ["frontier", "local"]},
            "private": {"chain": ["local"]},
            "anthropic": {"chain": ["claude", "local"]},
            "remote-only": {"chain": ["frontier"]},
        },
        "rules": [
            {"name": "code-to-claude", "when": {"metadata": {"task": "code"}}, "route": "anthropic"},
        ],
        "guards": {"enabled": False},
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


class Gateway:
    def __init__(self, proc: Proc, db: Path) -> None:
        self.proc = proc
        self.url = proc.url
        self.db = db

    def ledger(self) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
        finally:
            conn.close()

    def ledger_after(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Rows past the first ``count``, once there are any: a stream's row is committed
        when the stream ends on the server, which can be just after the client returns."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            rows = self.ledger()
            if len(rows) > count or time.monotonic() > deadline:
                return rows[count:]
            time.sleep(0.05)

    def openai(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def _factory(tmp_path: Path, started: list[Proc]) -> Callable[..., Gateway]:

    def start(config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Gateway:
        db = tmp_path / f"ledger-{len(started)}.sqlite"
        args = ["serve", "--db", str(db)]
        if config is not None:
            path = tmp_path / f"turnout-{len(started)}.yaml"
            path.write_text(yaml.safe_dump(config))
            args += ["--config", str(path)]
        proc = start_server("turnout", *args, env=env, timeout=60, cwd=str(tmp_path))
        started.append(proc)
        return Gateway(proc, db)

    return start


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Proc] = []
    yield _factory(tmp_path, started)
    for proc in started:
        proc.stop()


def module_gateway(tmp_path_factory: pytest.TempPathFactory, config: dict[str, Any]) -> Iterator[Gateway]:
    """A gateway for a module-scoped fixture (stopped when the generator closes)."""
    started: list[Proc] = []
    yield _factory(tmp_path_factory.mktemp("hybrid"), started)(config)
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def hybrid(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
           anthropic_upstream: Upstream) -> Iterator[Gateway]:
    """One gateway for the session: local llama.cpp + OpenAI-wire frontier + Anthropic fake, guards off.
    Started once (the model loaded once) for every module that only needs *a* gateway with the common
    config; its ledger is shared, so tests read their own rows (``ledger_after``, ``ledger()[-1]``).
    A module that needs other settings defines its own ``hybrid`` (test_embedded_tools, test_guards_gateway)."""
    yield from module_gateway(tmp_path_factory, hybrid_config(upstream.url, anthropic_upstream.url))
