"""The report's beyond-the-paper sections: calibration, open set, enrollment, robustness, and a
leave-one-generator-out experiment, from hand-written run-folder files (no model, CPU, fast)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saga.errors import SagaError
from saga.explain.report import build_report, render_report
from saga.explain.report_plots import curves
from saga.openworld.calibration import reliability
from saga.openworld.openset import auroc, dumps, oscr, score_lists, summary
from saga.runs.files import CALIBRATION, ENROLLED, OPENSET, ROBUSTNESS, reliability_file

CLASSES = ["real", "syn-svd", "syn-pika", "syn-sd"]
PNG = b"\x89PNG\r\n\x1a\n"


def _scores(seed: int, n_known: int = 60, n_unknown: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    known = rng.normal(0.2, 0.1, n_known).round(3)  # rounded: ties, which the curves must count as ½
    return known, rng.random(n_known) < 0.85, rng.normal(0.45, 0.12, n_unknown).round(3)


def _reliability(seed: int, n: int = 80) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(CLASSES)) * 0.4, n)
    return reliability(probs, rng.integers(0, len(CLASSES), n))


def _metrics() -> dict[str, Any]:
    conf = (np.eye(4, dtype=int) * 8 + 1).tolist()
    known, correct, unknown = _scores(0)
    ev = {"kind": "knn", "threshold": 0.33, "percentile": 95.0, "n_known": 60, "n_unknown": 12,
          **{k: v for k, v in summary(known, correct, unknown, 0.33).items() if k != "threshold"},
          "scores": score_lists(known, correct, unknown)}
    return {"level": "GEN-L", "split": "test", "n": 44, "classes": CLASSES, "confusion": conf,
            "per_class": {c: 8 / 11 for c in CLASSES}, "per_class_n": {c: 11 for c in CLASSES}, "accuracy": 0.727,
            "macro_accuracy": 0.727, "accuracy_ci": [0.58, 0.84], "macro_accuracy_ci": [0.6, 0.82],
            "per_class_ci": {c: [0.43, 0.9] for c in CLASSES}, "few": [],
            "openworld": {"split": "test", "calibration": {"temperature": 1.42, "before": _reliability(1),
                                                           "after": _reliability(2)}, "openset": ev}}


ROBUSTNESS_DATA = {
    "run": "runs/gen", "cache": "cache", "split": "test", "n_videos": 44, "levels": ["GEN-L", "BIN-L"],
    "perturbations": [
        {"name": "clean", "description": "the videos as they are", "cache": "cache", "n": 44, "failed": 0,
         "levels": {"GEN-L": {"accuracy": 0.75, "ci": [0.6, 0.86], "n": 44, "macro_accuracy": 0.74},
                    "BIN-L": {"accuracy": 0.95, "ci": [0.85, 0.99], "n": 44, "macro_accuracy": 0.94}}},
        {"name": "h264-crf40", "description": "re-encoded with H.264 at CRF 40", "cache": "cache-crf40", "n": 43,
         "failed": 1, "levels": {"GEN-L": {"accuracy": 0.5116, "ci": [0.36, 0.66], "n": 43, "macro_accuracy": 0.5},
                                 "BIN-L": {"accuracy": 0.93, "ci": [0.81, 0.98], "n": 43, "macro_accuracy": 0.92}}},
    ]}


def _run(root: Path, beyond: bool) -> Path:
    root.mkdir(parents=True)
    metrics = _metrics()
    if not beyond:
        metrics.pop("openworld")
    files = {"config.json": {"stage": 2, "level": "GEN-L", "classes": CLASSES, "frames": 4,
                             "train": {"loss": "ce"}, "cache": "cache"},
             "provenance.json": {"cache_id": "c" * 32}, "metrics.json": metrics, "metrics-test.json": metrics}
    if beyond:
        files.update({
            CALIBRATION: {"method": "temperature scaling", "temperature": 1.42, "split": "val", "n": 12,
                          "nll_before": 1.31, "nll_after": 1.12, "ece_before": 0.2112, "ece_after": 0.0871,
                          "run_model": "x", "classes": CLASSES},
            reliability_file("val2"): {"split": "val2", "before": _reliability(3), "after": _reliability(4)},
            OPENSET: {"kind": "knn", "k": 5, "percentile": 95.0, "threshold": 0.33, "run_model": "x",
                      "classes": CLASSES, "n_val": 12, "tensors": "openset.0.safetensors"},
            ENROLLED: {"run_model": "x", "classes": CLASSES, "level": "GEN-L", "tau": 0.0731, "entries": [
                {"name": "syn-hotshot", "labels": {"BIN-L": "fake", "TASK-L": "T2V", "SD-L": None,
                                                   "TEAM-L": "Hotshot", "GEN-L": "syn-hotshot"},
                 "n": 5, "paths": [f"syn-hotshot/v{i}.mp4" for i in range(5)], "cache_id": "d" * 32}]},
            ROBUSTNESS: ROBUSTNESS_DATA})
    for name, data in files.items():
        (root / name).write_text(json.dumps(data))
    return root


def _experiment(root: Path, with_scores: bool = True) -> Path:
    """A `saga openset logo` output folder: results.json with two folds (as logo.py writes it)."""
    openset, enroll = {}, {}
    for i, g in enumerate(["syn-hotshot", "syn-latte"]):
        fold = {}
        for level in ("GEN-L", "TEAM-L", "SD-L", "TASK-L"):
            res: dict[str, Any] = {"known_classes": 4, "unseen_class": g if level == "GEN-L" else None}
            for j, kind in enumerate(("prototype", "knn")):
                known, correct, unknown = _scores(10 * i + j)
                res[kind] = {**summary(known, correct, unknown, 0.33), "auroc_ci": [0.7, 0.95]}
                if with_scores and res["unseen_class"]:
                    res[kind]["scores"] = score_lists(known, correct, unknown)
            fold[level] = res
        openset[g] = fold
        pair = lambda new_c, old_c: {"new": new_c / 20, "new_n": 20, "new_correct": new_c,  # noqa: E731
                                     "old": old_c / 400, "old_n": 400, "old_correct": old_c}
        enroll[g] = {"k": 5, "tau": 0.07, "levels": {lv: {"before": pair(0, 370), "gate": pair(15 - i, 368),
                                                          "ncm": pair(14, 369), "retrain": pair(10, 367)}
                                                     for lv in ("GEN-L", "TEAM-L", "SD-L", "TASK-L")}}
    results = {"cache": "cache", "seed": 0, "k": 5, "openset": openset, "enroll": enroll,
               "calibration": [{"run": "runs/full", "temperature": 1.2, "n_val": 110, "n_test": 440,
                                "test_ece_before": 0.13, "test_ece_after": 0.06, "test_accuracy": 0.9,
                                "test_ece_before_ci": [0.1, 0.16], "test_ece_after_ci": [0.04, 0.09]}]}
    (root / "logo").mkdir(parents=True)
    (root / "results.json").write_text(dumps(results))
    return root


def _imgs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', html)]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("ow-report")
    run = _run(base / "runs" / "gen", beyond=True)
    return build_report([run], base / "report.html").read_text()


def test_calibration_section_shows_ece_and_reliability_diagrams(page: str) -> None:
    cal = page[page.index("<h3>Calibration</h3>"):page.index("<h3>Open set")]
    assert "T = 1.420" in cal and "0.211" in cal and "0.087" in cal and "-59 %" in cal  # val fit: ECE before/after
    assert "val2" in cal and "reliability-val2.json" in cal and "saga evaluate (metrics.json)" in cal
    assert f"{_reliability(1)['ece']:.3f}" in cal and f"{_reliability(2)['ece']:.3f}" in cal
    imgs = _imgs(cal)
    assert len(imgs) == 2 and all(i.startswith(PNG) for i in imgs)  # one diagram per split (val2, test)
    assert "Reliability bins, test" in cal


def test_open_set_section_shows_auroc_oscr_and_the_roc_curve(page: str) -> None:
    sec = page[page.index("<h3>Open set"):page.index("<h3>Enrolled")]
    known, correct, unknown = _scores(0)
    assert f"{auroc(known, unknown):.3f}" in sec and f"{oscr(known, correct, unknown):.3f}" in sec
    assert "knn score, k = 5" in sec and "95th percentile" in sec and "0.3300" in sec
    assert "AUROC known vs unseen" in sec and "ROC and OSCR curves" in sec
    imgs = _imgs(sec)
    assert len(imgs) == 1 and imgs[0].startswith(PNG)


def test_enrolled_section_lists_sources_videos_and_levels(page: str) -> None:
    sec = page[page.index("<h3>Enrolled"):page.index("<h3>Robustness")]
    assert "syn-hotshot" in sec and "Hotshot" in sec and "not given" in sec  # SD-L not given
    assert "τ = 0.0731" in sec and "GEN-L, TEAM-L, TASK-L, BIN-L" not in sec
    assert "BIN-L, TASK-L, TEAM-L, GEN-L" in sec  # the levels it answers (SD-L left out)
    assert "<td>5</td>" in sec and "syn-hotshot/v0.mp4" in sec and "(2 more)" in sec


def test_robustness_table_has_intervals_n_and_the_drop_against_clean(page: str) -> None:
    sec = page[page.index("<h3>Robustness"):]
    sec = sec[:sec.index("</table>")]
    assert "h264-crf40" in sec and "re-encoded with H.264 at CRF 40" in sec and "43 (1 failed)" in sec
    assert "51.16 <span class=ci>[36.0–66.0]</span>" in sec and "n 43" in sec
    assert '<span class="bad">-23.8 pts</span>' in sec  # the interval [36–66] lies below clean's 75
    assert '<span class="ci">-2.0 pts</span>' in sec  # within the noise: not flagged
    assert sec.index("<b>clean</b>") < sec.index("<b>h264-crf40</b>")
    assert "<th>GEN-L</th><th>BIN-L</th>" in sec


def test_robustness_drop_is_paired_with_the_clean_accuracy_of_the_same_videos(tmp_path: Path, page: str) -> None:
    """With a failed video the clean row scores one video more: the drop used to subtract it anyway."""
    old = page[page.index("<h3>Robustness"):]
    assert "unpaired (an older robustness.json" in old[:old.index("</table>")]  # 1 failed, no paired data
    run = _run(tmp_path / "runs" / "gen", beyond=True)
    data = json.loads(json.dumps(ROBUSTNESS_DATA))
    data["perturbations"][1]["paired"] = {
        "GEN-L": {"difference": -0.2, "ci": [-0.4, -0.05], "n": 43, "clean_accuracy": 0.7116},
        "BIN-L": {"difference": -0.02, "ci": [-0.07, 0.02], "n": 43, "clean_accuracy": 0.95}}
    (run / ROBUSTNESS).write_text(json.dumps(data))
    sec = render_report([run])
    sec = sec[sec.index("<h3>Robustness"):]
    sec = sec[:sec.index("</table>")]
    assert '<span class="bad">-20.0 pts [-40.0, -5.0]</span><br><small>vs clean 71.16 on the same 43</small>' in sec
    assert '<span class="ci">-2.0 pts [-7.0, +2.0]</span>' in sec  # the interval holds 0: not flagged
    assert "-23.8" not in sec and "unpaired" not in sec  # 51.16 - 75: two different sets of videos


def test_without_the_files_the_report_renders_without_the_sections(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs" / "plain", beyond=False)
    html = render_report([run])
    assert "Per-class accuracy" in html and "syn-pika" in html
    for heading in ("<h3>Calibration", "<h3>Open set", "<h3>Enrolled", "<h3>Robustness", "Leave-one-generator-out"):
        assert heading not in html


def test_a_damaged_file_costs_its_section_only(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs" / "gen", beyond=True)
    (run / ROBUSTNESS).write_text(json.dumps({"levels": ["GEN-L"], "perturbations": [{"name": "x", "levels": 3}]}))
    (run / ENROLLED).write_text("{not json")
    html = render_report([run])
    assert "<h3>Calibration</h3>" in html and "<h3>Open set" in html and "<h3>Enrolled" not in html
    assert "robustness: unreadable data" in html


def test_curves_reproduce_the_stored_auroc_and_oscr_also_from_quantiles() -> None:
    known, correct, unknown = _scores(5, n_known=3000, n_unknown=40)
    exact = curves(score_lists(known, correct, unknown, cap=10_000))
    assert exact["auroc"] == pytest.approx(auroc(known, unknown), abs=1e-9)
    assert exact["oscr"] == pytest.approx(oscr(known, correct, unknown), abs=1e-9)
    small = score_lists(known, correct, unknown, cap=200)  # 3000 known videos kept as 200 quantiles per group
    assert len(small["known_correct"]) == 200 and small["n"]["known_correct"] == int(correct.sum())
    approx = curves(small)
    assert approx["auroc"] == pytest.approx(exact["auroc"], abs=0.01)
    assert approx["oscr"] == pytest.approx(exact["oscr"], abs=0.01)
    assert approx["closed_accuracy"] == pytest.approx(correct.mean())
    assert curves(score_lists(known, correct, np.array([]))) is None


def test_logo_experiment_section_auto_detected_and_by_option(tmp_path: Path) -> None:
    exp = _experiment(tmp_path / "exp")
    fold_run = _run(exp / "logo" / "syn-hotshot", beyond=False)
    for html in (render_report([fold_run]), render_report([], openworld=[exp]),
                 render_report([exp]), render_report([], openworld=[exp / "results.json"])):
        sec = html[html.index("Leave-one-generator-out: exp"):]
        sec = sec[:sec.index("</section>")]
        assert html.count("Leave-one-generator-out: exp") == 1
        aucs = [summary(*_scores(10 * i + 1), 0.33)["auroc"] for i in range(2)]
        assert f"{np.mean(aucs):.3f}" in sec  # GEN-L mean kNN AUROC over the two folds
        assert "syn-latte" in sec and "[0.700, 0.950]" in sec
        assert "every fold&#x27;s ROC and OSCR curve" in sec and len(_imgs(sec)) == 1
        # enrollment pooled over folds: gate 15 + 14 of 40 new videos, Wilson interval, and the ratio to retraining
        assert "72.50 [57.2–83.9] (40)" in sec and "1.45× retrain" in sec
        assert "retrained with the same videos" in sec and "50.00" in sec
        assert "Calibration of full runs" in sec and "0.130 [0.100, 0.160]" in sec
    assert "<h2>1. logo/syn-hotshot</h2>" in render_report([fold_run])
    assert "<h2>1." not in render_report([exp])  # the experiment folder is not shown as a run


def test_logo_results_without_scores_show_tables_and_say_how_to_get_curves(tmp_path: Path) -> None:
    html = render_report([], openworld=[_experiment(tmp_path / "old", with_scores=False)])
    assert "No per-video scores stored" in html and "syn-hotshot" in html and not _imgs(html)


def test_build_report_refuses_a_folder_without_results(tmp_path: Path) -> None:
    with pytest.raises(SagaError, match="results.json"):
        build_report([], tmp_path / "r.html", openworld=[tmp_path])
    with pytest.raises(SagaError, match="nothing to report"):
        build_report([], tmp_path / "r.html")


def test_dumps_keeps_number_lists_on_one_line() -> None:
    text = dumps({"a": {"scores": [0.1, 0.2, float("nan")], "nested": [[1, 2], [3]]}, "s": ["x", "y"]})
    assert '"scores": [0.1, 0.2, null]' in text and json.loads(text)["a"]["nested"] == [[1, 2], [3]]
    assert json.loads(text)["s"] == ["x", "y"]


def test_the_runs_table_names_a_per_generator_floor() -> None:
    from saga.explain.report import summary_table

    runs = [{"dir": Path(f"runs/{name}"), "config": {"stage": 2, "level": "TEAM-L", "train": train},
             "metrics": None} for name, train in (("a", {"fraction": 0.005}),
                                                 ("b", {"fraction": 0.005, "per_generator": 1}))]
    html = summary_table(runs)
    assert "0.005, ≥ 1 per generator" in html and html.count("per generator") == 1


def test_the_calibration_sentence_follows_the_fitted_temperature() -> None:
    from saga.explain.report_openworld import _confidence

    assert "over-confident" in _confidence(15.8) and "under-confident" in _confidence(0.5)
    assert "already calibrated" in _confidence(1.0) and _confidence(None) == ""


def test_logo_fold_trained_without_withholding_is_flagged_in_the_report(tmp_path: Path) -> None:
    exp = _experiment(tmp_path / "exp")
    results = json.loads((exp / "results.json").read_text())
    results["not_withheld"] = [str(exp / "logo" / "syn-latte"), str(exp / "retrain5" / "syn-latte")]
    (exp / "results.json").write_text(dumps(results))
    html = render_report([], openworld=[exp])
    sec = html[html.index("Leave-one-generator-out: exp"):]
    assert "Not unseen-generator figures:</b> 1 fold(s)" in sec and "syn-latte (logo, retrain5)" in sec
    assert sec.count("syn-latte ⚠ not withheld (logo, retrain5)") == 2  # open-set and enrollment rows
    assert "syn-hotshot ⚠" not in sec
    assert "Not unseen-generator" not in render_report([], openworld=[_experiment(tmp_path / "new")])


def test_logo_videos_left_out_as_seen_in_training_are_named_in_the_report(tmp_path: Path) -> None:
    exp = _experiment(tmp_path / "exp")
    results = json.loads((exp / "results.json").read_text())
    results["seen_in_training"] = {"syn-latte": {"test": {"n": 2, "examples": ["syn-svd/copy.mp4"], "in": "own cache"}}}
    (exp / "results.json").write_text(dumps(results))
    html = render_report([], openworld=[exp])
    assert "were left out of its fits (val) and figures (test): syn-latte: 2 test." in html
    assert "left out of its fits" not in render_report([], openworld=[_experiment(tmp_path / "new")])
