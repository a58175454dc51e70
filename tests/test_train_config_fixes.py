"""Training options: the TOML's level is used, bad values are refused before a run folder exists (naming the
TOML when it holds them), `saga ablate` checks its options before any cell, --from takes stage-1 runs only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saga.cache.store import FeatureCache
from saga.commands.common import training_options
from saga.errors import SagaError
from saga.train.attribute import AttributeConfig, train_attribution
from saga.train.options import TrainOptions
from saga.train.stage1 import Stage1Config, train_stage1
from test_train import TINY, a_config, s1_config
from test_train_guards import cache, stage1  # noqa: F401 - the same tiny cache and stage-1 run (module fixtures)


def _captured_attribute(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> dict[str, Any]:
    """Run the CLI with train_attribution replaced by a recorder: the config and folder it would train."""
    import saga.commands.phase2
    import saga.train.attribute
    from saga.cli import app

    seen: dict[str, Any] = {}

    def record(cache, out, cfg, from_run=None, progress=None, given=None):  # noqa: ANN001, ANN202
        seen.update(out=Path(out), cfg=cfg, given=given)
        return Path(out)

    monkeypatch.setattr(saga.train.attribute, "train_attribution", record)
    monkeypatch.setattr(saga.commands.phase2, "_calibrate_after_training", lambda *a: None)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return seen


@pytest.mark.parametrize("command", [["attribute"], ["train", "--stage", "2"]])
def test_the_config_files_level_is_used_and_names_the_default_folder(
        command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--level defaulted to GEN-L and overrode `level` in the TOML (and the default --out runs/gen-l)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "zarr.json").write_text("{}")  # stand-in cache (the CLI checks it)
    (tmp_path / "sd.toml").write_text('level = "SD-L"\n')
    seen = _captured_attribute(monkeypatch, [*command, "--config", "sd.toml"])
    assert seen["cfg"].level == "SD-L" and seen["out"] == Path("runs/sd-l")
    seen = _captured_attribute(monkeypatch, [*command, "--config", "sd.toml", "--level", "TEAM-L"])  # the flag wins
    assert seen["cfg"].level == "TEAM-L" and seen["out"] == Path("runs/team-l")
    (tmp_path / "none.toml").write_text("epochs = 1\n")
    seen = _captured_attribute(monkeypatch, [*command, "--config", "none.toml"])  # neither: GEN-L
    assert seen["cfg"].level == "GEN-L" and seen["out"] == Path("runs/gen-l")


def test_a_negative_seed_is_refused_before_the_run_folder_exists(cache: FeatureCache, tmp_path: Path) -> None:
    """seed -1 crashed in numpy after creating the folder, which then refused every rerun ("drawn with seed=-1")."""
    with pytest.raises(SagaError, match=r"^seed must be >= 0, got -1$"):
        train_attribution(cache.root, tmp_path / "neg", a_config(seed=-1))
    assert not (tmp_path / "neg").exists()
    with pytest.raises(SagaError, match=r"^seed must be >= 0, got -3$"):
        train_stage1(cache.root, tmp_path / "neg1", s1_config(seed=-3))
    assert not (tmp_path / "neg1").exists()


@pytest.mark.parametrize("kind", [Stage1Config, AttributeConfig])
@pytest.mark.parametrize("name", ["lr", "head_lr_scale", "weight_decay", "warmup_epochs", "grad_clip", "frame_drop",
                                  "memory_budget_gb", "mlp_ratio", "dropout", "content_drop"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_option_must_be_finite(kind: type[TrainOptions], name: str, value: float) -> None:
    """warmup_epochs = inf/nan crashed in the schedule; grad_clip / weight_decay = nan and lr = inf trained to a
    "diverged" error; memory_budget_gb = nan was accepted."""
    with pytest.raises(SagaError, match=rf"^{name} must be a finite number, got {value}$"):
        kind(**{name: value}).check()


@pytest.mark.parametrize("name", ["fraction", "lam", "margin"])
def test_stage2_float_options_must_be_finite(name: str) -> None:
    """margin = nan trained, then failed with a misleading "check the cache" error."""
    with pytest.raises(SagaError, match=rf"^{name} must be a finite number, got nan$"):
        a_config(**{name: math.nan}).check()


@pytest.mark.parametrize("name", ["content_basis", "video_stats", "temporal_lags", "content_dim"])
def test_model_counts_must_not_be_negative(name: str) -> None:
    """content_basis = -4 was recorded in config.json while 0 was used."""
    with pytest.raises(SagaError, match=rf"^{name} must be >= 0, got -4$"):
        TrainOptions(**{name: -4}).check()
    TrainOptions(**{name: 0}).check()  # 0 = off stays allowed


def test_a_bad_value_names_the_toml_that_holds_it_not_one_a_flag_gave(tmp_path: Path) -> None:
    """Unknown keys named the file; a value check() refused did not."""
    config = tmp_path / "s.toml"
    config.write_text("seed = -1\nepochs = 2\n")
    with pytest.raises(SagaError, match=rf"^{config}: seed must be >= 0, got -1$"):
        training_options(AttributeConfig, config)
    assert training_options(AttributeConfig, config, seed=4).seed == 4  # the flag replaces the bad value
    config.write_text("epochs = 2\n")
    with pytest.raises(SagaError, match=r"^seed must be >= 0, got -2$"):  # the flag's value: not the file's
        training_options(AttributeConfig, config, seed=-2)
    with pytest.raises(SagaError, match=r"^warmup_epochs must be a finite number, got nan$"):
        training_options(Stage1Config, None, warmup_epochs=math.nan)


def test_ablate_refuses_clashing_model_options_and_bad_values_before_any_cell(
        cache: FeatureCache, stage1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-stage cells trained, then the first 2-stage cell refused d_model & co. of the stage-1 θ."""
    import saga.ablate

    monkeypatch.setattr(saga.ablate, "train_attribution", lambda *a, **k: pytest.fail("trained a cell"))
    clash = AttributeConfig(**{**TINY, "d_model": 64, "depth": 3})
    with pytest.raises(SagaError, match=r"^d_model = 64 \(the stage-1 run's: 32\); depth = 3 \(the stage-1 run's: "
                                        r"2\): the 2-stage cells adapt the stage-1 run .*; leave these options out "
                                        r"of the TOML, or set them as that run has them$"):
        saga.ablate.run_ablation(cache.root, stage1, tmp_path / "abl", clash)
    with pytest.raises(SagaError, match=r"^seed must be >= 0, got -1$"):
        saga.ablate.run_ablation(cache.root, stage1, tmp_path / "abl", AttributeConfig(**{**TINY, "seed": -1}))
    with pytest.raises(SagaError, match=r"^margin must be a finite number, got nan$"):
        saga.ablate.run_ablation(cache.root, stage1, tmp_path / "abl", AttributeConfig(**{**TINY, "margin": math.nan}))
    assert not (tmp_path / "abl").exists()


def test_from_refuses_a_stage2_run(cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    """A finished stage-2 run was taken as a stage-1 run: its θ adapted again, silently."""
    team = train_attribution(cache.root, tmp_path / "team", a_config(epochs=1))
    with pytest.raises(SagaError, match=rf"^{team}: a stage-2 run \(TASK-L\); --from takes a stage-1 run "
                                        r"\(saga train --stage 1\)$"):
        train_attribution(cache.root, tmp_path / "again", a_config(epochs=1), from_run=team)
    assert not (tmp_path / "again").exists()
    train_attribution(cache.root, tmp_path / "ok", a_config(epochs=1), from_run=stage1)  # a stage-1 run: fine


@pytest.mark.parametrize("name", ["patience", "warmup_epochs", "weight_decay", "grad_clip", "min_steps",
                                  "eval_every_steps"])
def test_a_negative_value_is_named_alone(name: str) -> None:
    """The error used to list six options at once, leaving the user to find the bad one."""
    from saga.train.options import TrainOptions

    with pytest.raises(SagaError, match=rf"^{name} must be >= 0, got -1$"):
        TrainOptions(**{name: -1}).check()


def test_a_model_option_written_in_the_toml_at_its_default_is_checked_against_the_stage1_run(
        cache: FeatureCache, stage1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`d_model = 256` (the default) in the TOML over a stage-1 run of d_model 32 was taken for unset: the
    stage-1 θ was used silently, and the run recorded d_model 256. Written out, it clashes like a flag does."""
    from saga.cli import app

    toml = tmp_path / "run.toml"
    toml.write_text('level = "TASK-L"\nfraction = 0.5\nepochs = 1\nd_model = 256\ninputs = "both"\n')
    args = ["attribute", "--cache", str(cache.root), "--from", str(stage1), "--out", str(tmp_path / "s2"),
            "--config", str(toml), "--no-calibrate"]
    seen = _captured_attribute(monkeypatch, args)  # the CLI hands on what the user wrote, flags and TOML keys
    assert {"d_model", "inputs", "level", "fraction", "epochs"} <= seen["given"] and "depth" not in seen["given"]
    monkeypatch.undo()
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SagaError)
    assert str(result.exception).startswith("d_model = 256 (the stage-1 run's: 32): θ comes from the stage-1 run ")
    assert not (tmp_path / "s2").exists()
    toml.write_text('level = "TASK-L"\nfraction = 0.5\nepochs = 1\nd_model = 32\n')  # as stage 1 has it: fine
    assert CliRunner().invoke(app, args).exit_code == 0
