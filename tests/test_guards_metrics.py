"""Metric functions on cases computed by hand."""

import math

import pytest

from turnout.evals.guards_metrics import (
    PRF,
    PiiReport,
    auroc,
    binary_metrics,
    f_beta,
    map_types,
    percentile,
    score_record,
)
from turnout.guards.calibration import stratified_split, threshold_for_fpr


def test_f_beta_by_hand() -> None:
    # P = 0.5, R = 1: F2 = 5 * 0.5 * 1 / (4 * 0.5 + 1) = 2.5 / 3
    assert f_beta(0.5, 1.0, 2.0) == pytest.approx(2.5 / 3)
    assert f_beta(1.0, 0.5, 1.0) == pytest.approx(2 / 3)
    assert f_beta(0.0, 0.0) == 0.0


def test_span_scoring_by_coverage() -> None:
    text = "Ann Lee lives at 1 Main St, Springfield"
    #       0   4       12  16                 38
    gold = [(0, 7, "PERSON"), (17, 39, "LOCATION")]
    # the address split in two pieces, one wrong-typed name, one spurious span
    pred = [(17, 26, "LOCATION"), (28, 39, "LOCATION"), (0, 3, "ORGANIZATION"), (8, 13, "PERSON")]
    aware = score_record(text, gold, pred, type_aware=True)["*"]
    # gold: PERSON not covered by a PERSON prediction; LOCATION fully covered -> 1 of 2
    assert (aware.tp_gold, aware.n_gold) == (1, 2)
    # predictions: two LOCATION pieces are correct; ORG and "lives" are not -> 2 of 4
    assert (aware.tp_pred, aware.n_pred) == (2, 4)
    agn = score_record(text, gold, pred, type_aware=False)["*"]
    # type-agnostic: "Ann" covers 3 of 6 non-blank chars of "Ann Lee" = 0.5 -> found
    assert (agn.tp_gold, agn.n_gold, agn.tp_pred, agn.n_pred) == (2, 2, 3, 4)


def test_prf_and_report() -> None:
    rep = PiiReport()
    rep.add("abc def", [(0, 3, "X")], [(0, 3, "X"), (4, 7, "Y")])
    star = rep.type_aware["*"]
    assert star.precision == 0.5 and star.recall == 1.0
    assert rep.type_aware["Y"].precision == 0.0
    assert PRF().precision == 1.0 and PRF().recall == 1.0  # nothing to find, nothing claimed


def test_map_types() -> None:
    assert map_types([(0, 1, "GPE"), (1, 2, "AGE"), (2, 3, "TITLE")], {"GPE": "LOCATION", "TITLE": None}) == [
        (0, 1, "LOCATION"), (1, 2, "AGE")]


def test_binary_metrics_by_hand() -> None:
    m = binary_metrics([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 3, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(1 / 4)


def test_auroc_by_hand() -> None:
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    # pairs (pos, neg): (0.8,0.5) win, (0.8,0.9) lose, (0.5,0.5) tie, (0.5,0.9) lose -> 1.5 / 4
    assert auroc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.9]) == pytest.approx(0.375)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_threshold_for_fpr() -> None:
    neg = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    t = threshold_for_fpr(neg, 0.1)  # one negative of ten may pass: 0.95
    assert sum(s >= t for s in neg) == 1 and 0.9 < t <= 0.95
    t0 = threshold_for_fpr(neg, 0.0)
    assert sum(s >= t0 for s in neg) == 0 and t0 > 0.95


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 95) == 10
    assert percentile(list(range(101)), 95) == 95


def test_stratified_split_is_fixed_and_stratified() -> None:
    labels = [1] * 40 + [0] * 60
    tr, te = stratified_split(labels, 0.25, seed=13)
    assert stratified_split(labels, 0.25, seed=13) == (tr, te)
    assert sorted(tr + te) == list(range(100)) and not set(tr) & set(te)
    assert sum(labels[i] for i in te) == 10 and len(te) == 25
