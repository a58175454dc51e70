"""`train_videos = "labelled"`: the paper's 1-stage setting, a run that reads nothing of the train split but its
labelled videos (no content basis of the pool, no real videos beyond the labelled ones, no self-training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saga.errors import SagaError
from saga.runs import load_model
from saga.train import basis
from saga.train.attribute import train_attribution
from saga.train.configs import AttributeConfig

from conftest import run_saga
from test_train import a_config, build_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    return build_cache(tmp_path_factory.mktemp("cache") / "c")


def _read_paths(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """Every record set the pool fits (content basis, statistics' scale) read, as paths."""
    seen: list[set[str]] = []
    real = basis.pool_summaries

    def spy(cache, records, frames, lags):
        seen.append({r.path for r in records})
        return real(cache, records, frames, lags)

    monkeypatch.setattr(basis, "pool_summaries", spy)
    return seen


def test_labelled_only_fits_nothing_on_the_unlabelled_videos(cache, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _read_paths(monkeypatch)
    run = train_attribution(cache.root, tmp_path / "lab", a_config(train_videos="labelled", loss="ce",
                                                                    fraction=0.1, floor=2))
    drawn = json.loads((run / "labelled.json").read_text())["classes"]
    labelled = {p for paths in drawn.values() for p in paths}
    assert seen and all(paths <= labelled for paths in seen)  # the basis and statistics saw the labelled videos only
    done = json.loads((run / "done.json").read_text())
    assert done["self_training"] == "train_videos = labelled" and done["unlabelled_videos"] == 0
    assert done["real_videos"] == len(drawn["real"]) > 0  # the readout's real videos: the labelled ones
    model, _ = load_model(run)
    assert model.config.content_basis <= len(labelled) - 1  # narrowed to what the labelled videos span
    assert json.loads((run / "config.json").read_text())["train"]["train_videos"] == "labelled"

    seen.clear()
    full = train_attribution(cache.root, tmp_path / "all", a_config(loss="ce", fraction=0.1, floor=2))
    assert any(len(paths) > len(labelled) for paths in seen)  # the default fits on the whole train split
    assert json.loads((full / "done.json").read_text())["unlabelled_videos"] > 0
    base, ours = load_model(full)[0], load_model(run)[0]
    assert not torch.equal(base.basis_mean, ours.basis_mean)


def test_labelled_only_refuses_a_stage1_run(cache, tmp_path: Path) -> None:
    with pytest.raises(SagaError, match="1-stage setting.*--scratch"):
        train_attribution(cache.root, tmp_path / "x", a_config(train_videos="labelled"), from_run=tmp_path / "s1")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SagaError, match="train_videos must be one of"):
        AttributeConfig(train_videos="some").check()


def test_cli_train_videos(cache, tmp_path: Path) -> None:
    res = run_saga("attribute", "--cache", str(cache.root), "--from", str(tmp_path / "s1"), "--train-videos",
                   "labelled", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "1-stage setting" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_saga("attribute", "--cache", str(cache.root), "--train-videos", "none", "--out", str(tmp_path / "r"))
    assert res.returncode != 0 and "train_videos must be one of" in res.stderr and "Traceback" not in res.stderr


def test_a_run_from_before_the_option_is_the_same_run(cache, tmp_path: Path) -> None:
    run = train_attribution(cache.root, tmp_path / "old", a_config(loss="ce", fraction=0.1, floor=2))
    config = json.loads((run / "config.json").read_text())
    del config["train"]["train_videos"]  # as a run made before the option existed recorded it
    (run / "config.json").write_text(json.dumps(config))
    weights = (run / "model.safetensors").stat().st_mtime_ns
    assert train_attribution(cache.root, run, a_config(loss="ce", fraction=0.1, floor=2)) == run  # reused
    assert (run / "model.safetensors").stat().st_mtime_ns == weights
