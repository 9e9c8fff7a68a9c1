"""The injection model's build steps that run without torch: thresholds per held-out source, windows, sampling."""

import numpy as np
import pytest

from turnout.evals import injection_data as D
from turnout.evals.injection_finetune import STRIDE, WINDOW, _Data, _sampler, _threshold, _windows


def test_the_threshold_holds_every_source_at_or_under_the_rate() -> None:
    rng = np.random.default_rng(0)
    sources = {"quiet": list(rng.uniform(0, 0.5, 1000)), "loud": list(rng.uniform(0, 0.96, 300)),
               "tiny": [0.1, 0.2, 0.97]}
    t = _threshold(sources, 0.01)
    for name, scores in sources.items():
        allowed = int(0.01 * len(scores))
        assert sum(s >= t for s in scores) <= allowed, name
    # the worst source sets it: "tiny" may let none through, so t sits just above its top score
    assert t == pytest.approx(0.97, abs=1e-9) and t > 0.97


def test_windows_cover_the_text_with_overlap() -> None:
    ids = [101] + list(range(1000, 1400)) + [102]
    wins = _windows(ids)
    assert all(w[0] == 101 and w[-1] == 102 and len(w) <= WINDOW for w in wins)
    body = [t for w in wins for t in w[1:-1]]
    assert set(body) == set(range(1000, 1400))  # nothing dropped
    assert wins[1][1] == 1000 + STRIDE           # consecutive windows overlap by WINDOW - STRIDE tokens
    assert _windows([101, 5, 102]) == [[101, 5, 102]]


def test_sampling_is_half_attacks_and_no_source_dominates() -> None:
    d = _Data.__new__(_Data)
    d.label = np.array([0] * 1000 + [0] * 10 + [1] * 300)
    d.source = np.array([0] * 1000 + [1] * 10 + [2] * 300)
    picks = _sampler(d, np.arange(len(d.label)), 2000, np.random.default_rng(0))
    assert len(picks) == 2000 and abs(int(d.label[picks].sum()) - 1000) <= 1
    benign_big = int((d.source[picks] == 0).sum())
    assert 700 < benign_big < 950  # sqrt weighting: 1000 vs 10 texts -> about 91 % / 9 %, not 99 % / 1 %


def test_every_source_is_in_exactly_one_group() -> None:
    grouped = [s for g in D.GROUPS for s in g]
    assert sorted(grouped) == sorted(D.SOURCES) and len(grouped) == len(set(grouped))
    assert D.group_of("multijail") == -1
