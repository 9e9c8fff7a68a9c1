"""The plugin example of docs/plugins.md works: examples/plugins/turnout_bedrock.py (a dialect for
Amazon Bedrock's Converse API) is "installed" as pip would leave it (the module plus a dist-info
with the entry points of examples/plugins/pyproject.toml) on a real gateway's PYTHONPATH, with the
example's own turnout.yaml, and answers through examples/plugins/bedrock_fake.py, a FAKE of the
Converse wire format on loopback (Bedrock is paid). Covered: the request's translation, usage from
the stream's last event, and each Bedrock failure mapped onto the EngineError class that decides
retry, fallback, rescue and the client's status."""

from __future__ import annotations

import json
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
from turnout.testing.procs import Proc, start_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins"
KEY = "test-bedrock-key"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example distribution as pip installs it: the module and its entry points."""
    where = tmp_path_factory.mktemp("site")
    shutil.copy(EXAMPLE / "turnout_bedrock.py", where / "turnout_bedrock.py")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = where / f"turnout_bedrock-{project['version']}.dist-info"
    info.mkdir()
    name, version = project["name"], project["version"]
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items()) + "\n"
        for group, entries in project["entry-points"].items()))
    return where


def _env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TURNOUT_TEST_BEDROCK_KEY": KEY, "TURNOUT_TEST_WRONG_KEY": "not-the-key"}


@pytest.fixture(scope="module")
def bedrock() -> Iterator[Proc]:
    env = {"PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with start_server("bedrock_fake", "--api-key", KEY, env=env) as proc:
        yield proc


def seen(bedrock: Proc) -> list[dict[str, Any]]:
    return list(httpx.get(bedrock.url + "/_fake/requests", timeout=10).json())


def example_config(bedrock_url: str, upstream_url: str) -> dict[str, Any]:
    """examples/plugins/turnout.yaml pointed at the fakes, plus one engine per Bedrock failure."""
    cfg = yaml.safe_load((EXAMPLE / "turnout.yaml").read_text())
    nova = cfg["engines"]["nova"]
    nova.update(endpoint_url=bedrock_url, api_key_env="TURNOUT_TEST_BEDROCK_KEY",
                resilience=dict(FAST_RESILIENCE))
    # the example's llama.cpp model, as an OpenAI-wire fake: nothing to load
    cfg["engines"]["local"] = {"dialect": "openai", "locality": "local", "base_url": upstream_url + "/v1",
                               "model": "fake-local", "context_window": 32000,
                               "resilience": dict(FAST_RESILIENCE)}
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("throttled", "@throttle", {}), ("short", "@too-long", {"context_window": 1000}),
        ("cut", "@cut", {}), ("stream-throttled", "@stream-throttle", {})]
    for name, switch, extra in variants:
        cfg["engines"][f"nova-{name}"] = {**nova, "model_id": nova["model_id"] + switch, **extra}
        cfg["routes"][name] = {"chain": [f"nova-{name}", "local"]}
    cfg["engines"]["nova-locked"] = {**nova, "api_key_env": "TURNOUT_TEST_WRONG_KEY"}
    cfg["routes"]["locked"] = {"chain": ["nova-locked", "local"]}  # an engine's own name is a model too
    cfg["guards"] = {"enabled": False}
    return cfg


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, site: Path, bedrock: Proc,
       upstream: Upstream) -> Iterator[Gateway]:
    started: list[Proc] = []
    start = _factory(tmp_path_factory.mktemp("gw"), started)
    yield start(example_config(bedrock.url, upstream.url), env=_env(site))
    for proc in started:
        proc.stop()


def chat(gw: Gateway, model: str, text: str = "what is a plugin", **kw: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": text}], **kw})


def stream_text(gw: Gateway, model: str, text: str = "what is a plugin",
                ) -> tuple[httpx.Response, str, list[Any]]:
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": text}], "stream": True,
            "stream_options": {"include_usage": True}}) as resp:
        lines = [ln[6:] for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines
    chunks = [json.loads(ln) for ln in lines[:-1]]
    text_ = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return resp, text_, chunks


def test_the_example_config_is_valid_once_the_plugin_is_installed(site: Path, tmp_path: Path) -> None:
    def check(cfg: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "turnout.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return subprocess.run([sys.executable, "-m", "turnout", "config", "check", str(path)],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **env})

    cfg = yaml.safe_load((EXAMPLE / "turnout.yaml").read_text())
    ok = check(cfg, _env(site))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    del cfg["engines"]["nova"]["model_id"]
    cfg["engines"]["nova"]["modelid"] = "typo"
    bad = check(cfg, _env(site))
    assert bad.returncode != 0
    assert "engines.nova.model_id: Field required -> add it" in bad.stdout + bad.stderr
    assert "engines.nova.modelid: Extra inputs are not permitted" in bad.stdout + bad.stderr


def test_whole_and_streamed_answers_with_bedrocks_own_usage(gw: Gateway, bedrock: Proc) -> None:
    before = len(gw.ledger())
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=60, json={
        "model": "auto", "max_tokens": 50, "temperature": 0.2,
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "hello bedrock"}]})
    assert r.status_code == 200, r.text
    assert r.headers["x-turnout-engine"] == "nova"
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "echo: hello bedrock"
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]  # the fake's counts: words + 10
    assert usage["prompt_tokens"] == 4 + 10 and usage["completion_tokens"] == 3 + 10
    sent = seen(bedrock)[-1]
    assert sent["model"] == "amazon.nova-lite-v1:0" and sent["authorized"]
    assert sent["body"] == {"system": [{"text": "be brief"}],
                            "inferenceConfig": {"maxTokens": 50, "temperature": 0.2},
                            "messages": [{"role": "user", "content": [{"text": "hello bedrock"}]}]}
    cut = chat(gw, "nova", max_tokens=2)
    assert cut.json()["choices"][0]["finish_reason"] == "length"  # stopReason max_tokens

    resp, text, chunks = stream_text(gw, "nova")
    assert resp.headers["x-turnout-engine"] == "nova" and text == "echo: what is a plugin"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4 + 10, "completion_tokens": 5 + 10, "total_tokens": 29}
    rows = gw.ledger_after(before + 2)
    assert (rows[0]["engine"], rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == ("nova", 14, 15)


@pytest.mark.parametrize(("route", "hop", "tries"), [
    ("throttled", "nova-throttled:upstream_rate_limited", 2),  # 429 ThrottlingException: retried, then next
    ("short", "nova-short:context_length_exceeded", 1),       # "Input is too long": a larger context_window
    ("locked", "nova-locked:upstream_error", 1),              # 403 AccessDeniedException: next, no retry
])
def test_a_bedrock_failure_falls_back_as_its_error_class_says(gw: Gateway, bedrock: Proc, route: str,
                                                              hop: str, tries: int) -> None:
    before = len(seen(bedrock))
    r = chat(gw, route)
    assert r.status_code == 200, r.text
    assert r.headers["x-turnout-engine"] == "local" and r.headers["x-turnout-fallbacks"] == hop
    assert r.json()["choices"][0]["message"]["content"] == "echo: what is a plugin"
    assert len(seen(bedrock)) - before == tries


def test_a_bedrock_failure_with_no_engine_left_reaches_the_client_with_its_status(gw: Gateway) -> None:
    throttled = chat(gw, "nova-throttled")
    assert throttled.status_code == 503 and throttled.json()["error"]["code"] == "all_engines_failed"
    # the caller learns the hop and its kind of failure; the upstream's own words stay in the ledger
    assert "nova-throttled: upstream_rate_limited" in throttled.json()["error"]["message"]
    hops = json.loads(next(r for r in gw.ledger() if r["request_id"] == throttled.headers["x-request-id"])["hops"])
    assert "ThrottlingException" in hops[0]["error"], hops
    short = chat(gw, "nova-short")
    assert short.status_code == 400 and short.json()["error"]["code"] == "context_length_exceeded"
    assert set(short.json()["error"]) == {"message", "type", "param", "code"}


def test_stream_failures_fall_back_before_output_and_are_rescued_after(gw: Gateway) -> None:
    before = len(gw.ledger())
    resp, text, _ = stream_text(gw, "stream-throttled")  # an exception message before any text
    assert resp.headers["x-turnout-engine"] == "local" and text == "echo: what is a plugin"
    assert resp.headers["x-turnout-fallbacks"] == "nova-stream-throttled:upstream_rate_limited"
    # cut after two deltas, without messageStop: not whole, so the next engine continues it
    resp, text, chunks = stream_text(gw, "cut")
    assert text == "echo: what is a plugin"
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    row = gw.ledger_after(before + 1)[-1]
    hops = json.loads(row["hops"])
    assert [(h["engine"], h["rescue"], h["by"]) for h in hops] == [("nova-cut", "restart", "local")]
    assert "messageStop" in hops[0]["error"]
