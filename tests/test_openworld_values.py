"""Open-world files with damaged or edited values (QA report "openworld" finding 3, QA "predict" 4-5): one line naming
the file, the key and the fix (CPU, tiny, deterministic; split from test_openworld_guards.py).

The toy cache and the untrained GEN-L run come from test_openworld.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import saga.openworld.api as api
from saga.cli import app
from saga.errors import SagaError
from saga.openworld.api import calibrate_run, enroll_run, fit_openset_run
from saga.openworld.extras import OpenWorld
from saga.runs import load_model
from expected_warnings import unreliable
from test_openworld import KNOWN
from test_openworld_guards import copy_run, world  # noqa: F401  (the fixture, built once per module)

# 3 -- damaged values of openset.json / enrolled.json ------------------------------------------------
ENROLLED_EDITS = [("tau", 0), ("tau", -0.05), ("tau", "abc"), ("tau", float("nan")), ("level", "XX-L"),
                  ("labels", None), ("classes", KNOWN[:-1])]
OPENSET_EDITS = [("threshold", None), ("threshold", "abc"), ("k", 0), ("k", "5"), ("kind", "bogus"),
                 ("percentile", 0)]


def edited(path: Path, key: str, value: Any) -> None:
    meta = json.loads(path.read_text())
    if key == "labels":
        meta["entries"][0]["labels"].pop("GEN-L")
    else:
        meta[key] = value
    path.write_text(json.dumps(meta))


def test_damaged_values_are_one_line_naming_the_file_and_the_fix(world: dict[str, Any], tmp_path: Path) -> None:
    """Each edit used to be a traceback in predict (and evaluate), or NaN / inverted / wrongly scored output."""
    run = copy_run(world, tmp_path)
    with unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(run)
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "syn-hotshot", world["cache"].root, split="train")
    _, info = load_model(run)
    for name, edits, fix in (("enrolled.json", ENROLLED_EDITS, "delete enrolled.json and enroll again"),
                             ("openset.json", OPENSET_EDITS, "rerun `saga openset fit`")):
        good = (run / name).read_text()
        for key, value in edits:
            edited(run / name, key, value)
            with pytest.raises(SagaError) as exc:
                OpenWorld.load(run, info)  # what predict loads
            text = str(exc.value)
            assert text.startswith(f"{run / name}: damaged (") and text.endswith(fix) and "\n" not in text, text
            assert (key if key != "labels" else "GEN-L label") in text
            (run / name).write_text(good)
    assert OpenWorld.load(run, info).enrollment.names == ["syn-hotshot"]  # the good files still load
    edited(run / "openset.json", "threshold", None)
    res = CliRunner().invoke(app, ["evaluate", str(run), "--cache", str(world["cache"].root), "--no-probe"])
    assert res.exit_code == 0 and "open-world figures skipped" in res.output, res.output
    assert (run / "metrics.json").is_file()  # the metrics are kept


def test_values_a_fit_cannot_produce_are_refused_naming_the_key(world: dict[str, Any], tmp_path: Path) -> None:
    """QA: k 10000 (20 videos in the bank), kind prototype (the knn threshold applied to the other score),
    threshold -5 (every video unknown) or 1e308 (a bare numpy overflow warning) were all used silently."""
    run = copy_run(world, tmp_path)
    with unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(run)
    _, info = load_model(run)
    path, good = run / "openset.json", (run / "openset.json").read_text()
    fitted = json.loads(good)
    for key, value, said in (("k", 10000, "k 10000 is more than the 20 videos of its k-NN bank"),
                             ("kind", "prototype", "kind 'prototype' is not the value fitted, 'knn'"),
                             ("threshold", -5, "threshold -5 is outside the knn score's range [0, 2]"),
                             ("threshold", 1e308, "threshold 1e+308 is outside the knn score's range [0, 2]"),
                             ("threshold", 0.1, f"threshold 0.1 is not the value fitted, {fitted['threshold']!r}"),
                             ("n_val", 0, "n_val 0 is not a whole number >= 1")):
        edited(path, key, value)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no numpy overflow warning first
            with pytest.raises(SagaError) as exc:
                OpenWorld.load(run, info)
        assert str(exc.value) == f"{path}: damaged ({said}); rerun `saga openset fit`"
        path.write_text(good)
    assert OpenWorld.load(run, info).openset.threshold == fitted["threshold"]
    from saga.openworld.store import read_pair, save_pair

    meta, tensors, sealed = read_pair(run, "openset", "")  # a file of an older saga: nothing sealed
    assert sealed is not None and sealed["kind"] == "knn"
    for old in run.glob("openset.*.safetensors"):
        old.unlink()
    save_pair(run, "openset", tensors, {**{k: v for k, v in meta.items() if not k.startswith("tensors")}, "k": 25})
    with pytest.raises(SagaError, match=r"damaged \(k 25 is more than the 20 videos of its k-NN bank\)"):
        OpenWorld.load(run, info)


def test_a_calibration_no_fit_writes_is_refused_naming_the_key_and_the_fix(world: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    """QA: `classes` of another run and T = 1e300 (every probability 5 %, the predicted class missing from its
    own top list) or 1e-30 were used; a corrupt file named no fix."""
    run = copy_run(world, tmp_path)
    with unreliable("the temperature"):
        calibrate_run(run, report_split=None)
    _, info = load_model(run)
    path, good = run / "calibration.json", (run / "calibration.json").read_text()
    fix, bounds = "rerun `saga calibrate`", "is not a number in [0.01, 1000], the fit's range"
    for key, value, said in (("classes", ["a", "b"], f"2 classes, the run has {len(KNOWN)}"),
                             ("classes", KNOWN[::-1], f"class 0 is {KNOWN[-1]!r}, the run's is {KNOWN[0]!r}"),
                             ("temperature", 1e300, f"temperature 1e+300 {bounds}"),
                             ("temperature", 1e-30, f"temperature 1e-30 {bounds}"),
                             ("n", 0, "n 0 is not a whole number >= 1"),
                             ("ece_after", 2.5, "ece_after 2.5 is not a share in [0, 1]")):
        edited(path, key, value)
        with pytest.raises(SagaError) as exc:
            OpenWorld.load(run, info)  # what predict loads
        assert str(exc.value) == f"{path}: damaged ({said}); {fix}"
        path.write_text(good)
    assert OpenWorld.load(run, info).calibration.classes == KNOWN
    path.write_text(good[:-20])
    with pytest.raises(SagaError, match=r"calibration.json: corrupt JSON \(.*\); rerun `saga calibrate`$"):
        OpenWorld.load(run, info)


def test_calibrate_warns_when_the_temperature_ends_at_the_edge_of_its_search(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every val video wrong and sure of it: the NLL falls towards T = 1000 (near-uniform probabilities), the
    bound of the search, and `saga calibrate` said nothing about it."""
    from saga.openworld.calibration import fit_calibration

    run = copy_run(world, tmp_path)
    monkeypatch.setattr(api, "fit_calibration", lambda z, *a, **k: fit_calibration(-50 * z, *a, **k))
    res = CliRunner().invoke(app, ["calibrate", str(run)])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert (f"warning: {run / 'calibration.json'}: T = 1000 is at the edge of the search (0.01-1000): the "
            "validation NLL has no minimum inside it, so the calibration is degenerate (its probabilities near "
            "uniform); fit it on more val videos") in out
    monkeypatch.undo()
    res = CliRunner().invoke(app, ["calibrate", str(run)])  # the run's own fit: inside the bounds, no warning
    assert res.exit_code == 0 and "degenerate" not in res.output, res.output


SEEN_EDITS = ["own cache", ["a.mp4"], {"n": "2", "examples": ["a.mp4"], "in": "own cache"},
              {"n": 2, "examples": [1, 2], "in": "own cache"}, {"n": 2, "examples": ["a.mp4"], "in": ["x"]},
              {"n": 100_000, "examples": ["a.mp4"] * 100_000, "in": "own cache"}, {"n": 0, "examples": [], "in": ""},
              {"n": 2, "examples": ["a.mp4"], "in": "own cache", "extra": "x" * 1000}]


def test_a_damaged_seen_in_training_of_enrolled_json_is_one_line(world: dict[str, Any], tmp_path: Path) -> None:
    """seen_in_training (the val videos left out of τ's fit) was taken as it came: a string or a list was dropped
    without a word, a dict of any content (non-text examples, 100,000 of them) written back by every enroll."""
    run = copy_run(world, tmp_path)
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "syn-hotshot", world["cache"].root, split="train")
    _, info = load_model(run)
    path = run / "enrolled.json"
    meta = json.loads(path.read_text())
    fix = "delete enrolled.json and enroll again"
    for value in SEEN_EDITS:
        path.write_text(json.dumps({**meta, "seen_in_training": value}))
        for load in (lambda: OpenWorld.load(run, info),  # predict
                     lambda: enroll_run(run, "g2", world["cache"].root, videos="syn-hotshot", split="train")):  # enroll
            with pytest.raises(SagaError) as exc:
                load()
            text = str(exc.value)
            assert text.startswith(f"{path}: damaged (seen_in_training ") and text.endswith(fix), text
            assert "\n" not in text and len(text) < 500
    seen = {"n": 2, "examples": ["syn-hotshot/a.mp4"], "in": "own cache"}  # what enroll writes: kept
    path.write_text(json.dumps({**meta, "seen_in_training": seen}))
    assert OpenWorld.load(run, info).enrollment.seen_in_training == seen
    enroll_run(run, "g2", world["cache"].root, videos="syn-hotshot", split="train")
    assert json.loads(path.read_text())["seen_in_training"] == seen


@pytest.mark.parametrize("name, fix", [("calibration.json", "rerun `saga calibrate`"),
                                       ("openset.json", "rerun `saga openset fit`")])
def test_a_damaged_seen_in_training_of_the_other_fits_is_one_line(name: str, fix: str, world: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    """The same record in calibration.json and openset.json (an older, unsealed one) was taken unchecked too."""
    run = copy_run(world, tmp_path)
    with unreliable("the temperature" if name == "calibration.json" else "the unknown threshold at the 95th "
                    "percentile"):
        calibrate_run(run, report_split=None) if name == "calibration.json" else fit_openset_run(run)
    _, info = load_model(run)
    path = run / name
    meta = json.loads(path.read_text())
    if name == "openset.json":  # an older saga's file: nothing sealed, so the values alone are checked
        from saga.openworld.store import read_pair, save_pair

        _, tensors, _ = read_pair(run, "openset", "")
        for old in run.glob("openset.*.safetensors"):
            old.unlink()
        save_pair(run, "openset", tensors, {k: v for k, v in meta.items() if not k.startswith("tensors")})
        meta = json.loads(path.read_text())
    for value in SEEN_EDITS[:4]:
        path.write_text(json.dumps({**meta, "seen_in_training": value}))
        with pytest.raises(SagaError) as exc:
            OpenWorld.load(run, info)
        text = str(exc.value)
        assert text.startswith(f"{path}: damaged (seen_in_training ") and text.endswith(fix) and "\n" not in text
