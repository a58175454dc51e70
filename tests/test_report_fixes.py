"""Report fixes: evaluations and figures of other weights than the run's are not shown as the run's,
every value from a run file is escaped, and a wrongly typed field costs one line, not the report
(CPU, tiny model, fast)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

import test_explain as te
import test_report_openworld as tro
from saga.explain.metrics import evaluate
from saga.explain.report import load_run, render_report, run_section
from saga.explain.report_logo import logo_section
from saga.explain.report_openworld import beyond_sections, load_beyond
from saga.explain.tsig import run_tsigs
from saga.explain.tsne import run_tsne
from saga.runs import file_fingerprint
from saga.runs.files import CALIBRATION, ENROLLED, OPENSET, ROBUSTNESS

X = "<script>x</script>"


def _html(run: Path) -> str:
    return render_report([run])


def _no_warnings(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


# -- defect 1: metrics, T-Sigs and t-SNE of older weights --------------------------------------------
def test_an_evaluation_and_figures_of_older_weights_are_flagged_not_shown(tmp_path: Path) -> None:
    """Evaluate an unfinished run, then its weights change (resumed to the end): the report must not
    show the old figures as the run's (it did, silently)."""
    from saga.explain.report_html import png_text

    cache = te.make_cache(tmp_path / "cache")
    run = te.make_run(tmp_path / "run", cache)
    (run / "done.json").unlink()  # killed mid-training
    with pytest.warns(UserWarning, match="unfinished .no done.json.: these are the metrics"):
        res = evaluate(run, cache.root, probe=False)
    assert res["run_model"] == file_fingerprint(run / "model.safetensors") and res["run_finished"] is False
    with pytest.warns(UserWarning, match="unfinished"):
        run_tsigs(run, cache.root)
    with pytest.warns(UserWarning, match="unfinished"):
        run_tsne(run, cache.root, color_by="GEN-L")
    assert png_text((run / "tsig_maps.png").read_bytes())["saga:run_model"] == res["run_model"]
    html = _html(run)
    assert "accuracy % (95 % CI)" in html and "The run is unfinished" in html and "other weights" not in html

    other = te.make_run(tmp_path / "other", cache, seed=1)  # "resumed": the best weights change
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    shutil.copy(other / "done.json", run / "done.json")
    html = _html(run)
    assert "accuracy % (95 % CI)" not in html and "Per-class accuracy" not in html and "Not evaluated" not in html
    assert "metrics-test.json, metrics.json: made with other weights" in html and "<code>saga evaluate</code>" in html
    assert "tsig_maps.png, tsig_profiles.png, tsne_GEN-L.png: made with other weights" in html
    assert "<code>saga tsig / saga tsne</code>" in html and html.count("<img") == 1  # the training curve only
    assert "The run is unfinished" not in html

    fresh = _no_warnings(lambda: evaluate(run, cache.root, probe=False))  # finished: no warning
    assert fresh["run_finished"] is True
    html = _html(run)
    assert "accuracy % (95 % CI)" in html and "metrics-test.json, metrics.json" not in html


def test_files_of_an_older_saga_without_weights_are_still_shown(tmp_path: Path) -> None:
    run = tro._run(tmp_path / "run", beyond=False)
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "done.json").write_text("{}")
    html = _html(run)
    assert "accuracy % (95 % CI)" in html and "other weights" not in html
    for name in ("metrics.json", "metrics-test.json"):  # now stamped with other weights: dropped
        m = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps({**m, "run_model": "0" * 32}))
    assert "accuracy % (95 % CI)" not in _html(run)


def test_a_stale_test_evaluation_falls_back_to_a_current_one(tmp_path: Path) -> None:
    run = tro._run(tmp_path / "run", beyond=False)
    (run / "model.safetensors").write_bytes(b"weights")
    m = json.loads((run / "metrics.json").read_text())
    (run / "metrics-test.json").write_text(json.dumps({**m, "run_model": "0" * 32}))
    (run / "metrics.json").write_text(json.dumps({**m, "split": "val", "run_model": file_fingerprint(
        run / "model.safetensors")}))
    loaded = load_run(run)
    assert loaded["metrics"]["split"] == "val" and loaded["stale"] == ["metrics-test.json"]
    assert "test" not in loaded["splits"]


# -- defect 2: every value escaped; defect 3: wrong types cost one line ------------------------------
def _replace(value: Any, leaf: Any) -> Any:
    if isinstance(value, dict):
        return {k: _replace(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, leaf) for v in value]
    return leaf


@pytest.mark.parametrize("leaf", [X, [X], {X: X}, True])
def test_every_value_of_every_run_file_hostile(tmp_path: Path, leaf: Any) -> None:
    """Each JSON scalar of a full run folder (metrics, calibration, open set, enrollment, robustness) and of an
    experiment's results.json replaced: no raw <script> and no traceback."""
    run = tro._run(tmp_path / "runs" / "run", beyond=True)
    exp = tro._experiment(tmp_path / "exp")
    for path in [*run.glob("*.json"), exp / "results.json"]:
        path.write_text(json.dumps(_replace(json.loads(path.read_text()), leaf)))
    html = render_report([run], openworld=[exp])
    assert "<script>" not in html.lower()


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _set(value: Any, path: tuple, leaf: Any) -> Any:
    out = json.loads(json.dumps(value))
    target = out
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = leaf
    return out


@pytest.mark.parametrize("leaf", [X, "0.5", [X]])
def test_each_metrics_field_wrongly_typed_alone(tmp_path: Path, leaf: Any) -> None:
    """One field at a time (the reviewer's per_class_n, confusion cell, per_class as a string crashed)."""
    run = tro._run(tmp_path / "run", beyond=False)
    metrics = json.loads((run / "metrics-test.json").read_text())
    for path in _leaves(metrics):
        (run / "metrics-test.json").write_text(json.dumps(_set(metrics, path, leaf)))
        html = run_section(1, load_run(run))
        assert "<script>" not in html, path


@pytest.mark.parametrize("name", [CALIBRATION, OPENSET, ENROLLED, ROBUSTNESS])
def test_each_field_of_the_beyond_files_hostile_alone(tmp_path: Path, name: str) -> None:
    """One field at a time, so a section that renders does render the hostile value (calibration's n,
    the open set's n_val, robustness' counts were pasted in raw)."""
    data = json.loads((tro._run(tmp_path / "full", beyond=True) / name).read_text())
    run = tro._run(tmp_path / "run", beyond=False)
    for path in _leaves(data):
        (run / name).write_text(json.dumps(_set(data, path, X)))
        assert "<script>" not in beyond_sections(load_beyond(run, None), "run"), path


def test_each_field_of_an_experiment_hostile_alone(tmp_path: Path) -> None:
    """The reviewer's seed and k of a results.json were pasted in raw (header and enrollment heading)."""
    exp = tro._experiment(tmp_path / "exp", with_scores=False)
    data = json.loads((exp / "results.json").read_text())
    for path in _leaves(data):
        (exp / "results.json").write_text(json.dumps(_set(data, path, X)))
        assert "<script>" not in logo_section(exp), path


def test_a_damaged_confusion_matrix_is_one_line(tmp_path: Path) -> None:
    run = tro._run(tmp_path / "run", beyond=False)
    m = json.loads((run / "metrics-test.json").read_text())
    m["confusion"][0][0] = X
    (run / "metrics-test.json").write_text(json.dumps(m))
    html = _html(run)
    assert "confusion matrix: unreadable data (TypeError" in html and "Per-class accuracy" in html
