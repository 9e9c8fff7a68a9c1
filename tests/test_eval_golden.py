"""`turnout eval golden`: checks, file errors, and the regression gate against a running gateway."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Gateway, Upstream
from tests.runcli import run_cli
from turnout.evals.golden_cli import gate, load_golden, passes


def test_checks() -> None:
    assert passes({"contains": "paris"}, "The capital is Paris.")
    assert not passes({"contains": "BANANA", "case_sensitive": True}, "Banana")
    assert passes({"equals": "4"}, " 4. ") and not passes({"equals": "4"}, "44")
    assert passes({"regex": r"\b(8|eight)\b"}, "Eight legs") and not passes({"regex": r"\b8\b"}, "18")


def test_bad_golden_files_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "g.jsonl"
    for text, msg in [('{"prompt": "x"}', "exactly one of"), ('{"prompt": "x", "regex": "("}', "bad regex"),
                      ("not json", "not JSON"), ('{"contains": "x"}', "needs 'prompt'"),
                      ("# only a comment", "no items")]:
        f.write_text(text + "\n")
        with pytest.raises(ValueError, match=msg):
            load_golden(str(f))


def test_gate_reasons() -> None:
    now = {"pass_rate": 0.5, "items": [{"id": "a", "pass": True}, {"id": "b", "pass": False}]}
    base = {"pass_rate": 1.0, "items": [{"id": "a", "pass": True}, {"id": "b", "pass": True}]}
    assert gate(now, None, 0.0, 0.0) == []
    why = gate(now, base, 0.1, 0.6)
    assert len(why) == 3 and "min-pass" in why[0] and "fell 1.000 -> 0.500" in why[1] and ": b" in why[2]
    assert gate(now, base, 0.6, 0.0) == [why[2]]  # the drop is allowed, the lost item is still named


def _golden(gw: Gateway, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("eval", "golden", "--golden", str(path), "--url", gw.url, "--model", "auto", *args)


def test_golden_run_and_regression_gate(hybrid: Gateway, upstream: Upstream, tmp_path: Path) -> None:
    upstream.reset()  # the loopback upstream answers "echo: <prompt>"
    golden = tmp_path / "g.jsonl"
    golden.write_text('{"id": "ping", "prompt": "ping pong", "contains": "ping pong", "model": "remote-only"}\n'
                      '{"id": "nope", "prompt": "hello", "equals": "goodbye", "model": "remote-only"}\n')
    base = tmp_path / "base.json"
    out = _golden(hybrid, golden, "--save", str(base))
    assert out.returncode == 0, out.stderr
    report = json.loads(base.read_text())
    assert report["passed"] == 1 and report["n"] == 2 and report["gate"]["ok"]
    assert [r["engine"] for r in report["items"]] == ["frontier", "frontier"]
    assert len(report["weights_sha256"]["local"]) == 64  # what the run was measured on
    # the same set where "ping" now fails: the gate names it and exits 1
    golden.write_text('{"id": "ping", "prompt": "ping pong", "contains": "table tennis", "model": "remote-only"}\n'
                      '{"id": "nope", "prompt": "hello", "equals": "goodbye", "model": "remote-only"}\n')
    out = _golden(hybrid, golden, "--baseline", str(base))
    assert out.returncode == 1
    assert "fell 0.500 -> 0.000" in out.stdout and "passed in the baseline and fail now: ping" in out.stdout
    assert _golden(hybrid, golden, "--min-pass", "0.5").returncode == 1
