"""`saga ablate`: both stages train the stage-1 run's θ, the grid's own options, a cache that gained videos,
what the table's header and paper column claim."""

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
from saga.explain.ablation_table import to_markdown
from saga.runs import RunFolder
from saga.train.attribute import AttributeConfig
from saga.train.stage1 import train_stage1
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
    """A grid of CE only (3 cells a seed: 1-stage, 2-stage, all labels): the rows' losses do not matter here."""
    monkeypatch.setattr(saga.ablate, "LOSSES", ("ce",))


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


def test_a_config_setting_seed_or_loss_is_refused_naming_the_option(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Both were validated, then replaced in every cell without a word (runs *_seed0 with `seed = 7`)."""
    monkeypatch.setattr(saga.ablate, "run_ablation", lambda *a, **k: pytest.fail("ran the grid"))
    config = tmp_path / "seed.toml"
    config.write_text('min_steps = 4\nseed = 7\nloss = "ce"\n')
    result = CliRunner().invoke(app, ["ablate", "--config", str(config)])
    assert isinstance(result.exception, SagaError) and str(result.exception) == (
        f"{config}: seed and loss cannot be set for saga ablate (seed: the cells run seeds 0..S-1 of --seeds S; "
        "loss: every loss is a row of the grid); remove them from the TOML")
    config.write_text("seed = -1\n")  # refused as a grid option, not checked and then dropped
    assert str(CliRunner().invoke(app, ["ablate", "--config", str(config)]).exception).startswith(
        f"{config}: seed cannot be set for saga ablate (seed: the cells run seeds 0..S-1 of --seeds S)")


def _row(setting: str, paper: float | None) -> dict:
    return {"setting": setting, "loss": "ce", "accuracy_mean": 50.0, "accuracy_ci95": None, "macro_mean": 50.0,
            "macro_ci95": None, "paper": paper, "per_class": {"b": 50.0}}


def test_the_header_counts_scored_classes_and_the_paper_column_needs_its_fraction() -> None:
    """The header said "0–4 test videos per class" (the 0: classes with no test video, in no figure), and the
    paper's 0.5 % figures stood beside a grid at any --fraction."""
    rows = [_row("1-stage", 80.55), _row("1-stage, all labels", 94.94)]
    summary = {"level": "TEAM-L", "seeds": [0], "fraction": 0.5, "floor": 1, "rows": rows,
               "test_videos_per_class": {"a": 0, "b": 2, "c": 4, "d": 0}}
    text = to_markdown(summary)
    assert ", n = 6 test videos scored (2–4 per class) (2 classes without test videos, in no figure);" in text
    assert "| 1-stage | ce | 50.0 (1 seed: no interval) | 50.0 (1 seed: no interval) | – |" in text
    assert "| 1-stage, all labels | ce | 50.0 (1 seed: no interval) | 50.0 (1 seed: no interval) | 94.94 |" in text
    assert "paper %: the all-labels row's only (the paper's other figures are at 0.5 % labels" in text
    text = to_markdown({**summary, "fraction": 0.005})
    assert "| 80.55 |" in text and "paper %: the paper's GenVideo figures at 0.5 % labels" in text


def test_each_cell_is_evaluated_on_the_device_it_trained_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`saga demo/ablate --device cuda` evaluated the grid's runs on the default device (cpu)."""
    ablate = saga.ablate
    devices: list[str] = []

    class Stop(Exception):
        pass

    def evaluate(*args: object, device: str = "cpu", **kwargs: object) -> dict:
        devices.append(device)
        raise Stop

    monkeypatch.setattr(ablate, "check_before_cells", lambda _cache, _stage1, base, _given: (base, None))
    monkeypatch.setattr(ablate, "train_attribution", lambda *args, **kwargs: None)
    monkeypatch.setattr(ablate, "_current_cache", lambda _cache: None)
    monkeypatch.setattr(ablate, "_kept_on_changed_cache", lambda _run, _current: False)
    monkeypatch.setattr(ablate, "evaluate", evaluate)
    with pytest.raises(Stop):  # every cell failed: the first error (the grid tried each cell)
        ablate.run_ablation(tmp_path / "cache", tmp_path / "stage1", tmp_path / "grid", AttributeConfig(device="cuda:3"))
    assert devices and set(devices) == {"cuda:3"}


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


def test_paths_and_class_names_with_brackets_print_as_written(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ablate's table and "written:" line and report's "report:" line went through rich markup: `[x]` in a class
    name or path vanished, and a path with `[/b]` (folders `g[` and `b]`) raised MarkupError after the work."""
    rows = [{**_row("1-stage", None), "per_class": {"kling [v1.5]": 50.0}}]
    summary = {"level": "GEN-L", "seeds": [0], "fraction": 0.5, "floor": 1, "rows": rows, "from": "runs/s1 [x]",
               "frames": 4, "epochs": 1, "min_steps": 0, "model": {}}
    monkeypatch.setattr(saga.ablate, "run_ablation", lambda *a, **k: summary)
    out = tmp_path / "g[" / "b]"
    result = CliRunner().invoke(app, ["ablate", "--out", str(out), "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert _flat("| kling [v1.5] |") in _flat(result.output) and _flat("stage-1 run runs/s1 [x].") in _flat(result.output)
    assert _flat(f"written: {out / 'ablation.md'}, {out / 'ablation.json'}") in _flat(result.output)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"stage": 2, "level": "GEN-L", "classes": ["a", "b"]}))
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out / "r.html")])
    assert result.exit_code == 0, result.output
    assert _flat(f"report: {out / 'r.html'}") in _flat(result.output)


def _flat(text: str) -> str:
    """Without whitespace: rich wraps long lines, and folds a long path anywhere."""
    return "".join(text.split())


def test_the_table_counts_seeds_per_row_and_records_the_triplet_options(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    """The header said "1 seeds"; a probe row over fewer seeds than the header's (the probe skipped on a seed)
    looked like a mean over all of them; and ablation.json left out λ, margin, mine_every and positive, which
    shape every ce+semihnm / ce+hnm cell."""
    from types import SimpleNamespace

    ablate = saga.ablate

    def evaluate(run: Path, cache: Path, split: str, device: str) -> dict:
        probe = {"skipped": "one class has a single labelled video"}  # on seed 1
        if "seed0" in run.name:
            probe = {"accuracy": 0.6, "macro_accuracy": 0.6, "per_class": {"b": 0.6}, "n": 4}
        return {"accuracy": 0.5, "macro_accuracy": 0.5, "per_class": {"b": 0.5}, "n": 4, "per_class_n": {"b": 4},
                "probe": probe}

    monkeypatch.setattr(ablate, "check_before_cells",
                        lambda _cache, _stage1, base, _given: (base, SimpleNamespace(path="runs/s1", origin={})))
    monkeypatch.setattr(ablate, "train_attribution", lambda *args, **kwargs: None)
    monkeypatch.setattr(ablate, "_current_cache", lambda _cache: None)
    monkeypatch.setattr(ablate, "_kept_on_changed_cache", lambda _run, _current: False)
    monkeypatch.setattr(ablate, "evaluate", evaluate)
    monkeypatch.setattr(ablate, "LOSSES", ("ce+hnm",))
    (tmp_path / "grid").mkdir()
    cfg = AttributeConfig(lam=0.3, margin=0.1, mine_every=5, positive="random")
    summary = ablate.run_ablation(tmp_path, tmp_path, tmp_path / "grid", cfg, seeds=(0, 1), ceiling=False)
    saved = json.loads((tmp_path / "grid" / "ablation.json").read_text())
    assert saved["hnm"] == {"lam": 0.3, "margin": 0.1, "mine_every": 5, "positive": "random"}
    text = (tmp_path / "grid" / "ablation.md").read_text()
    assert "The ce+semihnm and ce+hnm cells: λ = 0.3 (λ·CE + (1 − λ)·triplet), margin 0.1, negatives mined every " \
           "5 steps, random positives." in text
    assert "| probe, same labels | logistic regression | 60.0 (1 of 2 seeds: no interval) |" in text
    assert "| 2-stage | ce+hnm | 50.0 ± 0.0 | 50.0 ± 0.0 |" in text  # all the header's seeds: nothing added
    probe = {**summary["rows"][-1], "runs": 2, "accuracy_ci95": 4.0}  # 2 of a 3-seed grid
    three = to_markdown({**summary, "seeds": [0, 1, 2], "rows": [probe]})
    assert "ablation, 3 seeds," in three and "| 60.0 ± 4.0 (2 of 3 seeds) |" in three
    one = to_markdown({**summary, "seeds": [0], "rows": summary["rows"][:1]})
    assert "ablation, 1 seed, labelled" in one


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


def test_a_grid_whose_every_cell_fails_raises_the_error_and_keeps_the_old_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing finished (a grid-wide error): the first error as before, and no table of failures overwrites one."""
    ablate = saga.ablate
    monkeypatch.setattr(ablate, "check_before_cells", lambda _cache, _stage1, base, _given: (base, None))
    monkeypatch.setattr(ablate, "_current_cache", lambda _cache: None)

    def train(*args: object, **kwargs: object) -> None:
        raise SagaError("cache: now holds 4 more videos; pass --resume to keep it as it is")

    monkeypatch.setattr(ablate, "train_attribution", train)
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "ablation.json").write_text("{}")
    with pytest.raises(SagaError, match="now holds 4 more videos"):
        ablate.run_ablation(tmp_path, tmp_path, tmp_path / "grid", AttributeConfig(), seeds=(0, 1))
    assert (tmp_path / "grid" / "ablation.json").read_text() == "{}"


def test_the_header_gives_the_total_n_of_scored_test_videos() -> None:
    """The header gave only a per-class range ("2–4 test videos per class"): the n behind the accuracy and its
    interval was not in the table."""
    rows = [{**_row("1-stage", None), "n_test": 7}]
    summary = {"level": "TEAM-L", "seeds": [0], "fraction": 0.5, "floor": 1, "rows": rows,
               "test_videos_per_class": {"a": 0, "b": 3, "c": 4}}
    assert ", n = 7 test videos scored (3–4 per class) (1 class without test videos, in no figure);" in to_markdown(
        summary)
    assert ", n = 9 test videos scored;" in to_markdown({**summary, "n_test": 9, "test_videos_per_class": None})


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


def test_a_stored_evaluation_is_reused_only_with_its_cache_digest_weights_and_probe(tmp_path: Path) -> None:
    """An evaluation of an older saga (no cache_digest), without the probe, of an unfinished run or of another
    cache is evaluated again; the grid reads only a complete one."""
    from saga.explain.metrics import run_weights, stored_evaluation

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "done.json").write_text("{}")
    current = {"cache_id": "c1", "cache_digest": "d1"}
    good = {"split": "test", "accuracy": 0.5, "macro_accuracy": 0.5, "n": 4, "per_class": {}, "per_class_n": {},
            "probe": {"skipped": "x"}, "run_model": run_weights(tmp_path), "run_finished": True, **current}

    def reused(stored: dict, now: dict | None = current) -> bool:
        (tmp_path / "metrics-test.json").write_text(json.dumps(stored))
        return stored_evaluation(tmp_path, now, "test") == stored

    assert reused(good)
    assert not reused({k: v for k, v in good.items() if k != "cache_digest"})  # an older saga's
    assert not reused({k: v for k, v in good.items() if k != "probe"})  # --no-probe
    assert not reused({**good, "run_finished": False}) and not reused({**good, "run_model": "other"})
    assert not reused(good, {**current, "cache_digest": "d2"}) and not reused(good, {**current, "cache_id": "c2"})
    assert not reused({**good, "accuracy": "0.5"}) and not reused(good, None)
    (tmp_path / "done.json").unlink()
    assert not reused(good)
