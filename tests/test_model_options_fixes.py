"""The model's options and run folders: sizes training accepts are sizes loading accepts, combinations that
leave θ blind are refused, a stage-2 run records the θ it adapted, and weights that do not belong to their run
folder (a key missing, another run's file) are refused instead of loaded into another model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.train.attribute import train_attribution
from saga.train.stage1 import train_stage1
from test_train import a_config, s1_config
from test_train_guards import cache, stage1  # noqa: F401 - the same tiny cache and stage-1 run (module fixtures)


@pytest.mark.parametrize("option, value, said", [("mlp_ratio", 20.0, "model mlp_ratio must be in 0..16.0, got 20.0"),
                                                 ("depth", 129, "model depth must be in 0..128, got 129")])
def test_training_refuses_the_sizes_loading_refuses(cache: FeatureCache, tmp_path: Path, option: str, value: object,
                                                    said: str) -> None:
    """mlp_ratio = 20 trained a finished run that `saga evaluate` / `predict` then refused as "damaged or not
    from saga" (MODEL_LIMITS applied to loading only)."""
    with pytest.raises(SagaError, match=rf"^{said}$"):
        train_stage1(cache.root, tmp_path / "s1", s1_config(**{option: value}))
    assert not (tmp_path / "s1").exists()


def test_a_model_too_big_for_memory_is_one_line_before_the_run_folder(
        cache: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """d_model = 16384, depth = 128 (each within the limits) allocated until the OOM killer ended the process, and
    d_model = 3000000 was torch's allocator traceback, after config.json existed (reruns then refused the folder).
    Here the machine is made to look small (64 MiB), so the old code trains a 13M-parameter model instead."""
    import saga.model.transformer as transformer

    monkeypatch.setattr(transformer, "physical_memory", lambda: 64 * 2**20, raising=False)
    said = (r"^a model with d_model=512, depth=4, mlp_ratio=4.0 needs ~0.2 GiB to train, more than this machine's "
            r"0.1 GiB; choose a smaller d_model, depth or mlp_ratio$")
    with pytest.raises(SagaError, match=said):
        train_stage1(cache.root, tmp_path / "s1", s1_config(d_model=512, depth=4, heads=2, epochs=1))
    with pytest.raises(SagaError, match=said):
        train_attribution(cache.root, tmp_path / "s2", a_config(d_model=512, depth=4, heads=2, epochs=1))
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2" / "config.json").exists()
    monkeypatch.undo()
    from saga.model import ModelConfig, allocate

    with pytest.raises(SagaError, match=r"needs ~6,\d{3} GiB to train"):  # refused before anything is allocated
        allocate(ModelConfig(in_dim=16, d_model=16384, depth=128, heads=2))


def test_temporal_inputs_on_one_frame_windows_are_refused(cache: FeatureCache, tmp_path: Path) -> None:
    """inputs = temporal with frames = 1 trained a classifier whose every token was 0: the same probabilities for
    every video, recorded as a finished run."""
    said = r"^inputs = 'temporal' needs windows of at least 2 frames \(its tokens compare neighbouring frames\), " \
           r"but the run would use 1; use --frames 2 or more"
    with pytest.raises(SagaError, match=said):
        train_stage1(cache.root, tmp_path / "s1", s1_config(inputs="temporal", frames=1))
    with pytest.raises(SagaError, match=said):
        train_attribution(cache.root, tmp_path / "s2", a_config(inputs="temporal", frames=1))
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2" / "config.json").exists()
    s1_config(inputs="temporal", frames=2).model_config(16, 2, 2, 10)  # two frames: neighbours exist
    s1_config(inputs="both", frames=1).model_config(16, 2, 1, 10)  # content still seen


def _tiny_run(folder: Path, heads: int = 2, d_model: int = 16) -> Path:
    """A loadable run folder: weights plus a config.json whose `model` is theirs, as training writes it."""
    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import CONFIG, MODEL, save_weights

    folder.mkdir()
    model = VideoTransformer(ModelConfig(in_dim=8, d_model=d_model, depth=1, heads=heads, n_classes=2))
    save_weights(folder / MODEL, model, epoch=1)
    (folder / CONFIG).write_text(json.dumps({"classes": ["real", "fake"], "level": "BIN-L", "frames": 8,
                                             "model": model.config.to_dict()}))
    return folder


def test_weights_without_a_core_config_key_are_refused(tmp_path: Path) -> None:
    """A weights file whose metadata config lacked `heads` loaded as a 4-head model (no tensor shape shows the
    heads): another θ, silently. A key added after the first version (video_stats, ...) may still be absent."""
    from safetensors.torch import load_file, save_file

    from saga.runs import MODEL, load_model

    run = _tiny_run(tmp_path / "run")
    tensors, whole = load_file(str(run / MODEL)), json.loads(_metadata(run / MODEL)["config"])
    for dropped in ("heads", "video_stats"):
        config = {k: v for k, v in whole.items() if k != dropped}
        save_file(tensors, str(run / MODEL), metadata={"config": json.dumps(config), "epoch": "1"})
        if dropped == "heads":
            with pytest.raises(SagaError, match=rf"^{run / MODEL}: the model config in its metadata lacks heads; "
                                                r"the file is damaged or not from saga: delete it and rerun"):
                load_model(run)
        else:
            assert load_model(run)[0].config.video_stats == 0  # an older run: the option did not exist, 0 = off


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def test_another_runs_weights_in_a_run_folder_are_refused(tmp_path: Path) -> None:
    """model.safetensors copied from another run with as many classes (or config.json's model edited) was loaded
    and its outputs read with this run's class names; config.json's `model` and the weights' config must agree."""
    import shutil

    from saga.runs import CONFIG, MODEL, load_model

    run, other = _tiny_run(tmp_path / "run"), _tiny_run(tmp_path / "other", heads=4, d_model=32)
    load_model(run)
    shutil.copy(other / MODEL, run / MODEL)
    with pytest.raises(SagaError, match=rf"^{run / MODEL}: not the model config.json describes \(d_model 16 vs 32; "
                                        r"heads 2 vs 4: config.json vs the weights\); the run folder is damaged or "
                                        r"mixes two runs"):
        load_model(run)
    config = json.loads((run / CONFIG).read_text())
    del config["model"]  # a config.json without `model`: nothing to compare (the weights decide, as before)
    (run / CONFIG).write_text(json.dumps(config))
    assert load_model(run)[0].config.heads == 4


def test_a_stage2_run_records_the_model_options_of_the_theta_it_adapted(
        cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    """config.json's `train` of a run on a stage-1 θ (d_model 32, depth 2, heads 2) said d_model 256, depth 4,
    heads 4, video_stats 8 ...: the defaults, never used. It now records the stage-1 run's; a run recorded the old
    way is still the same run (reused, not refused as "different settings")."""
    from saga.train.options import MODEL_OPTIONS

    cfg = a_config(epochs=1, d_model=256, depth=4, heads=4)  # the defaults: not set by the user
    out = train_attribution(cache.root, tmp_path / "s2", cfg, from_run=stage1)
    config = json.loads((out / "config.json").read_text())
    base = json.loads((stage1 / "config.json").read_text())["train"]
    assert {k: config["train"][k] for k in MODEL_OPTIONS} == {k: base[k] for k in MODEL_OPTIONS}
    assert (config["train"]["d_model"], config["train"]["depth"]) == (config["model"]["d_model"], 2) == (32, 2)
    config["train"].update(d_model=256, depth=4, heads=4)  # as an older saga wrote it
    (out / "config.json").write_text(json.dumps(config))
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert train_attribution(cache.root, out, a_config(epochs=1, d_model=256, depth=4, heads=4), from_run=stage1) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == before  # reused as it is


def test_the_clash_check_compares_with_the_basis_the_stage1_model_has(
        cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    """A stage-1 run asked for content_basis 32 on a pool that spans 16 directions: its config.json `train` keeps
    32, its `model` the 16 θ really has. A stage-2 TOML giving 16 was refused as a clash naming 32."""
    from saga.ablate import check_before_cells

    config = json.loads((stage1 / "config.json").read_text())
    assert (config["train"]["content_basis"], config["model"]["content_basis"]) == (32, 16)
    given = {"content_basis"}
    out = train_attribution(cache.root, tmp_path / "s2", a_config(epochs=1, readout="head", content_basis=16),
                            from_run=stage1, given=given)
    assert json.loads((out / "config.json").read_text())["model"]["content_basis"] == 16
    cfg, _ = check_before_cells(cache.root, stage1, a_config(content_basis=16), given)  # saga ablate's check
    assert cfg.content_basis == 16
    assert a_config(content_basis=32).model_clashes(config["train"], given, config["model"]) == []  # as asked
    with pytest.raises(SagaError, match=r"^content_basis = 8 \(the stage-1 model's: 16, narrowed from the 32 its "
                                        r"run asked for\): θ comes from the stage-1 run"):
        train_attribution(cache.root, tmp_path / "s3", a_config(epochs=1, content_basis=8), from_run=stage1,
                          given=given)
