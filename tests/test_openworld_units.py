"""Open-world attribution's pure functions (open-set scores, calibration, enrollment) on hand-made numbers."""


from __future__ import annotations

import numpy as np
import pytest

from saga.errors import SagaError
from saga.openworld.calibration import ece, fit_temperature, nll, reliability, softmax
from saga.openworld.enroll import Enrollment, add_entry, generator_labels, predict_with_enrolled
from saga.openworld.extras import OpenWorld, as_inference
from saga.openworld.levels import aggregate, parents
from saga.openworld.openset import OpenSet, auroc, knn_scores, oscr, prototype_scores, threshold
from saga.taxonomy import Taxonomy

KNOWN = ["real", "syn-svd", "syn-pika", "syn-sd"]


def test_auroc_is_the_pairwise_probability_with_half_ties() -> None:
    known, unknown = np.array([0.1, 0.2, 0.3, 0.3]), np.array([0.3, 0.5])
    pairs = [(u > k) + 0.5 * (u == k) for u in unknown for k in known]
    assert auroc(known, unknown) == pytest.approx(np.mean(pairs))
    assert np.isnan(auroc(known, np.array([])))


def test_oscr_corners() -> None:
    ks, us = np.array([0.1, 0.2]), np.array([0.8, 0.9])
    assert oscr(ks, np.array([True, True]), us) == pytest.approx(1.0)  # all right, all rejected
    assert oscr(ks, np.array([False, False]), us) == pytest.approx(0.0)  # nothing correctly classified
    assert oscr(ks, np.array([True, False]), us) == pytest.approx(0.5)
    assert oscr(us, np.array([True, True]), ks) == pytest.approx(0.0)  # unknowns look more known


def test_threshold_gives_the_false_unknown_rate() -> None:
    scores = np.arange(100, dtype=np.float64)
    assert (scores > threshold(scores, 95.0)).mean() == pytest.approx(0.05)
    with pytest.raises(SagaError):
        threshold(np.array([]), 95.0)


def test_scores_are_zero_at_a_prototype_and_grow_away() -> None:
    protos = np.eye(3, dtype=np.float32)
    x = np.array([[1, 0, 0], [0.6, 0.8, 0]], np.float32)
    s, nearest = prototype_scores(x, protos)
    assert s[0] == pytest.approx(0.0) and s[1] == pytest.approx(0.2) and nearest.tolist() == [0, 1]
    assert knn_scores(x, protos, k=1)[0] == pytest.approx(0.0, abs=1e-6)


def test_temperature_recovers_an_overconfident_scale() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5)) * 2.0
    y = np.array([rng.choice(5, p=p) for p in softmax(z)])
    t = fit_temperature(3.0 * z, y)  # the model is 3x overconfident
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(3.0 * z, y, t) < nll(3.0 * z, y, 1.0)
    assert ece(softmax(3.0 * z, t), y) < ece(softmax(3.0 * z), y)
    assert fit_temperature(60.0 * z, y) == pytest.approx(60.0, rel=0.1)  # the discriminant readout's scale
    right = z.argmax(axis=1)  # val without a single error: no minimum, no evidence, no change
    assert fit_temperature(3.0 * z, right) == 1.0 and nll(3.0 * z, right, 0.1) < nll(3.0 * z, right, 1.0)


def test_reliability_bins_and_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    r = reliability(probs, y, bins=15)
    assert sum(r["count"]) == 4 and len(r["edges"]) == 16
    # bin of 0.9: acc 0.5, conf 0.9; bin of 0.6: acc 1.0, conf 0.6 -> ECE = (2*0.4 + 2*0.4) / 4
    assert r["ece"] == pytest.approx(0.4)


def test_aggregate_sums_to_coarser_levels() -> None:
    tax = Taxonomy.load("synth")
    parent = parents(tax, "GEN-L", KNOWN, "BIN-L")
    assert parent == ["real", "fake", "fake", "fake"]
    names, p = aggregate(np.array([[0.1, 0.2, 0.3, 0.4]]), parent)
    assert names == ["real", "fake"] and p[0].tolist() == pytest.approx([0.1, 0.9])


def toy_enrollment() -> Enrollment:
    enr = Enrollment("x", ["real", "syn-svd"], "GEN-L", 0.1, np.eye(3, dtype=np.float32)[:2])
    return add_entry(enr, "syn-new", generator_labels("syn-new", "T2V", None, "NewTeam"),
                     np.tile(np.array([[0, 0, 1]], np.float32), (3, 1)), ["a", "b", "c"], "cid")


def test_gate_rule_keeps_the_head_and_routes_new_videos() -> None:
    tax = Taxonomy.load("synth")
    enr = toy_enrollment()
    emb = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    head = np.array([[0.3, 0.7], [0.1, 0.9]], np.float32)  # the head's own choice for the first video
    inf = as_inference(np.log(head), head, emb)
    info = type("Info", (), {"level": "GEN-L"})()
    out = predict_with_enrolled(info, tax, enr, inf)
    assert out["GEN-L"]["pred"] == ["syn-svd", "syn-new"]
    assert np.allclose(out["GEN-L"]["probs"].sum(1), 1.0, atol=1e-5)
    assert set(out) == {"GEN-L", "TEAM-L", "TASK-L", "BIN-L"}
    assert out["TEAM-L"]["pred"][1] == "NewTeam" and out["BIN-L"]["pred"][1] == "fake"
    assert "SD-L" not in out  # --sd not given: no SD-L answer rather than a guess
    enr.entries[0].labels["TEAM-L"] = None
    assert "TEAM-L" not in predict_with_enrolled(info, tax, enr, inf)


def test_enrollment_needs_3_to_20_new_videos() -> None:
    enr = Enrollment("x", ["real", "syn-svd"], "GEN-L", 0.1, np.eye(3, dtype=np.float32)[:2])
    with pytest.raises(SagaError, match="3–20"):
        add_entry(enr, "syn-new", generator_labels("syn-new", None, None, None), np.ones((2, 3)), ["a", "b"], "c")
    with pytest.raises(SagaError, match="already a class"):
        add_entry(enr, "syn-svd", generator_labels("syn-svd", None, None, None), np.ones((3, 3)), list("abc"), "c")


def test_openset_evaluation_separates_known_unseen_and_classless_videos() -> None:
    from saga.model.inference import Inference

    protos = np.eye(3, dtype=np.float32)[:2]
    ow = OpenWorld(info=None, taxonomy=None, openset=OpenSet("prototype", 1, 95.0, 0.5, "x", ["a", "b"], 4, protos, protos))
    emb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0.6, 0.8, 0]], np.float32)  # scores 0, 0, 1, 1, 0.2
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.5, 0.5], [0.1, 0.9]], np.float32)
    inf = Inference(np.log(probs), probs, emb, np.array([0, 1, -1, -1, 0]), [""] * 5, np.ones((5, 1), bool))
    res = ow.evaluation(inf, unseen=np.array([False, False, True, False, False]))["openset"]  # video 3: no class
    assert (res["n_known"], res["n_unknown"], res["false_unknown"], res["auroc"]) == (3, 1, 0.0, 1.0)
    assert res["closed_accuracy"] == pytest.approx(2 / 3) and res["scores"]["n"] == {
        "known_correct": 2, "known_wrong": 1, "unknown": 1}
    assert res["scores"]["known_correct"] == [0.0, 0.0] and res["scores"]["known_wrong"] == [0.2]
    assert ow.evaluation(inf)["openset"]["n_unknown"] == 2  # default: every video without a class of the run
