"""Stage 2's hard-negative mining on sources: CE trains on the labelled generators, HNM on the level's classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saga.cache.store import FeatureCache
from saga.runs import load_model
from saga.train.attribute import train_attribution
from test_train import a_config, cache, stage1  # noqa: F401 - the module's small cache and stage-1 run


def test_hnm_mines_at_the_level_being_trained_when_ce_trains_on_sources(
        cache: FeatureCache, stage1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two generators of one task are positives at TASK-L (method.md); mining used to take the
    generator ids CE trains on: same-task negatives, and a generator's lone video had no positive."""
    import saga.train.attribute as attribute

    calls = []

    def spy(emb, labels, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - mine_triplets' signature
        mined = mine(emb, labels, *args, **kwargs)
        calls.append((np.asarray(labels).copy(), mined))
        return mined

    mine = attribute.mine_triplets
    monkeypatch.setattr(attribute, "mine_triplets", spy)
    out = train_attribution(cache.root, tmp_path / "a", a_config(loss="ce+hnm", epochs=1), from_run=stage1)
    model, info = load_model(out)
    assert model.head.out_features > 3 and info.classes == ["real", "T2V", "I2V"]  # CE rows: the generators
    labels, mined = calls[0]
    assert sorted(set(labels.tolist())) == [0, 1, 2]  # mining: the three TASK-L classes
    assert len(mined) and np.all(labels[mined.anchors] != labels[mined.negatives])
    assert np.all(labels[mined.anchors] == labels[mined.positives])


@pytest.mark.parametrize("option", [{"positive": "bogus"}, {"mine_k": 0}])
def test_a_bad_mining_option_is_refused_before_the_run_folder_exists(
        cache: FeatureCache, tmp_path: Path, option: dict) -> None:  # noqa: F811
    """`positive` and `mine_k` were only checked by the miner at the first refresh: the run folder was left
    unfinished with the bad value recorded, and the corrected rerun was refused as "different settings"."""
    from saga.errors import SagaError

    with pytest.raises(SagaError, match=next(iter(option))):
        train_attribution(cache.root, tmp_path / "a", a_config(loss="ce+hnm", epochs=1, **option))
    assert not (tmp_path / "a" / "config.json").exists()
    out = train_attribution(cache.root, tmp_path / "a", a_config(loss="ce+hnm", epochs=1, readout="head"))
    assert (out / "done.json").exists()


def test_margin_zero_is_refused_for_semi_hard_mining_before_any_cell_trains(
        cache: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Semi-hard needs d_ap < d_an < d_ap + margin: with margin 0 no negative qualifies, and a ce+semihnm run
    trained λ·CE alone (0 triplets every epoch), recorded as ce+semihnm; `saga ablate` found out after its CE cells."""
    import saga.ablate
    from saga.errors import SagaError

    with pytest.raises(SagaError, match="margin = 0 leaves loss ce\\+semihnm no semi-hard negative"):
        train_attribution(cache.root, tmp_path / "a", a_config(loss="ce+semihnm", margin=0.0))
    assert not (tmp_path / "a").exists()
    a_config(loss="ce+hnm", margin=0.0).check()  # the hardest negative still has a loss: max(0, d_ap - d_an)
    monkeypatch.setattr(saga.ablate, "train_attribution", lambda *a, **k: pytest.fail("trained a cell"))
    with pytest.raises(SagaError, match="margin = 0"):
        saga.ablate.run_ablation(cache.root, tmp_path / "s1", tmp_path / "abl", a_config(margin=0.0), seeds=(0,))


def test_a_given_mine_k_warns_that_it_has_no_effect_and_old_runs_stay_the_same_run(
        cache: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """`mine_k` in a --config TOML was accepted and recorded but never read (mining searches one index per class,
    k = 1): one warning line now, and the default kept; a run folder recorded with mine_k = 64 (every older run)
    or with a user's other value trained the same weights, so it is still reused."""
    import json

    import saga.ablate
    from typer.testing import CliRunner

    from saga.cli import app
    from test_train import TINY

    out = train_attribution(cache.root, tmp_path / "a", a_config(epochs=1, readout="head", mine_k=64))
    config = json.loads((out / "config.json").read_text())
    config["train"]["mine_k"] = 32  # an older saga recorded the value given
    (out / "config.json").write_text(json.dumps(config))
    opts = {**TINY, "level": "TASK-L", "fraction": 0.5, "epochs": 1, "batch_size": 16, "lr": 1e-3,
            "warmup_epochs": 0.0, "patience": 0, "min_steps": 0, "eval_every_steps": 0, "stream": False,
            "readout": "head", "mine_k": 32}
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items()))
    result = CliRunner().invoke(app, ["attribute", "--cache", str(cache.root), "--out", str(out), "--config",
                                      str(toml), "--scratch", "--no-calibrate"])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "mine_k in" in line]
    assert warned == [f"warning: mine_k in {toml} has no effect (mining searches one index per class for each "
                      "video's nearest negative, k = 1); remove it"], result.output
    assert "already holds this finished run" in result.output  # reused, not refused as "different settings"
    seen: list[int] = []
    monkeypatch.setattr(saga.ablate, "run_ablation", lambda c, s, o, base, **k: seen.append(base.mine_k) or {})
    monkeypatch.setattr(saga.ablate, "to_markdown", lambda summary: "")
    result = CliRunner().invoke(app, ["ablate", "--cache", str(cache.root), "--out", str(tmp_path / "abl"),
                                      "--config", str(toml), "--seeds", "1"])
    assert result.exit_code == 0 and seen == [64], result.output
    assert result.output.count("mine_k in") == 1
