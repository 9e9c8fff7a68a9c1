"""Extension points are open: a plugin installed beside turnout (tests/plugins, a distribution
with entry points) is configured from turnout.yaml and serves over HTTP like a built-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.conftest import FAST_RESILIENCE, Upstream

PLUGINS = Path(__file__).parent / "plugins"


def plugin_env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}


def two_fakes(up: str, tmp: Path, route: dict) -> dict:  # type: ignore[type-arg]
    def fake(model: str) -> dict:  # type: ignore[type-arg]
        return {"dialect": "openai", "locality": "remote", "base_url": up + "/v1", "model": model,
                "resilience": dict(FAST_RESILIENCE)}

    return {"engines": {"first": fake("fake-first"), "second": fake("fake-second")},
            "routes": {"picked": route}, "guards": {"enabled": False},
            "storage": {"sqlite_path": str(tmp / "ledger.sqlite")}}


def test_a_plugin_strategy_routes_from_turnout_yaml(gateway_factory, upstream: Upstream, clean_upstreams,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    route = {"chain": ["first", "second"], "strategy": "last-first", "options": {"why": "newest engine first"}}
    gw = gateway_factory(two_fakes(upstream.url, tmp_path, route), env=plugin_env())
    resp = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                      json={"model": "picked", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-turnout-strategy"] == "last-first"
    assert resp.headers["x-turnout-engine"] == "second"
    assert resp.headers["x-turnout-reason"] == "last-first: newest engine first"
    assert resp.json()["model"] == "fake-second"
    assert [r["body"]["model"] for r in upstream.requests()] == ["fake-second"]
    row = gw.ledger()[-1]
    assert row["strategy"] == "last-first" and row["engine"] == "second"


def _check(tmp_path: Path, route: dict, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore[type-arg]
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(two_fakes("http://127.0.0.1:9", tmp_path, route)))
    return subprocess.run([sys.executable, "-m", "turnout", "config", "check", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_config_check_validates_a_plugin_strategys_own_settings(tmp_path: Path) -> None:
    ok = _check(tmp_path, {"chain": ["first", "second"], "strategy": "last-first", "options": {"why": "x"}},
                plugin_env())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _check(tmp_path, {"chain": ["first", "second"], "strategy": "last-first"}, plugin_env())
    assert bad.returncode != 0
    assert "options.why" in bad.stdout + bad.stderr


def test_an_unregistered_strategy_is_refused_naming_the_registered_ones(tmp_path: Path) -> None:
    out = _check(tmp_path, {"chain": ["first", "second"], "strategy": "last-first"})  # plugin not installed
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "no routing strategy 'last-first' is registered" in text
    assert "cascade" in text and "learned" in text and "rules" in text
    assert "Traceback" not in text
