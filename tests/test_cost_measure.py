"""`turnout cost --measure ENGINE`: a configured engine measured for real — the embedded
llama.cpp model started in-process with a few short streamed generations, and an
OpenAI-dialect engine over HTTP (the loopback upstream) — the figure feeding the TCO report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.conftest import Upstream, hybrid_config
from tests.runcli import run_cli


def _cost(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("cost", *args)


def test_measure_the_embedded_engine_feeds_the_report(tmp_path: Path) -> None:
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(yaml.safe_dump({
        "engines": {"local": {"dialect": "llamacpp", "n_ctx": 512, "pricing": {"hourly_cost": 0.4}}},
        "routes": {"auto": {"chain": ["local"]}},
    }))
    out = _cost("--measure", "local", "--config", str(cfg), "--requests", "3", "--concurrency", "2",
                "--max-tokens", "12", "--daily-tokens", "5M", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    m = report["measurement"]
    assert m["succeeded"] == 3 and m["token_source"] == "usage" and m["model"] == "smollm2-135m-instruct"
    assert 3 <= m["completion_tokens"] <= 36 and m["tokens_per_second"] > 0
    assert m["ttft_p50_seconds"] is not None and m["ttft_p50_seconds"] < m["latency_p50_seconds"]
    fleet = report["fleet"]
    assert fleet["inputs"]["tokens_per_second"] == m["tokens_per_second"]  # the measured figure is the model's input
    assert fleet["inputs"]["hourly_cost"] == 0.4  # the engine's configured hourly cost, as --hourly-cost was not given
    expected = -(-5e6 * 1.15 // (m["tokens_per_second"] * 86_400))  # ceil
    assert fleet["accelerators"] == expected

    text = _cost("--measure", "local", "--config", str(cfg), "--requests", "2", "--max-tokens", "6",
                 "--daily-tokens", "1M", "--hourly-cost", "1")
    assert text.returncode == 0, text.stderr
    assert "measured smollm2-135m-instruct at engine:local" in text.stdout and "accelerators" in text.stdout
    print(f"embedded SmolLM2-135M: {m['tokens_per_second']:.1f} tokens/s at concurrency 2 "
          f"({m['completion_tokens']} tokens in {m['wall_seconds']:.2f} s)")


def test_measure_an_openai_engine_and_bad_names(tmp_path: Path, upstream: Upstream,
                                                anthropic_upstream: Upstream) -> None:
    upstream.reset()
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(yaml.safe_dump(hybrid_config(upstream.url, anthropic_upstream.url)))
    out = _cost("--measure", "frontier", "--config", str(cfg), "--requests", "4", "--max-tokens", "8", "--json")
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)["measurement"]
    assert m["succeeded"] == 4 and m["base_url"] == upstream.url + "/v1" and m["model"] == "fake-frontier"
    assert len(upstream.requests()) == 4 and m["completion_tokens"] > 0

    missing = _cost("--measure", "nope", "--config", str(cfg))
    assert missing.returncode == 2 and "no engine named 'nope'" in missing.stderr and "frontier" in missing.stderr
    anthropic = _cost("--measure", "claude", "--config", str(cfg))
    assert anthropic.returncode == 2 and "'openai' or 'llamacpp'" in anthropic.stderr
    no_file = _cost("--measure", "local", "--config", str(tmp_path / "absent.yaml"))
    assert no_file.returncode == 2 and "no such configuration file" in no_file.stderr
    assert "Traceback" not in missing.stderr + anthropic.stderr + no_file.stderr
