"""Open extension points: a dialect and a guard from a third-party distribution work from
turnout.yaml exactly like the built-ins, which register through the same entry-point groups.

The plugin (tests/plugins/turnout_shout.py) is "installed" the way pip would leave it: the module
plus a ``turnout_shout-1.0.dist-info`` folder with METADATA and entry_points.txt, in a directory
put on the PYTHONPATH of a real gateway process (and of ``turnout config check``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream, _factory
from turnout import plugins
from turnout.config import ConfigError, parse_config
from turnout.testing.procs import Proc

ROOT = Path(__file__).resolve().parents[1]

ENTRY_POINTS = """\
[turnout.engines]
shout = turnout_shout:ShoutEngine

[turnout.guards]
codewords = turnout_shout:CodewordGuard

[turnout.strategies]
last-first = turnout_shout:LastFirstStrategy

[turnout.balancers]
pinned = turnout_shout:PinnedBalancer
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed-looking plugin distribution."""
    where = tmp_path_factory.mktemp("site")
    shutil.copy(ROOT / "tests" / "plugins" / "turnout_shout.py", where / "turnout_shout.py")
    info = where / "turnout_shout-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: turnout-shout\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return where


def _env(site: Path) -> dict[str, str]:
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "TURNOUT_TEST_FRONTIER_KEY": "test-key"}


def _config(upstream: Upstream, **guards: Any) -> dict[str, Any]:
    return {
        "engines": {
            "frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                         "model": "fake-frontier", "api_key_env": "TURNOUT_TEST_FRONTIER_KEY",
                         "resilience": dict(FAST_RESILIENCE)},
            "loud": {"dialect": "shout", "suffix": " (shouted)", "repeat": 2},
        },
        "routes": {
            "auto": {"chain": ["frontier", "loud"]},
            "shout": {"chain": ["loud"]},
            "remote-only": {"chain": ["frontier"]},
        },
        "guards": {"detectors": ["secrets", "codewords"], "options": {"codewords": {"words": ["falcon"]}},
                   "actions": {"codename": "keep_local", "secret": "keep_local"}, **guards},
    }


@pytest.fixture
def gateway(tmp_path: Path, site: Path, upstream: Upstream) -> Iterator[Any]:
    started: list[Proc] = []
    start = _factory(tmp_path, started)
    yield lambda cfg: start(cfg, env=_env(site))
    for proc in started:
        proc.stop()


def _chat(gw: Gateway, model: str, text: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": text}]})


def test_pyproject_registers_the_builtins_as_plugins_register() -> None:
    """turnout's own dialects and guards are entry points in pyproject.toml; the source-tree
    fallback in turnout.plugins lists exactly the same ones."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert meta[plugins.ENGINES] == plugins.BUILTIN[plugins.ENGINES]
    assert meta[plugins.GUARDS] == plugins.BUILTIN[plugins.GUARDS]
    assert meta[plugins.STRATEGIES] == plugins.BUILTIN[plugins.STRATEGIES]
    assert meta[plugins.BALANCERS] == plugins.BUILTIN[plugins.BALANCERS]


def test_an_unknown_dialect_or_guard_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config({"engines": {"b": {"dialect": "bedrock", "region": "eu"}}}, "t.yaml")
    assert "engines.b: unknown dialect 'bedrock' -> set 'dialect' to one of: llamacpp, openai, anthropic, minilm" \
        in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        parse_config({"engines": {"m": {"dialect": "minilm"}}, "guards": {"detectors": ["pii", "codewords"]}})
    assert "guards.detectors: unknown guard 'codewords' -> use registered guards: secrets, pii, injection" \
        in str(bad.value)


def test_each_builtin_dialect_validates_its_own_fields() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config({"engines": {"m": {"dialect": "minilm", "n_ctx": 512}, "l": {"dialect": "llamacpp", "n_ctx": 1}}})
    text = str(bad.value)
    assert "engines.m.n_ctx: Extra inputs are not permitted -> remove it or check its spelling" in text
    assert "engines.l.n_ctx: Input should be greater than or equal to 128" in text
    cfg = parse_config({"engines": {"l": {"dialect": "llamacpp", "n_ctx": 512}}})
    assert type(cfg.engines["l"]).__name__ == "LlamaCppEngineConfig" and cfg.engines["l"].n_ctx == 512  # type: ignore[attr-defined]


def _check(site: Path, tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "turnout", "config", "check", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **_env(site)})


def test_config_check_validates_plugin_fields(site: Path, tmp_path: Path, upstream: Upstream) -> None:
    ok = _check(site, tmp_path, _config(upstream))
    assert ok.returncode == 0, ok.stderr
    assert "route shout: loud" in ok.stdout
    cfg = _config(upstream)
    del cfg["engines"]["loud"]["suffix"]
    cfg["engines"]["loud"]["volume"] = 11
    cfg["guards"]["options"]["codewords"] = {"words": []}
    bad = _check(site, tmp_path, cfg)
    assert bad.returncode != 0
    out = bad.stdout + bad.stderr
    assert "engines.loud.suffix: Field required -> add it" in out
    assert "engines.loud.volume: Extra inputs are not permitted -> remove it or check its spelling" in out
    without = _check(tmp_path, tmp_path, _config(upstream))  # the plugin not installed: a clear refusal
    assert without.returncode != 0
    assert "set 'dialect' to one of: llamacpp, openai, anthropic, minilm" in without.stdout + without.stderr


@pytest.mark.usefixtures("clean_upstreams")
def test_a_plugin_dialect_answers_with_its_own_config(gateway: Any, upstream: Upstream) -> None:
    gw: Gateway = gateway(_config(upstream))
    r = _chat(gw, "shout", "hello there")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "HELLO THERE HELLO THERE (shouted)"
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30,
                      json={"model": "shout", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as s:
        body = "".join(s.iter_text())
    assert s.status_code == 200 and '"HI "' in body and "[DONE]" in body
    rows = gw.ledger_after(0)
    assert rows[0]["engine"] == "loud" and rows[0]["status"] == "ok"


@pytest.mark.usefixtures("clean_upstreams")
def test_a_plugin_guard_finding_labels_and_routes_per_policy(gateway: Any, upstream: Upstream) -> None:
    """``codename: keep_local``: a request naming a codeword never reaches the remote engine; it is
    answered by a local one (the plugin dialect's), and the finding is in the ledger's labels."""
    gw: Gateway = gateway(_config(upstream))
    clean = _chat(gw, "auto", "tell me about birds")
    assert clean.status_code == 200 and clean.json()["choices"][0]["message"]["content"].startswith("echo:")
    assert len(upstream.requests()) == 1
    secret = _chat(gw, "auto", "status of project Falcon?")
    assert secret.status_code == 200, secret.text
    assert secret.json()["choices"][0]["message"]["content"].startswith("STATUS OF PROJECT FALCON?")
    assert len(upstream.requests()) == 1  # the remote engine never saw it
    rows = gw.ledger_after(1)
    assert [r["engine"] for r in gw.ledger()] == ["frontier", "loud"] and rows
    labels = [set(filter(None, r["labels"].split(","))) for r in gw.ledger()]
    assert "codename" not in labels[0] and "codename" in labels[1]


@pytest.mark.usefixtures("clean_upstreams")
def test_a_plugin_guard_finding_is_refused_where_no_local_engine_may_take_it(gateway: Any,
                                                                            upstream: Upstream) -> None:
    cfg = _config(upstream)
    del cfg["engines"]["loud"]
    cfg["routes"] = {"auto": {"chain": ["frontier"]}}
    gw: Gateway = gateway(cfg)
    refused = _chat(gw, "auto", "the FALCON file")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "no_local_engine"
    assert "codename" in refused.json()["error"]["message"]
    assert upstream.requests() == []
    allowed = _chat(gw, "auto", "the sparrow file")
    assert allowed.status_code == 200 and len(upstream.requests()) == 1



def test_a_stream_that_is_not_a_generator_is_relayed_and_released() -> None:
    """Engine.stream promises an AsyncIterator, not a generator: a plugin may return any async
    iterator, which has no aclose(); the resilience wrapper still relays it and frees its slot."""
    import asyncio

    from turnout.config import Resilience
    from turnout.engines.base import Delta
    from turnout.engines.resilience import ResilientEngine
    from turnout.protocol import ChatRequest

    class Chunks:
        def __init__(self) -> None:
            self.items = [Delta(content="a"), Delta(content="b"), Delta(finish_reason="stop")]

        def __aiter__(self) -> Chunks:
            return self

        async def __anext__(self) -> Delta:
            if not self.items:
                raise StopAsyncIteration
            return self.items.pop(0)

    class Iterating(ShoutLike):
        def stream(self, req: ChatRequest) -> Any:
            return Chunks()

    async def run() -> list[str | None]:
        engine = ResilientEngine(Iterating(), Resilience(max_concurrency=1, max_queue=0))
        req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}]})
        first = [d.content async for d in engine.stream(req)]
        second = [d.content async for d in engine.stream(req)]  # the one slot was released
        return first + second

    assert asyncio.run(run()) == ["a", "b", None, "a", "b", None]


class ShoutLike:
    """A minimal engine for the unit test above (only what ResilientEngine touches)."""

    def __init__(self) -> None:
        from turnout.engines.base import EngineInfo

        self.info = EngineInfo(name="it", dialect="test", model="m", locality="local")


@pytest.mark.usefixtures("clean_upstreams")
def test_a_plugin_strategy_routes_from_turnout_yaml(gateway: Any, upstream: Upstream) -> None:
    cfg = _config(upstream)
    cfg["routes"]["picked"] = {"chain": ["frontier", "loud"], "strategy": "last-first",
                               "options": {"why": "the local engine first"}}
    gw: Gateway = gateway(cfg)
    r = _chat(gw, "picked", "hello there")
    assert r.status_code == 200, r.text
    assert r.headers["x-turnout-strategy"] == "last-first" and r.headers["x-turnout-engine"] == "loud"
    assert r.headers["x-turnout-reason"] == "last-first: the local engine first"
    assert upstream.requests() == []  # the chain's first engine was not asked
    row = gw.ledger_after(0)[-1]
    assert row["strategy"] == "last-first" and row["engine"] == "loud"


def test_config_check_validates_a_plugin_strategys_own_settings(site: Path, tmp_path: Path, upstream: Upstream) -> None:
    cfg = _config(upstream)
    cfg["routes"]["picked"] = {"chain": ["frontier", "loud"], "strategy": "last-first", "options": {"why": "x"}}
    ok = _check(site, tmp_path, cfg)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    del cfg["routes"]["picked"]["options"]
    bad = _check(site, tmp_path, cfg)
    assert bad.returncode != 0 and "options.why" in bad.stdout + bad.stderr
    del cfg["engines"]["loud"]
    cfg["routes"] = {"picked": {"chain": ["frontier"], "strategy": "last-first", "options": {"why": "x"}}}
    cfg["guards"] = {}
    without = _check(tmp_path, tmp_path, cfg)  # the plugin not installed: a clear refusal
    text = without.stdout + without.stderr
    assert without.returncode != 0 and "Traceback" not in text
    assert "unknown routing strategy 'last-first' -> use a registered one: rules, learned, cascade" in text


def test_a_plugin_balance_strategy_places_a_pools_requests(gateway: Any, upstream: Upstream) -> None:
    cfg = _config(upstream)
    cfg["engines"]["pair"] = {"dialect": "openai", "locality": "local", "model": "fake-local", "balance": "pinned",
                              "endpoints": [{"url": upstream.url + "/v1", "name": n} for n in ("one", "two")],
                              "pool": {"options": {"endpoint": "two"}}, "resilience": dict(FAST_RESILIENCE)}
    gw: Gateway = gateway(cfg)
    got = [_chat(gw, "pair", "hello there") for _ in range(3)]
    assert all(r.status_code == 200 for r in got), got[0].text
    assert [r.headers["x-turnout-endpoint"] for r in got] == ["two", "two", "two"]
    cfg["engines"]["pair"]["balance"] = "pinned-nowhere"
    with pytest.raises(ConfigError, match="unknown balance strategy 'pinned-nowhere'"):
        parse_config(cfg)
