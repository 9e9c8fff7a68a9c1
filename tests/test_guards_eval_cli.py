"""`turnout eval guards` end to end on small slices, as a subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# shared/ sits beside the clone (CI) or at /work/shared (a developer's machine)
SHARED = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.exists()),
              Path("/nonexistent"))
PII = SHARED / "pii" / "data_synth_dataset_v2.json"
INJ = SHARED / "injection" / "jailbreak_dataset_train.csv"


def _run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "turnout", "eval", "guards", *args, "--json", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif(not PII.exists(), reason="shared PII data not present")
def test_pii_slice() -> None:
    out = _run("--pii", str(PII), "--limit", "50")["pii"]
    assert out["records"] == 50
    ta, agn = out["all"]["type_aware"], out["all"]["type_agnostic"]
    assert ta["n_gold"] == agn["n_gold"] > 0
    assert 0.0 <= ta["precision"] <= 1.0 and 0.0 <= ta["recall"] <= agn["recall"] <= 1.0
    assert agn["recall"] > 0.7  # a floor far under the measured figure, to catch a broken detector
    assert out["latency_ms"]["p50"] > 0 and "PERSON" in out["recall_by_gold_type"]


@pytest.mark.skipif(not INJ.exists(), reason="shared injection data not present")
def test_injection_slice() -> None:
    out = _run("--injection", str(INJ), "--limit", "120")["injection"]
    split = out["split"]
    assert split["train"] + split["heldout"] == out["records"] == 120
    for name in ("fitted_on_train_split", "shipped"):
        m = out[name]
        assert 0.0 <= m["fpr"] <= 1.0 and 0.0 <= m["recall"] <= 1.0 and 0.5 < m["auroc"] <= 1.0


def test_requires_a_file() -> None:
    proc = subprocess.run([sys.executable, "-m", "turnout", "eval", "guards"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--pii" in proc.stderr
