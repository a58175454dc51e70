"""The split flags beyond `saga evaluate`'s own figures: the probe beside it, `saga probe`, `saga tsig` / `tsne` /
`robustness`, an evaluation written before the flags existed, and calibration.json / openset.json used with
another cache than the one they were fitted on."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from saga.cache.store import FeatureCache
from test_split_fixes import _probe_cache
from test_train import add_videos
from test_robustness_split import world  # noqa: F401 - tiny videos, their cache and untrained runs
from test_train_guards import cache, stage1  # noqa: F401 - a tiny cache and a stage-1 run chosen on its val split

CHOSEN = "(chose the checkpoint: optimistic)"
TRAINED = "(trained on: fit, not generalisation)"


def _cli(*args: str):  # noqa: ANN202 - a click Result
    from typer.testing import CliRunner

    from saga.cli import app

    return CliRunner().invoke(app, list(args))


def _run_copy(stage1: Path, tmp_path: Path) -> tuple[Path, str]:  # noqa: F811 - the fixture's value
    run = tmp_path / "run"
    shutil.copytree(stage1, run)
    return run, str(json.loads((run / "config.json").read_text())["cache"])


def _warnings(stderr: str) -> list[str]:
    return [" ".join(line.split()) for line in stderr.split("warning:")[1:]]


def _report(run: Path, tmp_path: Path) -> str:
    html = tmp_path / "r.html"
    res = _cli("report", str(run), "--out", str(html))
    assert res.exit_code == 0, res.output
    return " ".join(html.read_text().split())


# --- 1. the probe ---------------------------------------------------------------------------------------------

def test_the_probe_beside_a_run_on_its_train_split_is_flagged_too(stage1: Path, tmp_path: Path) -> None:  # noqa: F811
    """`saga evaluate --split train` flagged the run's accuracy but showed the probe's, fitted on the same train
    videos, beside it unflagged (JSON, table caption, report)."""
    run, cache_path = _run_copy(stage1, tmp_path)
    res = _cli("evaluate", str(run), "--cache", cache_path, "--split", "train")
    assert res.exit_code == 0, res.output
    probe = json.loads((run / "metrics-train.json").read_text())["probe"]
    assert "accuracy" in probe and probe["trained_on_split"] == "train"
    assert _warnings(res.stderr) == [f"{run}: the run and the probe beside it trained on these videos: these "
                                     "accuracies measure fit, not generalisation; use --split test"]
    assert f"on train {TRAINED}: accuracy" in " ".join(res.stdout.split())  # the probe's caption line
    assert f"Scored on train {TRAINED}." in _report(run, tmp_path)  # metrics.json is the train evaluation
    from saga.explain.split_flags import mark_probe

    test = {"split": "test", "probe": {"accuracy": 0.5}}
    mark_probe(test)  # what compute_evaluation does on every split: only the run's train split marks the probe
    assert test == {"split": "test", "probe": {"accuracy": 0.5}}


def test_the_paired_difference_on_the_val_split_that_chose_the_checkpoint_is_marked(stage1: Path,  # noqa: F811
                                                                                     tmp_path: Path) -> None:
    """On val the probe chose C by cross-validation on train (not flagged), but "run − probe" carries the run's
    optimistic figure."""
    run, cache_path = _run_copy(stage1, tmp_path)
    res = _cli("evaluate", str(run), "--cache", cache_path, "--split", "val")
    assert res.exit_code == 0, res.output
    probe = json.loads((run / "metrics-val.json").read_text())["probe"]
    assert "trained_on_split" not in probe and probe["selection"]["selected_on"] == "train"
    assert probe.get("paired"), "the probe and the run scored the same videos"
    text = " ".join(res.stdout.split())
    assert "below the probe (the run's side is optimistic: val chose its checkpoint)" in text
    assert "side is optimistic: val chose its checkpoint)." in _report(run, tmp_path)  # the report's probe line


def test_saga_probe_on_the_train_split_says_it_measures_fit(tmp_path: Path) -> None:
    """`saga probe --split train` scored the probe on the videos it was fitted on, like a test figure."""
    root = _probe_cache(tmp_path / "c", 0).root
    out = tmp_path / "p"
    args = ["probe", "--cache", str(root), "--level", "GEN-L", "--fraction", "1.0", "--out", str(out)]
    res = _cli(*args, "--split", "train", "--format", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["trained_on_split"] == "train"
    assert json.loads((out / "metrics-train.json").read_text())["trained_on_split"] == "train"
    assert _warnings(res.stderr) == [f"{out}: the probe was fitted on {data['n_train']} of these {data['n']} "
                                     "videos: its accuracy measures fit, not generalisation; use --split test"]
    assert f"train {TRAINED}" in " ".join(_cli(*args, "--split", "train").stdout.split())
    test = _cli(*args, "--format", "json")
    assert "warning" not in test.stderr and "trained_on_split" not in test.stdout


# --- 2. tsig, tsne, robustness ----------------------------------------------------------------------------------

def test_tsig_and_tsne_on_the_val_split_that_chose_the_checkpoint_are_flagged(stage1: Path,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    from saga.explain.report_html import png_text

    run, cache_path = _run_copy(stage1, tmp_path)
    res = _cli("tsig", str(run), "--cache", cache_path, "--split", "val")
    assert res.exit_code == 0, res.output
    assert _warnings(res.stderr) == [f"{run}: the checkpoint was chosen on val: the T-Sigs are optimistic; use "
                                     "--split test"]
    with np.load(run / "tsig-val.npz") as z:
        assert json.loads(str(z["checkpoint_chosen_on_split"]))["selected_on"] == "val"
    assert "checkpoint_chosen_on_split" in {k.removeprefix("saga:") for k in
                                            png_text((run / "tsig_maps-val.png").read_bytes())}
    res = _cli("tsne", str(run), "--cache", cache_path, "--split", "train")
    assert res.exit_code == 0, res.output
    assert _warnings(res.stderr) == [f"{run}: the run trained on these videos: the t-SNE map is of fit, not "
                                     "generalisation; use --split test"]
    stamp = json.loads(next(run.glob("tsne_*-train.json")).read_text())
    assert stamp["trained_on_split"] == "train"
    page = _report(run, tmp_path)
    assert f"val split {CHOSEN}" in page and f"train split {TRAINED}" in page  # the figures' captions
    test = _cli("tsig", str(run), "--cache", cache_path)
    assert test.exit_code == 0 and "warning" not in test.stderr


def test_robustness_on_the_val_split_that_chose_the_checkpoint_is_flagged(world: dict[str, Path],  # noqa: F811
                                                                           tmp_path: Path) -> None:
    """`saga robustness --split val` scored the videos that chose the kept epoch, clean and perturbed, unflagged."""
    from saga.robustness.evaluate import markdown
    from test_robustness_split import robustness

    run = tmp_path / "gen"
    shutil.copytree(world["gen"], run)
    (run / "done.json").write_text(json.dumps({"metric": "val_macro_accuracy", "select": "accuracy", "best_epoch": 1}))
    with pytest.warns(UserWarning, match="the checkpoint was chosen on val: the robustness accuracies are optimistic"):
        result = robustness({**world, "gen": run}, "gen", tmp_path / "out", split="val")
    chosen = {"selected_on": "val", "select": "accuracy", "best_epoch": 1}
    assert result["checkpoint_chosen_on_split"] == chosen
    assert json.loads((tmp_path / "out" / "robustness-val.json").read_text())["checkpoint_chosen_on_split"] == chosen
    assert f"split val {CHOSEN}" in (tmp_path / "out" / "robustness-val.md").read_text()
    trained = {**result, "split": "train", "trained_on_split": "train"}
    del trained["checkpoint_chosen_on_split"]
    assert f"split train {TRAINED}" in markdown(trained)
    assert "split test," in markdown({k: v for k, v in trained.items() if k != "trained_on_split"} | {"split": "test"})


# --- 3. an evaluation written before the flags -------------------------------------------------------------------

def test_the_report_marks_an_old_evaluation_of_the_split_that_chose_the_checkpoint(stage1: Path,  # noqa: F811
                                                                                    tmp_path: Path) -> None:
    """metrics-val.json written before `checkpoint_chosen_on_split` existed was shown like a test figure."""
    run, cache_path = _run_copy(stage1, tmp_path)
    for split in ("val", "test"):
        assert _cli("evaluate", str(run), "--cache", cache_path, "--split", split, "--no-probe").exit_code == 0
    old = json.loads((run / "metrics-val.json").read_text())
    old.pop("checkpoint_chosen_on_split")
    (run / "metrics-val.json").write_text(json.dumps(old))
    assert f"also evaluated: val {CHOSEN}" in _report(run, tmp_path)
    (run / "metrics.json").write_text(json.dumps(old))
    (run / "metrics-test.json").unlink()
    assert _report(run, tmp_path).count(f"val {CHOSEN}") >= 2  # summary row and metrics heading


def test_the_report_marks_an_old_t_sig_figure_of_the_split_that_chose_the_checkpoint(stage1: Path,  # noqa: F811
                                                                                      tmp_path: Path) -> None:
    """A tsig_maps-val.png written before the flags (its metadata: weights, split, cache; no flag) was captioned
    "val split" only."""
    from saga.explain.metrics import run_weights
    from saga.explain.tsig import write_tsigs

    run, _ = _run_copy(stage1, tmp_path)
    cache_id = json.loads((run / "provenance.json").read_text())["cache_id"]
    sig = {"map": np.eye(4, dtype=np.float32), "profile": np.full(4, 0.25, np.float32), "n": 3}
    write_tsigs({"real": sig, "fake": sig}, run, {"run_model": run_weights(run), "split": "val", "cache_id": cache_id},
                "val split")
    assert f"mean over heads and videos) · val split {CHOSEN}" in _report(run, tmp_path)


def test_an_old_heldout_or_test_evaluation_is_not_inferred_to_be_flagged(stage1: Path) -> None:  # noqa: F811
    from saga.explain.split_flags import inferred

    assert inferred(stage1, {"split": "val"})["checkpoint_chosen_on_split"]["selected_on"] == "val"
    assert inferred(stage1, {"split": "train"})["trained_on_split"] == "train"
    assert inferred(stage1, {"split": "val", "heldout": "seed1-3f9a2b7c"}) == {"split": "val",
                                                                                "heldout": "seed1-3f9a2b7c"}
    assert inferred(stage1, {"split": "test"}) == {"split": "test"}


# --- 4. the cache an open-world file was fitted on ----------------------------------------------------------------

def test_a_calibration_used_on_its_cache_after_it_changed_is_warned_about(cache: FeatureCache,  # noqa: F811
                                                                          stage1: Path,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    from saga.openworld.api import calibrate_run
    from saga.openworld.fitcache import fit_digest

    run, _ = _run_copy(stage1, tmp_path)
    copy = tmp_path / "cache"
    shutil.copytree(cache.root, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few val videos
        calibrate_run(run, copy, report_split=None)
    cal = json.loads((run / "calibration.json").read_text())
    assert (cal["cache_id"], cal["fit_digest"]) == (cache.cache_id, fit_digest(FeatureCache.open(copy)))
    args = ("evaluate", str(run), "--cache", str(copy), "--no-probe", "--format", "json")
    same = _cli(*args)
    assert same.exit_code == 0 and "calibration.json" not in same.stderr
    assert json.loads(same.stdout)["openworld"]["calibration"]["fitted_on_cache"] == cache.cache_id
    add_videos(copy, 2, "val")
    changed = _cli(*args)
    assert changed.exit_code == 0, changed.output
    assert [w for w in _warnings(changed.stderr) if "calibration.json" in w] == [
        f"{run / 'calibration.json'}: fitted on {copy} before the videos it was fitted on changed (val videos "
        f"added, pruned or re-extracted since); refit it: `saga calibrate {run} --cache {copy}`"]
    del cal["cache_id"], cal["fit_digest"]  # a file written before they were recorded: loads, no warning
    (run / "calibration.json").write_text(json.dumps(cal))
    old = _cli(*args)
    assert old.exit_code == 0 and "calibration.json" not in old.stderr and "calibration" in json.loads(
        old.stdout)["openworld"]


def test_which_cache_a_fit_is_warned_about(cache: FeatureCache, stage1: Path) -> None:  # noqa: F811
    from saga.openworld.fitcache import fit_cache_problem, other_cache
    from saga.runs import RunInfo, cache_digest

    info = RunInfo(stage1, {}, [], "BIN-L", 0, {"cache_id": cache.cache_id}, True)
    here = {"cache_id": cache.cache_id, "cache_digest": cache_digest(cache)}
    path = stage1 / "openset.json"
    assert other_cache(path, here, cache, info, "fix") == ""
    assert other_cache(path, {}, cache, info, "fix") == ""  # an older file: unknown
    elsewhere = {"cache_id": "f" * 32, "cache_digest": "0"}
    assert other_cache(path, elsewhere, cache, info, "fix") == (
        f"{path}: fitted on cache {'f' * 12}, not {cache.root} ({cache.cache_id[:12]}); fix")
    heldout = RunInfo(stage1, {}, [], "BIN-L", 0, {"cache_id": "f" * 32}, True)  # `cache` is held out for it
    assert other_cache(path, elsewhere, cache, heldout, "fix") == ""  # fitted on the run's own cache: as meant
    assert fit_cache_problem({"cache_id": 3}) == "cache_id 3 is not text"
    assert fit_cache_problem({}) == ""


def test_openset_json_records_its_cache_and_an_old_one_still_loads(tmp_path: Path) -> None:
    from saga.errors import SagaError
    from saga.openworld.openset import OpenSet
    from saga.openworld.store import pair_lock

    protos, bank = np.eye(2, 4, dtype=np.float32), np.eye(3, 4, dtype=np.float32)
    det = OpenSet("knn", 2, 95.0, 0.5, "w", ["a", "b"], 4, protos, bank, cache_id="c" * 32, cache_digest="d" * 32)
    with pair_lock(tmp_path):
        det.save(tmp_path)
    back = OpenSet.load(tmp_path, "w", ["a", "b"])
    assert (back.cache_id, back.cache_digest) == ("c" * 32, "d" * 32)
    det.cache_id = det.cache_digest = None
    with pair_lock(tmp_path):
        det.save(tmp_path)
    assert "cache_id" not in json.loads((tmp_path / "openset.json").read_text())
    assert OpenSet.load(tmp_path, "w", ["a", "b"]).cache_id is None
    det.cache_id = 5  # type: ignore[assignment]
    with pair_lock(tmp_path):
        det.save(tmp_path)
    with pytest.raises(SagaError, match="damaged \\(cache_id 5 is not text\\)"):
        OpenSet.load(tmp_path, "w", ["a", "b"])


def test_figures_fitted_on_another_caches_val_are_not_marked_as_fitted_on_this_one() -> None:
    from saga.explain.split_flags import mark_openworld

    def marked(fit_cache: str | None) -> object:
        metrics = {"split": "val", "cache_id": "own", "openworld": {
            "calibration": {"fitted_on_cache": fit_cache} if fit_cache else {}, "openset": {"fitted_on_cache": "own"}}}
        mark_openworld(metrics)
        return metrics["openworld"].get("fitted_on_split")

    assert marked(None) == {"split": "val", "fitted": ["the temperature", "the unknown threshold"],  # older file
                            "cache_unknown": ["calibration.json"]}  # presumed this cache's: said so
    assert marked("other") == {"split": "val", "fitted": ["the unknown threshold"]}
