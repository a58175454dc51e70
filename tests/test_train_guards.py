"""Phase 2 guards: one trainer per run folder, the stage-1 weights a run came from, config values and
model options that would be ignored, the ablation's options, damaged run files."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_saga
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.runs import RunFolder
from saga.runs.folder import LOCK
from saga.train.attribute import AttributeConfig, load_base, prepare_model, train_attribution
from saga.train.stage1 import Stage1Config, train_stage1
from test_train import T, TINY, a_config, build_cache, s1_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    return build_cache(tmp_path_factory.mktemp("cache") / "c", real=12, per_gen=2)


@pytest.fixture(scope="module")
def stage1(cache: FeatureCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_stage1(cache.root, tmp_path_factory.mktemp("runs") / "s1", s1_config(epochs=2))


def held_elsewhere(folder: Path) -> int:
    """What another process training in `folder` holds: its lock (flock is per open file, so this
    process's own open_for conflicts with it too)."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


# --- one trainer per run folder ----------------------------------------------------------------------------

def test_a_second_trainer_is_refused_while_the_first_trains(cache: FeatureCache, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="stop here"):  # a run that failed midway: its folder is left unfinished
        train_stage1(cache.root, out, s1_config(epochs=2), progress=_fail_at_first_epoch)
    fd = held_elsewhere(out)  # the failed run let go of the folder; now another trainer holds it
    with pytest.raises(SagaError, match=rf"^{out}: another saga process is training this run right now"):
        train_stage1(cache.root, out, s1_config(epochs=2))
    os.close(fd)
    assert (out / "state.json").is_file()  # the other trainer's checkpoint was left alone
    train_stage1(cache.root, out, s1_config(epochs=2))  # resumed once the other one is gone
    os.close(held_elsewhere(out))  # a finished run holds no lock
    train_stage1(cache.root, out, s1_config(epochs=2))  # reused
    os.close(held_elsewhere(out))


@pytest.mark.parametrize("stage", [1, 2])
def test_an_error_before_training_frees_the_run_folder(cache: FeatureCache, stage1: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, stage: int) -> None:
    import saga.train.attribute as attribute
    import saga.train.stage1 as stage1_module

    out = tmp_path / "run"
    module = stage1_module if stage == 1 else attribute
    opened = module.open_features

    def fail(*args, **kwargs):  # noqa: ANN002, ANN003 - the setup between opening the run and training it
        raise SagaError("no features today")

    monkeypatch.setattr(module, "open_features", fail)
    train = (lambda: train_stage1(cache.root, out, s1_config(epochs=1))) if stage == 1 else (
        lambda: train_attribution(cache.root, out, a_config(epochs=1), from_run=stage1))
    with pytest.raises(SagaError, match="no features today"):
        train()
    os.close(held_elsewhere(out))  # the lock went with the error (it used to stay held until the process ended)
    monkeypatch.setattr(module, "open_features", opened)
    train()
    os.close(held_elsewhere(out))


def _fail_at_first_epoch(event) -> None:  # noqa: ANN001 - a ProgressEvent
    if event.kind == "epoch":
        raise ValueError("stop here")


def test_a_stage2_run_is_not_reused_after_its_stage1_weights_changed(cache: FeatureCache, stage1: Path,
                                                                      tmp_path: Path) -> None:
    base = shutil.copytree(stage1, tmp_path / "s1")
    out = tmp_path / "s2"
    train_attribution(cache.root, out, a_config(epochs=1), from_run=base)
    train_attribution(cache.root, out, a_config(epochs=1), from_run=base)  # same weights: reused
    other = train_stage1(cache.root, tmp_path / "other", s1_config(epochs=2, seed=1))
    shutil.copyfile(other / "model.safetensors", base / "model.safetensors")  # stage 1 retrained in place
    with pytest.raises(SagaError, match=rf"^{out}: holds a finished run trained from other weights of "
                                        rf"{base} \(fingerprint [0-9a-f]{{12}}, now [0-9a-f]{{12}}\); choose another"):
        train_attribution(cache.root, out, a_config(epochs=1), from_run=base)


def test_a_stage2_run_of_another_stage1_run_names_both(cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    """`saga ablate --from runs/stage1b` over a grid of runs/stage1 said "trained from other weights of
    runs/stage1b", as if stage1b had been retrained: the run was trained from runs/stage1."""
    base = shutil.copytree(stage1, tmp_path / "s1")
    out = tmp_path / "s2"
    train_attribution(cache.root, out, a_config(epochs=1), from_run=base)
    other = shutil.copytree(stage1, tmp_path / "s1b")
    shutil.copyfile(train_stage1(cache.root, tmp_path / "o", s1_config(epochs=2, seed=1)) / "model.safetensors",
                    other / "model.safetensors")
    was, now = (re.escape(str(p.resolve())) for p in (base, other))
    with pytest.raises(SagaError, match=rf"^{out}: holds a finished run trained from another stage-1 run, {was} "
                                        rf"\(fingerprint [0-9a-f]{{12}}\); --from is {now} \(fingerprint [0-9a-f]{{12}}\); "
                                        "choose another --out"):
        train_attribution(cache.root, out, a_config(epochs=1), from_run=other)


# --- options that would be ignored, or crash -----------------------------------------------------------------

def test_model_options_that_a_stage1_theta_would_ignore_are_refused(cache: FeatureCache, stage1: Path) -> None:
    base = load_base(stage1, cache)
    with pytest.raises(SagaError, match=r"d_model = 64 \(the stage-1 run's: 32\); inputs = 'content' \(the stage-1 "
                                        r"run's: 'both'\): θ comes from the stage-1 run .* or train from scratch"):
        prepare_model(cache, a_config(d_model=64, inputs="content"), 3, T, base)
    prepare_model(cache, a_config(), 3, T, base)  # the same shape as stage 1's: fine
    prepare_model(cache, a_config(d_model=64, inputs="content"), 3, T, None)  # from scratch: used


@pytest.mark.parametrize("text,message", [
    ('epochs = "ten"', "training option epochs must be a whole number, got 'ten'"),
    ('lr = "0.001"', "training option lr must be a number, got '0.001'"),
    ("frames = 4.5", "training option frames must be a whole number, got 4.5"),
    ("balance = 1", "training option balance must be true or false, got 1"),
    ("epocs = 3", "unknown training option 'epocs'; did you mean 'epochs'?"),
])
def test_a_bad_config_value_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    proc = run_saga("train", "--stage", "1", "--cache", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                    "--config", str(config))
    assert proc.returncode == 2 and proc.stderr == f"error: {config}: {message}\n", proc.stderr


def test_frames_zero_is_refused_not_read_as_all_frames() -> None:
    with pytest.raises(SagaError, match=r"frames must be >= 1 \(or left out for all cached frames\), got 0"):
        Stage1Config(frames=0).check()


def test_ablate_takes_its_options_from_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import saga.ablate
    from saga.cli import app

    seen: dict = {}

    def capture(cache, stage1, out, base, seeds, level, progress, given):  # noqa: ANN001, ANN202
        seen.update(base=base, level=level, seeds=seeds)
        return {"level": level, "rows": []}

    monkeypatch.setattr(saga.ablate, "run_ablation", capture)
    monkeypatch.setattr(saga.ablate, "to_markdown", lambda summary: "")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "zarr.json").write_text("{}")  # stand-in cache (the CLI checks it)
    config = tmp_path / "abl.toml"
    config.write_text('epochs = 2\nfraction = 0.05\nfloor = 3\ndevice = "cpu"\nlevel = "TEAM-L"\n')
    result = CliRunner().invoke(app, ["ablate", "--config", str(config), "--floor", "4", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    base = seen["base"]
    assert (base.epochs, base.fraction, base.floor, seen["level"], seen["seeds"]) == (2, 0.05, 4, "TEAM-L", (0, 1))
    result = CliRunner().invoke(app, ["ablate", "--seeds", "0"])
    assert result.exit_code == 2 and "--seeds" in result.output


def test_ablate_checks_its_stage1_run_before_training_any_cell(cache: FeatureCache, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import saga.ablate

    monkeypatch.setattr(saga.ablate, "train_attribution", lambda *a, **k: pytest.fail("trained a cell"))
    with pytest.raises(SagaError, match="not a saga run folder"):
        saga.ablate.run_ablation(cache.root, tmp_path / "no-stage1", tmp_path / "abl", AttributeConfig(**TINY))
    with pytest.raises(SagaError, match="--seeds must be >= 1"):
        saga.ablate.run_ablation(cache.root, tmp_path / "no-stage1", tmp_path / "abl", AttributeConfig(**TINY),
                                 seeds=())


# --- damaged run files ---------------------------------------------------------------------------------------

def test_a_run_file_holding_another_json_value_is_one_line(cache: FeatureCache, stage1: Path,
                                                           tmp_path: Path) -> None:
    from saga.explain.probe_runs import run_subset

    out = train_attribution(cache.root, tmp_path / "s2", a_config(epochs=1), from_run=stage1)
    (out / "labelled.json").write_text(json.dumps([1, 2]))
    with pytest.raises(SagaError, match=r"labelled.json: corrupt \(a JSON list, not an object\)"):
        run_subset(out, cache)
    RunFolder(out)  # the folder itself is untouched


def test_a_one_seed_ablation_row_has_no_interval_not_plus_minus_zero() -> None:
    from saga.ablate import to_markdown

    row = {"setting": "2-stage", "loss": "ce+hnm", "accuracy_mean": 53.0, "accuracy_ci95": None, "macro_mean": 52.2,
           "macro_ci95": None, "paper": None, "per_class": {"real": 90.0}}
    text = to_markdown({"level": "GEN-L", "seeds": [0], "fraction": 0.005, "rows": [row]})
    assert "| 53.0 (1 seed: no interval) | 52.2 (1 seed: no interval) |" in text and "± 0.0" not in text


def test_test_videos_of_a_class_the_run_never_trained_on_count_as_errors(tmp_path: Path) -> None:
    """A generator with test videos only: its videos used to be dropped, raising accuracy silently."""
    import numpy as np

    from saga.cache.manifest import OK, VideoRecord
    from saga.cache.provenance import EncoderSpec, cache_provenance
    from saga.cache.store import PartWriter
    from saga.explain.metrics import compute_evaluation
    from saga.taxonomy import Taxonomy
    from test_train import D

    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(tmp_path / "c", cache_provenance(EncoderSpec.simulated(D, T), tax))
    first, second, untrained = list(tax.generators)[:3]
    gens = ["real", first, second]
    rows = [(g, split) for g in gens for split in ["train"] * 6 + ["val"] * 2 + ["test"] * 3]
    rows += [(untrained, "test")] * 4  # never in train
    writer = PartWriter(cache, "p000001-r000", capacity=len(rows), shard_rows=8)
    rng = np.random.default_rng(0)
    for i, (gen, split) in enumerate(rows):
        record = VideoRecord(f"{gen}/{i}.mp4", 100 + i, i, OK, gen, tax.labels(gen), split)
        features = (rng.normal(size=(1, T, D)) + gens.index(gen) if gen in gens else rng.normal(size=(1, T, D)))
        writer.add(record, features.astype(np.float16), np.ones((1, T), bool), np.zeros((1, T), np.float32))
    writer.close()
    run = train_attribution(tmp_path / "c", tmp_path / "run", a_config(level="GEN-L", fraction=1.0, epochs=1))
    with pytest.warns(UserWarning, match=rf"4 test video\(s\) of class\(es\) it was never trained on "
                                         rf"\({untrained}: 4\) count as errors"):
        metrics = compute_evaluation(run, tmp_path / "c")
    assert metrics["n"] == 13 and metrics["untrained_classes"] == {untrained: 4}
    assert metrics["per_class"][untrained] == 0.0 and metrics["per_class_n"][untrained] == 4
    assert metrics["accuracy"] <= 9 / 13 and len(metrics["confusion"]) == 4
    probe = metrics["probe"]
    assert probe["n"] == 13 and probe["untrained_classes"] == {untrained: 4} and "paired" in probe


def test_a_stage1_run_trained_on_an_earlier_state_of_the_cache_is_used_with_one_warning(
        cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    """Only the cache id was compared: a stage-1 run trained before the cache gained (or re-extracted) videos
    was adapted without a word, and the stage-2 provenance did not say which state its θ had seen."""
    import warnings

    from test_train import add_videos

    then = json.loads((stage1 / "provenance.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_base(stage1, cache).origin["cache_digest"] == then["cache_digest"]  # the same state: silent
    grown = add_videos(shutil.copytree(cache.root, tmp_path / "c"), 3)  # a later `saga extract` added 3 videos
    with pytest.warns(UserWarning) as caught:
        base = load_base(stage1, grown)
    assert [str(w.message) for w in caught] == [
        f"{stage1}: this stage-1 run was trained on an earlier state of {grown.root} ({then['cache_records']} ok "
        f"records then, {then['cache_records'] + 3} now: videos added, pruned or re-extracted since); its θ has not "
        "seen those changes: retrain stage 1 (saga train --stage 1) to include them"]
    assert (base.origin["cache_records"], base.origin["cache_digest"]) == (then["cache_records"], then["cache_digest"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_base(stage1, grown)  # once per run and cache state (saga ablate loads it for every cell)
    run = train_attribution(grown.root, tmp_path / "s2", a_config(epochs=1), from_run=stage1)
    recorded = json.loads((run / "provenance.json").read_text())["from_run"]
    assert recorded["cache_digest"] == then["cache_digest"] != json.loads(
        (run / "provenance.json").read_text())["cache_digest"]  # which state θ saw, beside the one stage 2 saw
