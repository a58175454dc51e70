"""Follow-ups of the seal check and of the cache calibration.json / openset.json record: a fit is compared with the
videos it read (train videos added later are no change), and every command that opens a cache outside train /
evaluate (calibrate, openset fit / logo, enroll, robustness) refuses an edited sealed cache before writing."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from saga.cache.store import FeatureCache
from saga.errors import SagaError
from test_cache_seal_checks import _edit_first_label
from test_train import add_videos
from test_train_guards import cache, stage1  # noqa: F401 - a tiny sealed cache and a stage-1 run on it


def _cli(*args: str):  # noqa: ANN202 - a click Result
    from typer.testing import CliRunner

    from saga.cli import app

    return CliRunner().invoke(app, list(args))


def _copies(cache: FeatureCache, stage1: Path, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    run, copy = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(stage1, run)
    shutil.copytree(cache.root, copy)
    return run, copy


def _calibration_warnings(run: Path, copy: Path) -> list[str]:
    res = _cli("evaluate", str(run), "--cache", str(copy), "--no-probe", "--format", "json")
    assert res.exit_code == 0, res.output
    return [" ".join(w.split()) for w in res.stderr.split("warning:")[1:] if "calibration.json" in w]


def test_train_videos_added_after_a_fit_are_not_a_change_but_val_videos_are(cache: FeatureCache,  # noqa: F811
                                                                            stage1: Path,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    """The fit read the val split only: adding train videos warned "fitted ... before it changed" all the same."""
    from saga.openworld.api import calibrate_run
    from saga.openworld.fitcache import fit_digest

    run, copy = _copies(cache, stage1, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few val videos
        calibrate_run(run, copy, report_split=None)
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["fit_digest"] == fit_digest(FeatureCache.open(copy)) and "cache_digest" not in cal
    add_videos(copy, 2, "train")
    assert _calibration_warnings(run, copy) == []
    add_videos(copy, 2, "val")
    assert _calibration_warnings(run, copy) == [
        f"{run / 'calibration.json'}: fitted on {copy} before the videos it was fitted on changed (val videos "
        f"added, pruned or re-extracted since); refit it: `saga calibrate {run} --cache {copy}`"]


def test_a_file_with_the_old_all_splits_digest_is_still_compared(cache: FeatureCache, stage1: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    from saga.openworld.fitcache import other_cache
    from saga.runs import RunInfo, cache_digest

    _, copy = _copies(cache, stage1, tmp_path)
    info = RunInfo(stage1, {}, [], "BIN-L", 0, {"cache_id": cache.cache_id}, True)
    old = {"cache_id": cache.cache_id, "cache_digest": cache_digest(FeatureCache.open(copy))}
    path = stage1 / "calibration.json"
    assert other_cache(path, old, FeatureCache.open(copy), info, "fix") == ""
    grown = add_videos(copy, 1, "train")
    assert "this may be only other splits); fix" in other_cache(path, old, grown, info, "fix")
    assert other_cache(path, {**old, "fit_digest": "0" * 32}, grown, info, "fix").endswith(
        "before the videos it was fitted on changed (val videos added, pruned or re-extracted since); fix")
    assert "(val or labelled train videos added, pruned or re-extracted since); fix" in other_cache(
        path, {**old, "fit_digest": "0" * 32}, grown, info, "fix", {"real/v00.mp4"})  # openset.json: its bank too


@pytest.mark.parametrize("command", ["calibrate", "openset fit"])
def test_open_world_fits_refuse_an_edited_sealed_cache(command: str, cache: FeatureCache,  # noqa: F811
                                                       stage1: Path, tmp_path: Path) -> None:  # noqa: F811
    run, copy = _copies(cache, stage1, tmp_path)
    _edit_first_label(copy)
    before = sorted(p.name for p in run.iterdir())
    res = _cli(*command.split(), str(run), "--cache", str(copy))
    assert isinstance(res.exception, SagaError), res.output
    assert "changed since it was sealed" in str(res.exception)
    assert sorted(p.name for p in run.iterdir()) == before  # no calibration.json / openset.json written


def test_enroll_refuses_an_edited_sealed_cache(cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:  # noqa: F811
    run, copy = _copies(cache, stage1, tmp_path)
    _edit_first_label(copy)
    res = _cli("enroll", str(run), "--generator", "syn-svd", "--cache", str(copy))
    assert isinstance(res.exception, SagaError) and "changed since it was sealed" in str(res.exception), res.output


def test_openset_logo_refuses_an_edited_sealed_cache_before_any_fold(cache: FeatureCache,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache.root, copy)
    _edit_first_label(copy)
    out = tmp_path / "logo"
    res = _cli("openset", "logo", "--cache", str(copy), "--out", str(out))
    assert isinstance(res.exception, SagaError) and "changed since it was sealed" in str(res.exception), res.output
    assert not out.exists()


def test_robustness_refuses_an_edited_sealed_cache_before_writing(cache: FeatureCache, stage1: Path,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    run, copy = _copies(cache, stage1, tmp_path)
    _edit_first_label(copy)
    (tmp_path / "videos").mkdir()
    out = tmp_path / "rob"
    res = _cli("robustness", str(run), "--videos", str(tmp_path / "videos"), "--cache", str(copy), "--out", str(out),
               "--device", "cpu")
    assert isinstance(res.exception, SagaError) and "changed since it was sealed" in str(res.exception), res.output
    assert not out.exists()


def test_the_open_set_digest_covers_the_labelled_train_videos_it_read(cache: FeatureCache,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    """openset.json's prototypes and k-NN bank come from the run's labelled train videos: they count, other train
    videos do not."""
    from saga.openworld.fitcache import fit_digest

    copy = tmp_path / "cache"
    shutil.copytree(cache.root, copy)
    opened = FeatureCache.open(copy)
    labelled = {next(iter(opened.ok_records("train"))).path}
    before = fit_digest(opened, labelled)
    assert before != fit_digest(opened)
    grown = add_videos(copy, 2, "train")
    assert fit_digest(grown, labelled) == before
    assert fit_digest(grown, labelled | {"syn-svd/added-train-000.mp4"}) != before
