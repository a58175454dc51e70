"""Open-world defects of QA report "openworld" (findings 2-6), one test each (CPU, tiny, deterministic).

The toy cache (3 val videos per generator: 12 of the run's classes) and the untrained GEN-L run that
never saw syn-hotshot come from test_openworld.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import saga.locks as locks
import saga.openworld.api as api
from saga.cli import app
from saga.errors import SagaError
from saga.model.inference import infer
from saga.openworld.api import calibrate_run, enroll_run, fit_openset_run
from saga.openworld.enroll import Enrollment, generator_labels
from saga.openworld.logo import evaluate_folds
from saga.openworld.openset import OpenSet
from saga.openworld.store import pair_lock
from saga.runs import load_model, write_json
from saga.runs.files import OPENWORLD_LOCK
from expected_warnings import seen_videos, unreliable
from test_openworld import KNOWN, make_cache, make_run
from test_openworld_fixes import cache_with_failures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("owguard")
    cache = make_cache(tmp / "cache")
    return {"tmp": tmp, "cache": cache, "run": make_run(tmp / "run", cache)}


def copy_run(world: dict[str, Any], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    return run


# 2 -- two enrollments of one run at once -----------------------------------------------------------
def test_two_enrollments_at_once_both_survive(world: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A is held between reading enrolled.json and writing it; B, started meanwhile, must wait and then add to
    A's file (it used to write its own, and A's later write dropped B's entry: both exit 0)."""
    run = copy_run(world, tmp_path)
    inside, release, waiting = threading.Event(), threading.Event(), threading.Event()
    add_entry = api.add_entry

    def held(enr: Enrollment, name: str, *args: Any) -> Enrollment:
        if name == "genA":
            inside.set()
            assert release.wait(60)
        return add_entry(enr, name, *args)

    monkeypatch.setattr(api, "add_entry", held)
    notes: list[str] = []
    monkeypatch.setattr(locks, "warnings", SimpleNamespace(
        warn=lambda message, **_: (notes.append(str(message)), waiting.set())), raising=False)
    errors: list[BaseException] = []

    def enroll(name: str, videos: str) -> None:
        try:
            enroll_run(run, name, world["cache"].root, videos=videos, split="train")
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    a = threading.Thread(target=enroll, args=("genA", "syn-hotshot"))
    with unreliable("the prototype temperature τ"):  # A's fit; B enrolls with A's prototypes and τ
        a.start()
        assert inside.wait(60)
        b = threading.Thread(target=enroll, args=("genB", "syn-pika"))
        b.start()
        while b.is_alive() and not waiting.wait(0.05):
            pass  # B either finishes (no lock) or waits on the lock A holds
        release.set()
        a.join(60)
        b.join(60)
    assert not errors, errors
    assert sorted(Enrollment.load(run).names) == ["genA", "genB"]
    assert notes and "another saga process is writing its open-world files" in notes[0]
    assert len(list(run.glob("enrolled.*.safetensors"))) == 1


# 4 -- enroll's --run-cache --------------------------------------------------------------------------
def test_enroll_names_run_cache_and_checks_it_on_later_enrollments(world: dict[str, Any], tmp_path: Path) -> None:
    run = copy_run(world, tmp_path)
    config = json.loads((run / "config.json").read_text())
    write_json(run / "config.json", {**config, "cache": str(tmp_path / "moved")})
    new = world["cache"].root
    with pytest.raises(SagaError, match=r"moved: cache folder not found; pass the run's feature cache with "
                                        r"--run-cache$"):
        enroll_run(run, "g1", new, videos="syn-hotshot")
    labelled = json.loads((run / "labelled.json").read_text())
    write_json(run / "labelled.json", {**labelled, "classes": {**labelled["classes"], "real": ["real/zzz.mp4"]}})
    with pytest.raises(SagaError, match=r"1 of the run's labelled videos are not in this cache; pass the run's "
                                        r"own cache \(--run-cache\)"):
        enroll_run(run, "g1", new, videos="syn-hotshot", run_cache_path=new)
    write_json(run / "labelled.json", labelled)
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "g1", new, videos="syn-hotshot", run_cache_path=new)
    enroll_run(run, "g2", new, videos="syn-pika", run_cache_path=new)  # the same run cache: fine
    other = make_cache(tmp_path / "other")  # same videos, another cache
    for bad, match in ((other.root, "holds the run's prototypes and τ from another cache; leave out --run-cache"),
                       (tmp_path / "nonexistent", "cache folder not found; pass the run's feature cache with "
                                                  "--run-cache")):
        with pytest.raises(SagaError, match=match):
            enroll_run(run, "g3", new, videos="syn-sd", run_cache_path=bad)
    assert Enrollment.load(run).names == ["g1", "g2"]


# 5 -- a tiny val split -----------------------------------------------------------------------------
def test_openset_fit_prints_the_stored_rate_and_small_val_splits_warn(world: dict[str, Any], tmp_path: Path) -> None:
    """12 known val videos: the 95th percentile leaves 1 of 12 above it (8.3 %), not the "≈5 %" once printed."""
    res = CliRunner().invoke(app, ["openset", "fit", str(world["run"]), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "of 12 known val videos (8.3 % of them above it" in res.output
    det = OpenSet.load(tmp_path)
    model, info = load_model(world["run"])
    val = infer(model, info, world["cache"], list(world["cache"].ok_records("val")))
    measured = float((det.score(val.embeddings[val.targets >= 0]) > det.threshold).mean())
    assert det.val_false_unknown == measured == 1 / 12
    assert "only 12 known val videos: the unknown threshold at the 95th percentile is unreliable" in res.output
    with pytest.warns(UserWarning, match=r"only 12 known val videos: the temperature is unreliable"):
        calibrate_run(world["run"], out=tmp_path, report_split=None)
    with pytest.warns(UserWarning, match=r"only 12 known val videos: the prototype temperature τ is unreliable"):
        enroll_run(world["run"], "g", world["cache"].root, videos="syn-hotshot", out=tmp_path)


def test_no_val_video_names_the_cache(world: dict[str, Any], tmp_path: Path) -> None:
    val = {f"{g}/v{k}.mp4" for g in KNOWN for k in (5, 6, 7)}  # SPLITS: v5-v7 are val
    cache = cache_with_failures(tmp_path / "noval", val)
    for fit in (lambda: calibrate_run(world["run"], cache.root, out=tmp_path, report_split=None),
                lambda: fit_openset_run(world["run"], cache.root, out=tmp_path)):
        with pytest.raises(SagaError, match=rf"^{cache.root}: no val videos of run .*'s classes: cannot fit"):
            fit()


# 6 -- 'real' as a team or SD backbone ---------------------------------------------------------------
def test_real_is_refused_as_team_sd_or_name(world: dict[str, Any], tmp_path: Path) -> None:
    for team, sd, name, flag in (("real", None, "g", "--team real"), (None, "Real", "g", "--sd Real"),
                                 ("T", "none", "real", "--generator real")):
        with pytest.raises(SagaError, match=f"^{flag}: 'real' is the real-video class"):
            generator_labels(name, "T2V", sd, team)
    with pytest.raises(SagaError, match="--team real"):
        enroll_run(world["run"], "g", world["cache"].root, videos="syn-hotshot", team="real", out=tmp_path)
    assert not (tmp_path / "enrolled.json").exists()
    assert generator_labels("g", None, "none", "Realtime Labs")["TEAM-L"] == "Realtime Labs"
    np.testing.assert_equal(generator_labels("g", None, "NONE", None)["SD-L"], "none")


# -- follow-up: the training lock, calibrate's writer lock, logo's val checks, re-enrollment, k used -------------
HOLD_TRAINING_LOCK = "import sys; from saga.runs import RunFolder; RunFolder(sys.argv[1]).lock(); print('held', " \
                     "flush=True); sys.stdin.read()"


def test_fits_are_refused_while_another_process_trains_the_run(world: dict[str, Any], tmp_path: Path) -> None:
    """`saga train`/`attribute` holds RUN/.lock while it trains: a fit then used the weights about to change."""
    run = copy_run(world, tmp_path)
    trainer = subprocess.Popen([sys.executable, "-c", HOLD_TRAINING_LOCK, str(run)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout is not None and trainer.stdout.readline() == "held\n"
        for doing, fit in (("calibrate", lambda: calibrate_run(run, report_split=None)),
                           ("openset fit", lambda: fit_openset_run(run)),
                           ("enroll", lambda: enroll_run(run, "g", world["cache"].root, videos="syn-hotshot"))):
            with pytest.raises(SagaError, match=rf"^{run}: another saga process is training this run right now, so "
                                                rf"`saga {doing}` would use weights about to change; wait for it"):
                fit()
        res = CliRunner().invoke(app, ["openset", "fit", str(run)])  # saga.cli.main prints a SagaError in one line
        assert isinstance(res.exception, SagaError) and "is training this run right now" in str(res.exception)
    finally:
        trainer.communicate("", timeout=60)  # ends it: the lock goes with the process
    assert not list(run.glob("calibration.json")) + list(run.glob("openset*")) + list(run.glob("enrolled*"))
    locks.lock_folder(run, "busy")  # this thread trains it (attribute's own calibration afterwards): allowed
    try:
        with unreliable("the temperature"):
            calibrate_run(run, report_split=None)
    finally:
        locks.unlock_folder(run)
    with unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(run)  # nobody trains it: fine


def test_weights_retrained_during_a_fit_are_not_paired_with_its_figures(world: dict[str, Any], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(world, tmp_path)
    fit = api.fit_openset

    def retrained_meanwhile(*args: Any, **kwargs: Any) -> OpenSet:
        (run / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes() + b" ")
        return fit(*args, **kwargs)

    monkeypatch.setattr(api, "fit_openset", retrained_meanwhile)
    changed = r"model.safetensors: changed while `saga openset fit` ran \(the run was trained again\); rerun"
    with pytest.raises(SagaError, match=changed), unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(run)
    assert not (run / "openset.json").exists()


def test_calibrate_waits_for_the_open_world_writer_lock(world: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(world, tmp_path)
    notes: list[str] = []
    waiting = threading.Event()
    monkeypatch.setattr(locks, "warnings", SimpleNamespace(
        warn=lambda message, **_: (notes.append(str(message)), waiting.set())), raising=False)
    calibrate = threading.Thread(target=calibrate_run, args=(run,), kwargs={"report_split": None})
    with unreliable("the temperature"):  # given by the thread before it waits for the lock
        with pair_lock(run):  # another writer (enroll, openset fit) between its read and its commit
            calibrate.start()
            while calibrate.is_alive() and not waiting.wait(0.05):
                pass
            assert not (run / "calibration.json").exists()
        calibrate.join(60)
    assert notes and "writing its open-world files (enroll / openset fit / calibrate); waiting" in notes[0]
    assert (run / "calibration.json").is_file()


def test_logo_warns_on_a_tiny_val_split_and_names_the_cache_without_one(world: dict[str, Any], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """logo fitted its thresholds and τ without `known_val`: no warning, and "no known validation videos" named
    no cache (after every fold had trained)."""
    shutil.copytree(world["run"], tmp_path / "runs" / "logo" / "syn-hotshot")
    with pytest.warns(UserWarning, match=r"only 12 known val videos: fold syn-hotshot's unknown threshold"):
        evaluate_folds(world["cache"], tmp_path / "runs", tmp_path / "out", ["syn-hotshot"], 3, 0, log=print)
    noval = cache_with_failures(tmp_path / "noval", {f"{g}/v{k}.mp4" for g in KNOWN for k in (5, 6, 7)})
    # noval holds the run's own videos (the same names, sizes and mtimes): its test videos the run saw are left out
    with pytest.raises(SagaError, match=rf"^{noval.root}: no val videos of run .*'s classes: cannot fit fold "), \
            seen_videos("test", "fold syn-hotshot's figures"):
        evaluate_folds(noval, tmp_path / "runs", tmp_path / "out2", ["syn-hotshot"], 3, 0, log=print)
    import saga.openworld.holdout as holdout

    monkeypatch.setattr(holdout, "train_holdout", lambda *a, **k: pytest.fail("trained a fold"))
    res = CliRunner().invoke(app, ["openset", "logo", "--cache", str(noval.root), "--out", str(tmp_path / "l"),
                                   "--only", "syn-hotshot"])
    assert isinstance(res.exception, SagaError), res.output
    assert str(res.exception).startswith(f"{noval.root}: no val videos of fold syn-hotshot's classes: cannot fit")
    assert not (tmp_path / "l" / "logo").exists()


def test_enrolling_a_name_again_is_refused_without_replace(world: dict[str, Any], tmp_path: Path) -> None:
    run = copy_run(world, tmp_path)
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "g", world["cache"].root, videos="syn-hotshot", split="train")
    with pytest.raises(SagaError, match=rf"^{run / 'enrolled.json'}: 'g' is already enrolled \(from 5 videos\); "
                                        r"pass --replace"):
        enroll_run(run, "g", world["cache"].root, videos="syn-hotshot", split="test")
    assert [len(e.paths) for e in Enrollment.load(run).entries] == [5]
    res = CliRunner().invoke(app, ["enroll", str(run), "--generator", "g", "--cache", str(world["cache"].root),
                                   "--videos", "syn-hotshot", "--split", "test", "--replace"])
    assert res.exit_code == 0, res.output
    assert [(e.name, len(e.paths)) for e in Enrollment.load(run).entries] == [("g", 3)]


def test_openset_json_stores_the_k_used(world: dict[str, Any], tmp_path: Path) -> None:
    """20 labelled videos: k = 50 scores with 20 neighbours; the file said 50."""
    res = CliRunner().invoke(app, ["openset", "fit", str(world["run"]), "--k", "50", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "knn score (k = 20; 50 asked, the labelled pool has only 20 videos)" in " ".join(res.output.split())
    meta = json.loads((tmp_path / "openset.json").read_text())
    assert (meta["k"], meta["k_requested"]) == (20, 50)
    assert OpenSet.load(tmp_path).k == 20
    with unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(world["run"], out=tmp_path, k=3)
    assert "k_requested" not in json.loads((tmp_path / "openset.json").read_text())


def test_calibrate_writes_its_reliability_files_under_the_open_world_writer_lock(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """reliability-<split>.json / .png were written after `.openworld.lock` was let go: a parallel calibrate could
    write its calibration.json in between, leaving the figures of one fit beside the temperature of another."""
    run = copy_run(world, tmp_path)
    replace, held = os.replace, {}

    def committed(src: Any, dst: Any) -> None:  # every atomic write ends here: was the writer lock held?
        name = Path(dst).name
        if name.startswith(("reliability-", "calibration")):
            fd = os.open(run / OPENWORLD_LOCK, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held[name] = False
            except BlockingIOError:
                held[name] = True
            finally:
                os.close(fd)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", committed)
    assert CliRunner().invoke(app, ["calibrate", str(run)]).exit_code == 0
    assert held == {"calibration.json": True, "reliability-test.json": True, "reliability-test.png": True}


def test_logo_warns_about_a_tiny_val_split_once_per_fold(world: dict[str, Any], tmp_path: Path) -> None:
    """Each fold warned twice about the same 12 known val videos: once for its unknown threshold, once for its
    enrollment τ (and a third time with --shots); now one warning per fold names everything fitted on them."""
    from saga.openworld.holdout import fold_withheld
    from saga.openworld.logo import enrollment_videos

    out = tmp_path / "l"
    few = {"syn-hotshot": enrollment_videos(world["cache"], "syn-hotshot", 3, 0)}
    for fold, withheld in (("logo", fold_withheld("GEN-L", ["syn-hotshot"])),
                           ("retrain3", fold_withheld("GEN-L", few=few))):
        run = shutil.copytree(world["run"], out / fold / "syn-hotshot")  # finished folds: reused, nothing trains
        config = json.loads((run / "config.json").read_text())  # as trained without reading syn-hotshot
        (run / "config.json").write_text(json.dumps({**config, "withheld": withheld.to_dict()}))
    res = CliRunner().invoke(app, ["openset", "logo", "--cache", str(world["cache"].root), "--out", str(out),
                                   "--only", "syn-hotshot", "--retrain", "3"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "known val videos" in line]
    assert len(lines) == 1, lines
    assert lines[0] == (f"warning: {world['cache'].root}: only 12 known val videos: fold syn-hotshot's unknown "
                        "threshold at the 95th percentile (and its prototype temperature τ) is unreliable (fitted on "
                        "fewer than 30); extract more videos of the run's classes into this cache")
    with warnings.catch_warnings(record=True) as caught:  # --shots (the benchmark's) fits τ once more
        warnings.simplefilter("always")
        evaluate_folds(world["cache"], out, tmp_path / "again", ["syn-hotshot"], 3, 0, log=print, shots=True)
    assert len([w for w in caught if "known val videos" in str(w.message)]) == 1
