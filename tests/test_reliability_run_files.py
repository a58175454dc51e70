"""Someone else's run folder, part 2: weights holding NaN or inf, JSON nested too deeply, a run without
its encoder's provenance, and weight files that must be byte-identical for identical weights.

The cases of docs/reliability.md "Someone else's run folder or cache" added on 2026-12-02.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.errors import SagaError
from test_reliability_cache import make_cache


def _tiny_run(tmp_path: Path) -> Path:
    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import CONFIG, MODEL, save_weights

    run = tmp_path / "run"
    run.mkdir()
    save_weights(run / MODEL, VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2)),
                 epoch=1)
    (run / CONFIG).write_text(json.dumps({"classes": ["real", "fake"], "level": "BIN-L", "frames": 8}))
    return run


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path: Path, value: float) -> None:
    """predict used to print 'real (nan%)' and exit 0, evaluate to crash in roc_auc_score."""
    from saga.runs import MODEL, load_model, load_tensors, save_tensors

    run = _tiny_run(tmp_path)
    tensors, meta = load_tensors(run / MODEL)
    tensors["head.weight"][0, 0] = value
    save_tensors(run / MODEL, tensors, meta)
    with pytest.raises(SagaError, match=r"model.safetensors: tensor head.weight holds NaN or inf"):
        load_model(run)


def test_json_nested_too_deeply_is_corrupt_not_a_traceback(tmp_path: Path) -> None:
    from saga.runs import CONFIG, load_model

    run = _tiny_run(tmp_path)
    (run / CONFIG).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SagaError, match="corrupt JSON .nested too deeply"):
        load_model(run)


def test_a_run_without_the_encoder_it_was_trained_on_cannot_be_checked_against_a_cache(tmp_path: Path) -> None:
    """evaluate and tsig used to score any cache when provenance.json (or its cache_id) was missing."""
    from saga.runs import PROVENANCE, check_cache, load_model, make_provenance

    cache = make_cache(tmp_path, parts=1)
    run = _tiny_run(tmp_path)
    with pytest.raises(SagaError, match=rf"{PROVENANCE}: missing or without the run's encoder"):
        check_cache(load_model(run)[1], cache)
    provenance = make_provenance(cache, 0)
    (run / PROVENANCE).write_text(json.dumps({k: v for k, v in provenance.items() if k != "cache_id"}))
    with pytest.warns(UserWarning, match="not the run's training cache .not recorded"):  # same encoder: compared
        check_cache(load_model(run)[1], cache)


def test_a_missing_provenance_says_so_and_how_to_fix_it(tmp_path: Path) -> None:
    """predict said "RUN (provenance.json): encoder provenance lacks encoder, weights_fingerprint, preprocess,
    dim": neither that the file is missing nor what to do."""
    from saga.predict import Predictor
    from saga.runs import DONE, PROVENANCE, load_model

    run = _tiny_run(tmp_path)
    (run / DONE).write_text("{}")
    fix = "restore the run's provenance.json or train the run again"
    with pytest.raises(SagaError) as exc:
        Predictor(run)  # what `saga predict` builds first
    assert str(exc.value) == (f"{run / PROVENANCE}: missing; it records the encoder and sampling the run was trained "
                              f"on: {fix}")
    (run / PROVENANCE).write_text("{}")
    with pytest.raises(SagaError, match=rf"provenance.json\): encoder provenance lacks encoder, .*, dim; {fix}$"):
        load_model(run)[1].encoder


@pytest.mark.parametrize("text", ["garbage", "[1, 2]", ""])
def test_a_damaged_done_json_is_not_a_finished_run(tmp_path: Path, text: str) -> None:
    """Only its existence was checked: `garbage` made the run finished for predict (and for a rerun of training,
    which reused the folder as it was)."""
    from saga.runs import DONE, RunFolder, load_model

    run = _tiny_run(tmp_path)
    (run / DONE).write_text(text)
    fix = ("; it marks the run finished, so its weights cannot be taken as final: delete it and rerun the run's "
           "training command to train it again")
    for load in (lambda: load_model(run), lambda: RunFolder(run).done):
        with pytest.raises(SagaError) as exc:
            load()
        assert str(exc.value).startswith(f"{run / DONE}: corrupt") and str(exc.value).endswith(fix), exc.value
    (run / DONE).write_text("{}")
    assert load_model(run)[1].finished and RunFolder(run).done


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path: Path) -> None:
    """safetensors wrote the metadata in a random order: retraining stage 1 to identical weights changed
    its fingerprint, and the finished stage-2 runs built on it were refused."""
    import torch

    from saga.runs import file_fingerprint, save_tensors

    tensors = {"a": torch.arange(6.0), "b": torch.ones(2, 3)}
    meta = {key: str(i) for i, key in enumerate("zyxwvutsrq")}
    prints = set()
    for i in range(8):
        save_tensors(tmp_path / f"{i}.safetensors", tensors, meta)
        prints.add(file_fingerprint(tmp_path / f"{i}.safetensors"))
    assert len(prints) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as fh:
        assert fh.metadata() == meta and torch.equal(fh.get_tensor("b"), tensors["b"])
