"""`saga ablate` training real cells: both stages train the stage-1 run's θ, the grid's own options, a cache that
gained videos, a failed cell, finished cells' folders and stored metrics (without training: test_ablate_table)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

import saga.ablate
from saga.cache.store import FeatureCache
from saga.cli import app
from saga.errors import SagaError
from saga.runs import RunFolder
from saga.train.attribute import AttributeConfig
from saga.train.stage1 import train_stage1
from test_ablate_table import _flat
from test_train import add_videos, s1_config
from test_train_guards import cache, held_elsewhere  # noqa: F401 - the same tiny cache (module fixture)

# Training options only: no model option and no frames (what the 1-stage cells used to take as defaults).
OPTIONS = {"level": "TASK-L", "fraction": 0.5, "epochs": 1, "batch_size": 16, "min_steps": 0, "patience": 0,
           "warmup_epochs": 0.0, "eval_batch_size": 64, "stream": False}


@pytest.fixture(scope="module")
def stage1(cache: FeatureCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """d_model 32, depth 2, heads 2 (not the defaults) and T′ = 4 of the cache's 8 frames."""
    torch.set_num_threads(1)
    return train_stage1(cache.root, tmp_path_factory.mktemp("runs") / "s1", s1_config(epochs=1, frames=4))


@pytest.fixture
def one_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid of CE only (3 cells a seed: 1-stage, 2-stage, all labels): the rows' losses do not matter here, nor
    the labelled-only row (test_train's grid test has it)."""
    monkeypatch.setattr(saga.ablate, "LOSSES", ("ce",))
    monkeypatch.setattr(saga.ablate, "LABELLED_ONLY_ROW", False)


def test_the_1_stage_cells_train_the_stage1_runs_model_and_frames(cache: FeatureCache, stage1: Path,
                                                                   tmp_path: Path, one_loss: None) -> None:
    """They used to train a default θ (d_model 256, depth 4, all 8 frames) beside 2-stage cells of d_model 32,
    T′ = 4, and the table did not say which run, T′ or θ it compared."""
    summary = saga.ablate.run_ablation(cache.root, stage1, tmp_path / "abl", AttributeConfig(**OPTIONS),
                                       seeds=(0,), level="TASK-L")
    runs = sorted(p.parent for p in (tmp_path / "abl").glob("*/config.json"))
    assert [r.name for r in runs] == ["1-stage_all-labels_ce_seed0", "1-stage_ce_seed0", "2-stage_ce_seed0"]
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        assert (config["frames"], config["model"]["d_model"], config["model"]["depth"], config["model"]["heads"]) == (
            4, 32, 2, 2), run.name
    assert (summary["from"], summary["frames"], summary["epochs"]) == (str(stage1.resolve()), 4, 1)
    assert (summary["model"]["d_model"], summary["model"]["inputs"]) == (32, "both")
    text = (tmp_path / "abl" / "ablation.md").read_text()
    assert "T′ = 4 frames, 1 epoch (at least 0 steps), θ: d_model 32, depth 2, heads 2" in text
    assert f"the 2-stage cells adapt the stage-1 run {stage1.resolve()}." in text
    given = {*OPTIONS, "d_model"}  # what `saga ablate` passes: the TOML's keys; d_model set, at its default
    with pytest.raises(SagaError, match=r"^d_model = 256 \(the stage-1 run's: 32\): the 2-stage cells adapt"):
        saga.ablate.run_ablation(cache.root, stage1, tmp_path / "x", AttributeConfig(**OPTIONS, d_model=256),
                                 seeds=(0,), level="TASK-L", given=given)


def test_a_model_option_the_toml_sets_is_refused_by_ablate_as_by_attribute(cache: FeatureCache, stage1: Path,
                                                                             tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`d_model = 256` (the default) written in the TOML, over a stage-1 run of d_model 32: both commands name the
    same clash, and ablate before any cell trains."""
    toml = tmp_path / "run.toml"
    toml.write_text('level = "TASK-L"\nfraction = 0.5\nepochs = 1\nd_model = 256\n')
    args = ["--cache", str(cache.root), "--from", str(stage1), "--config", str(toml)]
    monkeypatch.setattr(saga.ablate, "train_attribution", lambda *a, **k: pytest.fail("trained a cell"))
    ablate = CliRunner().invoke(app, ["ablate", *args, "--out", str(tmp_path / "abl"), "--seeds", "1"])
    attribute = CliRunner().invoke(app, ["attribute", *args, "--out", str(tmp_path / "s2"), "--no-calibrate"])
    for result in (ablate, attribute):
        assert isinstance(result.exception, SagaError), result.output
        assert str(result.exception).startswith("d_model = 256 (the stage-1 run's: 32): ")
    assert not (tmp_path / "abl").exists() and not (tmp_path / "s2").exists()


def test_every_cell_gets_the_options_the_user_gave_as_attribute_does(cache: FeatureCache, stage1: Path,
                                                                    tmp_path: Path, one_loss: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The cells called train_attribution without `given`: their own check of θ's options against the stage-1 run
    fell back to a guess (options off their defaults), unlike `saga attribute`'s, which checks what was written."""
    from test_train_config_fixes import _captured_attribute

    toml = tmp_path / "run.toml"
    toml.write_text('level = "TASK-L"\nfraction = 0.5\nepochs = 1\nd_model = 32\n')
    args = ["--cache", str(cache.root), "--from", str(stage1), "--config", str(toml)]
    cells: list[tuple[Path | None, object]] = []

    def record(cache_path: Path, out: Path, cfg: AttributeConfig, from_run: Path | None = None,
               progress: object = None, given: object = None) -> Path:
        cells.append((from_run, given))
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out)

    monkeypatch.setattr(saga.ablate, "train_attribution", record)
    monkeypatch.setattr(saga.ablate, "_kept_on_changed_cache", lambda *a: False)
    monkeypatch.setattr(saga.ablate, "evaluate", lambda *a, **k: {"accuracy": 0.5, "macro_accuracy": 0.5,
                                                                  "per_class": {}, "n": 1})
    result = CliRunner().invoke(app, ["ablate", *args, "--out", str(tmp_path / "abl"), "--seeds", "1"])
    assert result.exit_code == 0, result.output
    seen = _captured_attribute(monkeypatch, ["attribute", *args, "--out", str(tmp_path / "s2"), "--no-calibrate"])
    assert seen["given"] == {"level", "fraction", "epochs", "d_model"}
    assert cells == [(None, seen["given"]), (stage1, seen["given"]), (None, seen["given"])]  # 1-stage, 2-stage, ceiling


def test_resume_continues_a_grid_whose_cache_gained_videos(cache: FeatureCache, stage1: Path, tmp_path: Path,
                                                           one_loss: None) -> None:
    """The error said "pass --resume", an option ablate did not have: a new --out retrained every cell."""
    shutil.copytree(cache.root, tmp_path / "c")
    config = tmp_path / "abl.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in OPTIONS.items()))
    args = ["ablate", "--cache", str(tmp_path / "c"), "--from", str(stage1), "--out", str(tmp_path / "abl"),
            "--seeds", "1", "--config", str(config)]
    assert CliRunner().invoke(app, args).exit_code == 0
    weights = {p: p.read_bytes() for p in (tmp_path / "abl").glob("*/model.safetensors")}
    add_videos(tmp_path / "c", 4)
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SagaError) and "now holds" in str(result.exception)
    assert "pass --resume to keep it as it is" in str(result.exception)
    provenance = {p: p.read_bytes() for p in (tmp_path / "abl").glob("*/provenance.json")}
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert len(weights) == 3 and all(p.read_bytes() == w for p, w in weights.items())  # finished cells kept
    assert all(p.read_bytes() == b for p, b in provenance.items())  # still naming the cache they were trained on
    summary = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert sorted(summary["cells_on_changed_cache"]) == sorted(p.parent.name for p in weights)
    assert "3 run(s) began before the cache changed" in (tmp_path / "abl" / "ablation.md").read_text()


def test_a_finished_cell_frees_its_run_folder_while_the_grid_goes_on(cache: FeatureCache, stage1: Path,
                                                                     tmp_path: Path, one_loss: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Reported (not confirmed by reading): a long ablate kept the `.lock` of its finished cells, so `saga enroll`
    / `openset` / `calibrate` on one was refused until the grid ended. Checked from another thread (the open-world
    commands' own check) and as another process would (a new open file's flock), before each next cell."""
    ablate = saga.ablate
    evaluated = ablate.evaluate
    free: list[str] = []

    def evaluate(run: Path, *args: object, **kwargs: object) -> dict:  # right after the cell's training returned
        os.close(held_elsewhere(run))  # BlockingIOError while the grid still held it
        errors: list[BaseException] = []
        probe = threading.Thread(target=lambda: _catch(errors, RunFolder(run).check_not_training, "`saga enroll`"))
        probe.start()
        probe.join()
        assert not errors, errors
        free.append(run.name)
        return evaluated(run, *args, **kwargs)

    monkeypatch.setattr(ablate, "evaluate", evaluate)
    ablate.run_ablation(cache.root, stage1, tmp_path / "abl", AttributeConfig(**OPTIONS), seeds=(0,), level="TASK-L")
    assert free == ["1-stage_ce_seed0", "2-stage_ce_seed0", "1-stage_all-labels_ce_seed0"]
    for stored in (tmp_path / "abl").glob("*/metrics-test.json"):  # evaluated again (checked there) on the rerun
        stored.unlink()
    ablate.run_ablation(cache.root, stage1, tmp_path / "abl", AttributeConfig(**OPTIONS), seeds=(0,), level="TASK-L")
    assert len(free) == 6  # a rerun reuses the finished cells and holds none of them either


def _catch(errors: list[BaseException], call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        errors.append(exc)


def test_a_failed_cell_costs_only_itself_the_table_is_written_and_a_rerun_trains_only_it(
        cache: FeatureCache, stage1: Path, tmp_path: Path, one_loss: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """One cell raising (a diverged seed, a CUDA error) stopped the grid before ablation.json/.md were written:
    the finished cells' table was lost, and nothing said which cell failed."""
    trained = saga.ablate.train_attribution
    calls: list[str] = []

    def train(cache_path: Path, run: Path, *args: object, **kwargs: object) -> Path:
        if not (Path(run) / "done.json").is_file():
            calls.append(Path(run).name)
        if Path(run).name == "2-stage_ce_seed0" and fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return trained(cache_path, run, *args, **kwargs)

    monkeypatch.setattr(saga.ablate, "train_attribution", train)
    config = tmp_path / "abl.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in OPTIONS.items()))
    args = ["ablate", "--cache", str(cache.root), "--from", str(stage1), "--out", str(tmp_path / "abl"),
            "--seeds", "1", "--config", str(config)]
    fail = True
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert _flat("error: 1 cell run(s) failed (first: 2-stage_ce_seed0: RuntimeError: CUDA error: an illegal "
                 "memory access was encountered); the table has the others; rerun the same command") in _flat(
                     result.output)
    summary = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [(r["setting"], r["runs"]) for r in summary["rows"]][:3] == [("1-stage", 1), ("2-stage", 0),
                                                                         ("1-stage, all labels", 1)]
    assert summary["failed"] == [{"run": "2-stage_ce_seed0", "setting": "2-stage", "loss": "ce", "seed": 0,
                                  "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}]
    text = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| 2-stage | ce | failed (1 of 1 seeds) | failed |" in text
    assert "1 cell run(s) failed, left out of the figures above; rerun the same command" in text
    assert "- 2-stage_ce_seed0: RuntimeError: CUDA error" in text
    assert sorted(calls) == ["1-stage_all-labels_ce_seed0", "1-stage_ce_seed0", "2-stage_ce_seed0"]
    fail, calls[:] = False, []
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == ["2-stage_ce_seed0"]  # the finished cells are reused, not trained again
    summary = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert summary["failed"] == [] and all(r["runs"] == 1 for r in summary["rows"])
    assert "failed" not in (tmp_path / "abl" / "ablation.md").read_text()


def test_a_rerun_reuses_the_stored_test_metrics_of_unchanged_cells_only(cache: FeatureCache, stage1: Path,
                                                                        tmp_path: Path, one_loss: None,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun (after one failed cell) evaluated every finished cell again, 21 test evaluations with their probes;
    the stored metrics-test.json is reused while the weights and the cache (id and records) are those it names."""
    from saga.runs import accept_changed_cache, load_tensors, save_tensors

    shutil.copytree(cache.root, tmp_path / "c")
    evaluated, calls = saga.ablate.evaluate, []

    def evaluate(run: Path, *args: object, **kwargs: object) -> dict:
        calls.append(Path(run).name)
        return evaluated(run, *args, **kwargs)

    monkeypatch.setattr(saga.ablate, "evaluate", evaluate)

    def grid() -> dict:
        return saga.ablate.run_ablation(tmp_path / "c", stage1, tmp_path / "abl", AttributeConfig(**OPTIONS),
                                        seeds=(0,), level="TASK-L")

    first = grid()
    cells = ["1-stage_ce_seed0", "2-stage_ce_seed0", "1-stage_all-labels_ce_seed0"]
    assert calls == cells
    calls.clear()
    again = grid()
    assert calls == []  # nothing changed: nothing evaluated again
    assert again["rows"] == first["rows"]
    model = tmp_path / "abl" / "2-stage_ce_seed0" / "model.safetensors"
    tensors, meta = load_tensors(model)
    save_tensors(model, {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, meta)
    grid()
    assert calls == ["2-stage_ce_seed0"]  # other weights under the same done.json: evaluated again
    calls.clear()
    add_videos(tmp_path / "c", 4, split="test")  # the same cache id, more test videos
    with accept_changed_cache(True, keep_finished=True), pytest.warns(UserWarning, match="retrain stage 1"):
        changed = grid()
    assert calls == cells and changed["n_test"] == first["n_test"] + 4


