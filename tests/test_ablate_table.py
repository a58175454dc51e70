"""`saga ablate` without training: the options a config may set, the table's header, rows and paper column, the
device each cell is evaluated on, a grid whose every cell fails, and when a stored evaluation is reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import saga.ablate
from saga.cli import app
from saga.errors import SagaError
from saga.explain.ablation_table import to_markdown
from saga.train.attribute import AttributeConfig


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



def test_paths_and_class_names_with_brackets_print_as_written(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """ablate's table and "written:" line and report's "report:" line went through rich markup: `[x]` in a class
    name or path vanished, and a path with `[/b]` (folders `g[` and `b]`) raised MarkupError after the work."""
    rows = [{**_row("1-stage", None), "per_class": {"kling [v1.5]": 50.0}}]
    summary = {"level": "GEN-L", "seeds": [0], "fraction": 0.5, "floor": 1, "rows": rows, "from": "runs/s1 [x]",
               "frames": 4, "epochs": 1, "min_steps": 0, "model": {}}
    monkeypatch.setattr(saga.ablate, "run_ablation", lambda *a, **k: summary)
    out = tmp_path / "g[" / "b]"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "zarr.json").write_text("{}")  # stand-in cache (the CLI checks it)
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

