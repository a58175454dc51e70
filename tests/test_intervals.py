"""The 95 % intervals that evaluate, the probe and the report print (Wilson, macro bootstrap, paired differences)."""

from __future__ import annotations

import numpy as np
import pytest

from saga.explain.intervals import (FEW, format_ci, format_paired, intervals, macro_bootstrap, macro_interval,
                                    paired_difference, wilson)


def test_wilson_known_values() -> None:
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson(1, 3) == pytest.approx((0.0615, 0.7923), abs=1e-4)
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(4, 3)


def test_macro_bootstrap() -> None:
    assert macro_bootstrap([10, 5], [10, 5]) == (1.0, 1.0)  # all correct: no spread
    assert macro_bootstrap([0, 0], [0, 0]) is None
    lo, hi = macro_bootstrap([45, 30, 2], [50, 50, 4])  # macro = (0.9 + 0.6 + 0.5) / 3
    assert lo < 2 / 3 < hi and hi - lo > 0.1  # the 4-video class widens it
    assert macro_bootstrap([45, 30, 2], [50, 50, 4]) == (lo, hi)  # fixed seed: deterministic
    assert macro_bootstrap([45, 30, 2, 0], [50, 50, 4, 0]) == (lo, hi)  # absent classes left out
    # one class: the percentile interval of a binomial proportion (n = 400, p = 0.5 → ±1.96·0.025)
    one = macro_bootstrap([200], [400])
    assert one == pytest.approx((0.451, 0.549), abs=0.01)
    # many videos per class: narrow; few: wide
    small, big = macro_bootstrap([4, 2], [5, 5]), macro_bootstrap([400, 200], [500, 500])
    assert (small[1] - small[0]) > 3 * (big[1] - big[0])


def test_macro_interval_does_not_collapse_when_classes_are_all_right() -> None:
    assert macro_interval([20, 20], [20, 20])[0] < 0.95 and macro_interval([20, 20], [20, 20])[1] == 1.0
    lo, hi = macro_bootstrap([45, 30, 2], [50, 50, 4])
    wide = macro_interval([45, 30, 2], [50, 50, 4])
    assert wide[0] <= lo and wide[1] >= hi  # never narrower than the bootstrap
    assert macro_interval([0, 0], [0, 0]) is None and macro_interval([3, 0], [4, 0]) == macro_interval([3], [4])
    rng, truth, covered = np.random.default_rng(0), np.array([0.97, 0.995]), 0
    for _ in range(200):  # the case the bootstrap alone covered 45 % of the time
        got = macro_interval(rng.binomial([20, 420], truth), [20, 420], resamples=200)
        covered += got[0] <= truth.mean() <= got[1]
    assert covered >= 0.9 * 200


def test_paired_difference_of_two_classifiers_on_the_same_videos() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.9
    same = paired_difference(truth, truth)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]  # they never disagree: no uncertainty at all
    better = truth | (rng.random(400) < 0.15)  # right wherever `truth` is, and on a few of the rest
    res = paired_difference(better, truth)
    gained = int((better & ~truth).sum())
    assert res["difference"] == pytest.approx(gained / 400) and res["first_only"] == gained and res["second_only"] == 0
    assert 0 < res["ci"][0] < res["difference"] < res["ci"][1]
    assert paired_difference(better, truth) == res  # seeded
    # two unpaired Wilson intervals overlap although the paired difference is resolved
    assert wilson(int(truth.sum()), 400)[1] > wilson(int(better.sum()), 400)[0]
    assert "above the probe" in format_paired(res) and "paired over the same 400 videos" in format_paired(res)
    worse = paired_difference(truth, better)
    assert worse["ci"][1] < 0 and "below the probe" in format_paired(worse)
    coin = paired_difference(rng.random(50) < 0.5, rng.random(50) < 0.5)
    assert coin["ci"][0] < 0 < coin["ci"][1] and "not resolved" in format_paired(coin)
    assert paired_difference(np.zeros(0, bool), np.zeros(0, bool)) is None
    with pytest.raises(ValueError):
        paired_difference(truth, truth[:10])


def test_intervals_in_compute_metrics() -> None:
    from saga.model.inference import Inference
    from saga.explain.metrics import compute_metrics

    y = np.array([0] * 20 + [1] * 3)
    pred = np.array([0] * 18 + [1] * 2 + [1, 0, 0])
    probs = np.eye(2)[pred].astype(np.float32)
    inf = Inference(probs, probs, np.zeros((23, 1)), y, [str(i) for i in range(23)], np.ones((23, 1), bool))
    m = compute_metrics(inf, ["real", "fake"], "BIN-L")
    assert m["accuracy_ci"] == pytest.approx(list(wilson(19, 23)))
    assert m["per_class_ci"]["real"] == pytest.approx(list(wilson(18, 20)))
    assert m["per_class_ci"]["fake"] == pytest.approx(list(wilson(1, 3)))
    assert m["few"] == ["fake"] and FEW == 10
    lo, hi = m["macro_accuracy_ci"]
    assert lo <= m["macro_accuracy"] <= hi
    assert m["ci"]["level"] == 0.95 and "bootstrap" in m["ci"]["macro_accuracy"]
    assert intervals(np.array(m["confusion"]))["macro_accuracy_ci"] == [lo, hi]
    assert format_ci([0.5, 0.75]) == "[50.0–75.0]" and format_ci(None) == ""
