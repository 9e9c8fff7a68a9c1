"""APGR / CPT as RouteLLM computes them, checked on hand-computed and limiting cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turnout.evals.datasets import load_dataset, load_generic_csv, load_mmlu, parse_outcome
from turnout.evals.routing_metrics import (
    apgr,
    cpt,
    evaluate_scores,
    optimal_quality,
    oracle_scores,
    pgr_at,
    quality_curve,
    quantile_thresholds,
    random_scores,
)
from turnout.routing.calibration import threshold_for_escalation, threshold_for_quality


def test_hand_computed_case() -> None:
    # Two prompts the weak model gets right (low scores), two it gets wrong (high scores).
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    weak = np.array([1.0, 1.0, 0.0, 0.0])
    strong = np.ones(4)
    curve = quality_curve(scores, weak, strong, bins=2)
    # Thresholds: quantiles 0, .5, 1 -> 0.1, 0.25, 0.4; the last one routes with '>' (no strong calls).
    np.testing.assert_allclose(curve.thresholds, [0.4, 0.25, 0.1])
    np.testing.assert_allclose(curve.strong_share, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(curve.quality, [0.5, 1.0, 1.0])
    # Area = 0.5 * (0.5 + 1) / 2 + 0.5 * 1 = 0.875; weak area 0.5, strong area 1 -> APGR 0.75.
    assert apgr(curve, 0.5, 1.0) == pytest.approx(0.75)
    # 50% of the gap is quality 0.75, reached halfway along the first segment: 25% strong calls.
    assert cpt(curve, 0.5, 0.5, 1.0) == pytest.approx(0.25)
    assert cpt(curve, 0.8, 0.5, 1.0) == pytest.approx(0.40)
    m = evaluate_scores(scores, weak, strong, bins=2)
    assert (m.apgr, m.cpt50, m.cpt80, m.n) == (pytest.approx(0.75), pytest.approx(0.25), pytest.approx(0.4), 4)


def test_ties_and_ten_bins_follow_quantiles() -> None:
    scores = np.array([0.0, 0.0, 0.0, 1.0, 1.0])
    thresholds = quantile_thresholds(scores, 10)
    assert len(thresholds) == 11
    np.testing.assert_allclose(thresholds, np.quantile(scores, np.linspace(0, 1, 11)))
    curve = quality_curve(scores, np.zeros(5), np.ones(5), bins=10)
    # Only three distinct routings exist: nobody, the two 1.0s, everybody.
    assert set(np.round(curve.strong_share, 6)) == {0.0, 0.4, 1.0}
    assert curve.strong_share[0] == 0.0 and curve.strong_share[-1] == 1.0
    assert np.all(np.diff(curve.strong_share) >= 0)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random(n) < 0.6).astype(float), (rng.random(n) < 0.85).astype(float)


def test_random_router_recovers_about_half() -> None:
    weak, strong = _synthetic(20_000, 1)
    m = evaluate_scores(random_scores(len(weak), seed=3), weak, strong)
    assert m.apgr == pytest.approx(0.5, abs=0.04)
    assert m.cpt50 == pytest.approx(0.5, abs=0.06)


def test_oracle_above_one_and_inverse_below_zero() -> None:
    weak, strong = _synthetic(5_000, 2)
    oracle = evaluate_scores(oracle_scores(weak, strong), weak, strong)
    inverse = evaluate_scores(-oracle_scores(weak, strong), weak, strong)
    assert oracle.apgr > 1.0
    assert inverse.apgr < 0.0
    assert oracle.cpt50 < 0.5 < inverse.cpt50
    assert oracle.cpt50 <= oracle.cpt80


def test_cpt_takes_first_crossing_and_nan_without_gap() -> None:
    from turnout.evals.routing_metrics import QualityCurve

    dip = QualityCurve(np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.5, 0.9, 0.6, 1.0]), np.zeros(4))
    assert cpt(dip, 0.5, 0.5, 1.0) == pytest.approx(0.2 * (0.25 / 0.4))
    assert np.isnan(cpt(dip, 0.5, 0.7, 0.7))
    assert np.isnan(apgr(dip, 0.7, 0.7))


def test_pgr_at_one_operating_point() -> None:
    weak = np.array([1.0, 0.0, 0.0, 1.0, 0.0])    # weak quality 0.4
    strong = np.array([1.0, 1.0, 1.0, 1.0, 0.0])  # strong quality 0.8, gap 0.4
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3])  # ranks rows 1, 3, 4, 2, 0
    assert pgr_at(scores, weak, strong, 0.2) == pytest.approx(0.5)  # row 1 goes strong: 0.6 -> (0.6-0.4)/0.4
    assert pgr_at(scores, weak, strong, 0.4) == pytest.approx(0.5)  # row 3 adds nothing (weak already right)
    assert pgr_at(scores, weak, strong, 0.8) == pytest.approx(1.0)  # rows 1 and 2 both strong
    assert pgr_at(scores, weak, strong, 0.0) == 0.0 and pgr_at(-scores, weak, strong, 0.2) == 0.0
    assert np.isnan(pgr_at(scores, weak, weak, 0.2))


def test_optimal_quality_escalates_gains_first() -> None:
    weak = np.array([1.0, 0.0, 0.0, 1.0])
    strong = np.array([1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(optimal_quality(weak, strong, np.array([0.0, 0.25, 1.0])), [0.5, 0.75, 0.75])


def test_calibration_hits_target_rate_and_quality() -> None:
    weak, strong = _synthetic(4_000, 4)
    scores = oracle_scores(weak, strong) + np.random.default_rng(0).normal(0, 0.5, len(weak))
    t = threshold_for_escalation(scores, 0.2)
    assert float((scores >= t).mean()) == pytest.approx(0.2, abs=0.002)  # the share escalated
    target = float(weak.mean() + 0.5 * (strong.mean() - weak.mean()))
    tq = threshold_for_quality(scores, weak, strong, target)
    routed = np.where(scores >= tq, strong, weak).mean()
    assert routed >= target - 1e-12
    with pytest.raises(ValueError):
        threshold_for_quality(scores, weak, strong, 1.01)


def test_generic_csv_accepts_flags_and_scores(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        "prompt,weak_correct,strong_correct,weak_cost,strong_cost\n"
        'a,True,1,0.1,1\nb,false,true,0.1,1\n"c, with comma",0,0.75,0.2,2\n'
    )
    data = load_generic_csv(path)
    assert data.prompts == ["a", "b", "c, with comma"]
    np.testing.assert_allclose(data.weak, [1, 0, 0])
    np.testing.assert_allclose(data.strong, [1, 1, 0.75])
    np.testing.assert_allclose(data.strong_cost, [1, 1, 2])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("prompt,weak_correct,strong_correct\na,True,maybe\n", "d.csv:2: column 'strong_correct'"),
        ("prompt,weak_correct,strong_correct\na,True,1\nb,1.5,0\n", "d.csv:3: column 'weak_correct': score '1.5'"),
        ("prompt,weak_correct\na,True\n", "missing column 'strong_correct'"),
        ("prompt,weak_correct,strong_correct\na,True\n", "d.csv:2: expected 3 fields"),
        ("prompt,weak_correct,strong_correct\n", "no data rows"),
    ],
)
def test_generic_csv_errors_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_generic_csv(path)


def test_parse_outcome_rejects_nan() -> None:
    with pytest.raises(ValueError):
        parse_outcome("nan", "x")


def test_mmlu_loader_drops_contaminated(tmp_path: Path) -> None:
    folder = tmp_path / "mmlu"
    folder.mkdir()
    header = "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n"
    (folder / "mmlu_anatomy.csv").write_text(header + "q1,True,True\nq2,False,True\n")
    (folder / "mmlu_virology.csv").write_text(header + "q3,False,False\n")
    (folder / "contaminated_prompts.jsonl").write_text(json.dumps({"train_prompt": "x", "eval_prompt": "q2"}) + "\n")
    data = load_mmlu(tmp_path)
    assert data.prompts == ["q1", "q3"]
    assert data.groups == ["anatomy", "virology"]
    assert data.dropped_contaminated == 1
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("nope", tmp_path)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared RouteLLM data not present")
def test_shared_data_matches_published_counts() -> None:
    mmlu = load_dataset("mmlu", SHARED)
    gsm = load_dataset("gsm8k", SHARED)
    mt = load_dataset("mt_bench", SHARED)
    assert (len(mmlu), mmlu.dropped_contaminated) == (14_037, 5)
    assert (len(gsm), gsm.dropped_contaminated) == (1_307, 12)
    assert (len(mt), mt.dropped_contaminated) == (72, 8)
    assert mmlu.weak.mean() == pytest.approx(0.681, abs=0.002)
    assert mmlu.strong.mean() == pytest.approx(0.806, abs=0.002)
    assert 0.0 <= mt.weak.min() and mt.strong.max() <= 1.0
