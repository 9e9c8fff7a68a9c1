"""Misconfiguration fails loudly, through real gateway processes on loopback: an unset
``api_key_env`` variable and a license that ``policy.licenses`` does not allow keep an engine
from starting (``/readyz`` and ``turnout models`` say why, nothing is sent upstream);
``turnout config check`` verifies router artifacts, model files and pins; ``serve`` refuses a
missing router artifact in one line; the golden gate fails when items error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream, hybrid_config
from tests.runcli import run_cli

ROOT = Path(__file__).resolve().parents[1]
UNSET = "TURNOUT_TEST_NEVER_SET_KEY"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=ROOT, env={**os.environ, **(env or {})})


def remote_only(upstream: Upstream, **engine: Any) -> dict[str, Any]:
    return {
        "engines": {
            "frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                         "model": "fake-frontier", "resilience": dict(FAST_RESILIENCE), **engine},
            "backup": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                       "model": "fake-frontier", "resilience": dict(FAST_RESILIENCE)},
        },
        "routes": {"auto": {"chain": ["frontier", "backup"]}, "only": {"chain": ["frontier"]}},
    }


@pytest.mark.usefixtures("clean_upstreams")
def test_an_unset_api_key_variable_keeps_the_engine_from_starting(gateway_factory: Callable[..., Gateway],
                                                                  upstream: Upstream) -> None:
    assert UNSET not in os.environ
    gw = gateway_factory(remote_only(upstream, api_key_env=UNSET))
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "degraded"
    engines = ready.json()["engines"]
    assert engines["frontier"]["ready"] is False and UNSET in engines["frontier"]["detail"]
    assert engines["backup"]["ready"] is True
    warnings = [line for line in gw.proc.output().splitlines() if "not started" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and UNSET in warnings[0]  # one line at start-up

    client = gw.openai()
    r = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert r.headers["x-turnout-engine"] == "backup"  # the chain went on to the next engine
    only = httpx.post(gw.url + "/v1/chat/completions",
                      json={"model": "only", "messages": [{"role": "user", "content": "hi"}]})
    assert only.status_code == 503 and "frontier: engine_unavailable (not started" in only.json()["error"]["message"]
    assert UNSET not in only.text  # the variable's name is the operator's: /readyz for a viewer, the log, the ledger
    assert len(upstream.requests()) == 1  # only backup's request left the gateway: nothing without credentials

    with_key = gateway_factory(remote_only(upstream, api_key_env=UNSET), env={UNSET: "sk-test-not-real"})
    assert httpx.get(with_key.url + "/readyz").status_code == 200
    assert "not started" not in with_key.proc.output()


@pytest.mark.usefixtures("clean_upstreams")
def test_license_policy_refuses_engines_it_does_not_allow(gateway_factory: Callable[..., Gateway],
                                                          upstream: Upstream, anthropic_upstream: Upstream,
                                                          tmp_path: Path) -> None:
    cfg = hybrid_config(upstream.url, anthropic_upstream.url)
    cfg["engines"]["frontier"]["license"] = "LicenseRef-Fake-Terms"
    cfg["engines"]["claude"]["license"] = "CC-BY-NC-4.0"
    cfg["routes"]["anthropic"] = {"chain": ["claude", "frontier"]}
    cfg["policy"] = {"licenses": {"allow": ["apache-2.0", "MIT", "LicenseRef-Fake-Terms", "CC-BY-NC-4.0"],
                                  "deny": ["cc-by-nc-4.0"]}}
    gw = gateway_factory(cfg)
    engines = httpx.get(gw.url + "/readyz").json()["engines"]
    assert engines["local"]["ready"] is True  # Apache-2.0 (declared apache-2.0: ids match without case)
    assert engines["frontier"]["ready"] is True
    assert engines["claude"]["ready"] is False
    assert "policy.licenses" in engines["claude"]["detail"] and "CC-BY-NC-4.0 is denied" in engines["claude"]["detail"]
    r = gw.openai().chat.completions.with_raw_response.create(
        model="anthropic", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.headers["x-turnout-engine"] == "frontier"  # claude refused: its route fell back
    assert anthropic_upstream.requests() == []

    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    listed = cli("models", "--config", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["engine"]: r for r in json.loads(listed.stdout)}
    assert rows["claude"]["status"] == "REFUSED" and "is denied" in rows["claude"]["refused"]
    assert rows["frontier"]["status"] == "remote" and rows["frontier"]["refused"] is None
    table = cli("models", "--config", str(path))
    assert "REFUSED" in table.stdout and "CC-BY-NC-4.0 is denied" in table.stdout
    assert cli("models", "verify", "--config", str(path)).returncode == 1

    cfg["policy"] = {"licenses": {"allow": ["MIT"]}}  # now even the embedded engine is refused
    path.write_text(yaml.safe_dump(cfg))
    check = cli("config", "check", str(path))
    assert check.returncode == 1 and "engines.local.license" in check.stderr and "Apache-2.0" in check.stderr
    assert "engines.frontier.license" in check.stderr and "engines.claude.license" in check.stderr
    cfg["policy"] = {"licenses": {"allow": ["not a license ((("]}}
    path.write_text(yaml.safe_dump(cfg))
    bad = cli("config", "check", str(path))
    assert bad.returncode != 0 and "licenses.allow[0]" in bad.stderr and "Traceback" not in bad.stderr


def test_config_check_verifies_what_the_configuration_points_to(tmp_path: Path) -> None:
    def check(cfg: dict[str, Any], **env: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return cli("config", "check", str(path), env=env)

    base: dict[str, Any] = {"engines": {"local": {"dialect": "llamacpp"}}, "routes": {"auto": {"chain": ["local"]}},
                            "guards": {"enabled": False}}
    ok = check(base)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr

    missing_model = {**base, "engines": {"local": {"dialect": "llamacpp", "model_path": str(tmp_path / "no.gguf")}}}
    r = check(missing_model)
    assert r.returncode == 1 and "engines.local" in r.stderr and "no.gguf" in r.stderr

    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"not a model at all")
    r = check({**base, "engines": {"local": {"dialect": "llamacpp", "model_path": str(not_gguf)}}})
    assert r.returncode == 1 and "is not a GGUF file" in r.stderr

    r = check({**base, "engines": {"local": {"dialect": "llamacpp", "sha256": "0" * 64}}})
    assert r.returncode == 1 and "engines.local.sha256" in r.stderr and "the pin is 000" in r.stderr

    learned = {"engines": {"a": {"dialect": "llamacpp"}, "b": {"dialect": "llamacpp"}}, "guards": {"enabled": False},
               "routes": {"auto": {"chain": ["a", "b"], "strategy": "learned", "router": str(tmp_path / "none.npz")}}}
    r = check(learned)
    assert r.returncode == 1 and "routes.auto.router" in r.stderr and "none.npz" in r.stderr
    (tmp_path / "junk.npz").write_bytes(b"junk")
    learned["routes"]["auto"]["router"] = str(tmp_path / "junk.npz")
    r = check(learned)
    assert r.returncode == 1 and "not a turnout router artifact" in r.stderr

    keyed = {**base, "engines": {**base["engines"], "api": {"dialect": "openai", "locality": "remote",
                                                            "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                                            "api_key_env": UNSET}}}
    r = check(keyed)
    assert r.returncode == 0 and f"warning: engines.api.api_key_env: environment variable {UNSET}" in r.stderr


def test_serve_refuses_a_missing_router_artifact_in_one_line(tmp_path: Path) -> None:
    cfg = {"engines": {"a": {"dialect": "llamacpp"}, "b": {"dialect": "llamacpp"}}, "guards": {"enabled": False},
           "routes": {"auto": {"chain": ["a", "b"], "strategy": "learned", "router": str(tmp_path / "none.npz")}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", "0", "--db",
                        str(tmp_path / "db.sqlite")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "routes.auto.router" in r.stderr and "none.npz" in r.stderr and "Traceback" not in r.stderr


def test_golden_gate_fails_when_items_error(hybrid: Gateway, upstream: Upstream, tmp_path: Path) -> None:
    upstream.reset()
    golden = tmp_path / "g.jsonl"
    golden.write_text('{"id": "a", "prompt": "ping", "contains": "ping", "model": "no-such-route"}\n'
                      '{"id": "b", "prompt": "pong", "contains": "pong", "model": "no-such-route"}\n')
    out = run_cli("eval", "golden", "--golden", str(golden), "--url", hybrid.url)
    assert out.returncode == 1, out.stdout
    assert "gate: FAIL: 2 of 2 item(s) got an error instead of an answer (HTTP 404" in out.stdout
    assert "gate: ok" not in out.stdout


def test_gate_counts_any_error_as_a_failure() -> None:
    from turnout.evals.golden_cli import gate

    rows = [{"id": "a", "pass": False, "error": "HTTP 401: invalid API key", "status": 401},
            {"id": "b", "pass": True, "error": None, "status": 200}]
    why = gate({"pass_rate": 0.5, "items": rows}, None, 0.0, 0.0)
    assert why == ["1 of 2 item(s) got an error instead of an answer (HTTP 401; first: HTTP 401: invalid API key)"]
    assert gate({"pass_rate": 1.0, "items": rows[1:]}, None, 0.0, 0.0) == []
