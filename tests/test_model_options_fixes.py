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
