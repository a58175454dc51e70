"""Open-world defects of QA round 11, one test each (CPU, tiny, deterministic; no accuracy target).

The toy cache and untrained GEN-L run come from test_openworld (a run that never saw syn-hotshot).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from saga.cache.manifest import VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.model import ModelConfig, VideoTransformer
from saga.model.inference import infer
from saga.openworld.api import calibrate_run, enroll_run, fit_openset_run
from saga.openworld.calibration import T_RANGE, fit_temperature
from saga.openworld.enroll import (SHARP_TAU, TAU_RANGE, Enrollment, add_entry, generator_labels, level_classes,
                                   predict_with_enrolled, prototype_tau)
from saga.openworld.extras import OpenWorld, as_inference
from saga.runs import load_model, save_weights, write_json
from saga.taxonomy import Taxonomy
from expected_warnings import unreliable, unreliable_fold
from test_openworld import D, GENS, KNOWN, SPLITS, T, TP, W, make_cache, make_run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("owfix")
    cache = make_cache(tmp / "cache")
    return {"tmp": tmp, "cache": cache, "run": make_run(tmp / "run", cache)}


def retrain_in_place(run: Path, seed: int = 7) -> None:
    """New weights in the same folder (what a retrain in place leaves)."""
    mcfg = ModelConfig(in_dim=D, d_model=16, depth=2, heads=2, max_frames=16, n_classes=len(KNOWN), dropout=0.0)
    torch.manual_seed(seed)
    save_weights(run / "model.safetensors", VideoTransformer(mcfg), epoch=1, metric=0.5)


def cache_with_failures(root: Path, failed: set[str]) -> FeatureCache:
    """make_cache's layout, with the videos in `failed` recorded as failed extractions."""
    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(root, cache_provenance(EncoderSpec.simulated(D, T, W, name="toy"), tax))
    rng = np.random.default_rng(0)
    writer = PartWriter(cache, next_part_name(cache), capacity=len(GENS) * len(SPLITS) * W)
    for g, gen in enumerate(GENS):
        for k, split in enumerate(SPLITS):
            rec = VideoRecord(path=f"{gen}/v{k}.mp4", size=1, mtime_ns=1, status="ok", generator=gen,
                              labels=tax.labels(gen), split=split)
            if rec.path in failed:
                rec.status, rec.error = "failed", "decode error"
                writer.add_failure(rec)
                continue
            feats = rng.normal(size=(W, T, D)).astype(np.float16)
            feats[..., g] += 3
            writer.add(rec, feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    return FeatureCache.open(root)


# 1, 8 -- temperatures ------------------------------------------------------------------------------
def test_prototype_tau_is_sharp_when_no_val_video_is_nearer_another_prototype() -> None:
    """T = 1 is right for logits without a val error, but softmax(cos / 1) is nearly uniform: no enrolled win."""
    protos = np.eye(4, dtype=np.float32)[:3]
    val = np.eye(4, dtype=np.float32)[[0, 1, 2, 0, 1, 2]] + 0.1
    tau = prototype_tau(protos, val, np.array([0, 1, 2, 0, 1, 2]))
    assert tau == SHARP_TAU < 1.0
    assert fit_temperature(val @ protos.T, np.array([0, 1, 2, 0, 1, 2])) == 1.0  # logits keep T = 1


def test_fitted_temperatures_stay_in_their_documented_range() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 4))
    y = z.argmin(1)  # wrong on every video: the NLL falls as T grows, up to the bound
    assert T_RANGE[0] <= fit_temperature(z, y) <= T_RANGE[1]
    assert TAU_RANGE[0] <= prototype_tau(np.eye(4, dtype=np.float32), z.astype(np.float32), y) <= TAU_RANGE[1]
    assert T_RANGE[0] <= fit_temperature(-z * 50, z.argmax(1)) <= T_RANGE[1]  # the low bound too


# 2, 3 -- leave-one-generator-out ------------------------------------------------------------------
def test_a_logo_fold_is_measured_again_after_new_weights_or_another_cache(world: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    from saga.openworld.logo import STAMP, evaluate_folds

    fold = tmp_path / "logo" / "syn-hotshot"
    shutil.copytree(world["run"], fold)
    run = lambda out="out": evaluate_folds(world["cache"], tmp_path, tmp_path / out, ["syn-hotshot"], 3, 0,  # noqa: E731
                                           log=lambda s: None)["openset"]["syn-hotshot"]["GEN-L"]["knn"]["threshold"]
    with unreliable_fold():
        first = run()
    saved = tmp_path / "out" / "folds" / "syn-hotshot.json"
    stamp = json.loads(saved.read_text())[STAMP]
    assert stamp["cache_id"] == world["cache"].cache_id and stamp["logo"] and stamp["retrain"] is None
    retrain_in_place(fold)
    with unreliable_fold():
        again = run()
    with unreliable_fold():
        fresh = run("fresh")
    assert again == fresh != first  # the old weights' measurement was reported before
    data = json.loads(saved.read_text())
    data["openset"]["GEN-L"]["knn"]["threshold"] = -1.0  # a marker: kept while stamp matches ...
    write_json(saved, data)
    assert run() == -1.0
    write_json(saved, {**data, STAMP: {**data[STAMP], "cache_id": "another"}})  # ... not for another cache
    with unreliable_fold():
        assert run() == fresh


def test_logo_skips_a_held_out_generator_without_test_videos(world: dict[str, Any], tmp_path: Path) -> None:
    from saga.openworld.logo import acc_pair, evaluate_folds, generators
    from saga.openworld.logo_tables import to_markdown

    cache = cache_with_failures(tmp_path / "cache", {f"syn-hotshot/v{k}.mp4" for k in (8, 9, 10)})
    shutil.copytree(world["run"], tmp_path / "exp" / "logo" / "syn-hotshot")
    lines: list[str] = []
    res = evaluate_folds(cache, tmp_path / "exp", tmp_path / "exp", ["syn-hotshot"], 3, 0, log=lines.append)
    assert res["openset"] == {} and len(lines) == 1 and "skipped, no test video of syn-hotshot" in lines[0]
    assert "syn-hotshot" not in generators(cache)
    assert acc_pair(np.array([True, False]), np.array([False, False]))["new"] is None  # no video: not measured
    nan = {"auroc": None, "oscr": float("nan"), "unknown_detected": None, "false_unknown": None, "auroc_ci": None}
    pair = {"new": None, "new_n": 0, "new_correct": 0, "old": None, "old_n": 0, "old_correct": 0}
    r = {"k": 3, "openset": {"g": {lv: {"prototype": nan, "knn": nan, "unseen_class": "g"}
                                   for lv in ("GEN-L", "TEAM-L", "SD-L", "TASK-L")}},
         "enroll": {"g": {"levels": {lv: {m: pair for m in ("before", "gate", "ncm", "retrain")}
                                     for lv in ("GEN-L", "TEAM-L", "SD-L", "TASK-L")}}}, "calibration": []}
    md = to_markdown(r)
    assert "| g | n/a [n/a] | n/a |" in md and "| GEN-L | gate | n/a [n/a] (0) |" in md


# 4 -- predict's enrollment rule -------------------------------------------------------------------
def test_predict_applies_the_enrollment_rule_to_the_runs_own_probabilities(world: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    with unreliable("the temperature"):
        calibrate_run(run, report_split=None)
    cal = json.loads((run / "calibration.json").read_text())
    write_json(run / "calibration.json", {**cal, "temperature": 50.0})  # far from 1: calibrated ≠ own
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "syn-hotshot", world["cache"].root, split="train", team="T", task="T2V", sd="none")
    model, info = load_model(run)
    inf = infer(model, info, world["cache"], list(world["cache"].ok_records("test")))
    ow = OpenWorld.load(run, info)
    rows = ow.apply(inf.logits, inf.probs, inf.embeddings)
    own = predict_with_enrolled(info, ow.taxonomy, ow.enrollment, as_inference(inf.logits, inf.probs, inf.embeddings))
    cal = predict_with_enrolled(info, ow.taxonomy, ow.enrollment, inf, head_probs=ow.head_probs(inf.logits, inf.probs))
    shown = np.array([list(r["enrolled"]["GEN-L"]["probabilities"].values()) for r in rows])
    assert np.allclose(shown, own["GEN-L"]["probs"], atol=1e-5)
    assert not np.allclose(shown, cal["GEN-L"]["probs"], atol=1e-3)
    assert [r["enrolled"]["GEN-L"]["predicted"] for r in rows] == own["GEN-L"]["pred"]
    assert rows[0]["calibrated"]["temperature"] == 50.0  # still shown beside it


# 5 -- stale reliability data in the report --------------------------------------------------------
def test_the_report_flags_reliability_data_of_other_weights_or_another_temperature(world: dict[str, Any],
                                                                                  tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from saga.cli import app
    from saga.explain.report_openworld import calibration_section, load_beyond

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    assert CliRunner().invoke(app, ["calibrate", str(run)]).exit_code == 0
    saved = json.loads((run / "reliability-test.json").read_text())
    cal = json.loads((run / "calibration.json").read_text())
    assert saved["run_model"] == cal["run_model"] and saved["temperature"] == cal["temperature"]
    assert "reliability-test.json" in calibration_section(load_beyond(run, None), "run")  # current: shown
    write_json(run / "calibration.json", {**cal, "temperature": cal["temperature"] * 2})
    assert [f for f, _ in load_beyond(run, None)["stale"]] == ["reliability-test.json"]
    write_json(run / "calibration.json", cal)
    retrain_in_place(run)
    with unreliable("the temperature"):
        calibrate_run(run, report_split=None)  # `saga attribute` recalibrates; reliability-test.json stays behind
    b = load_beyond(run, None)
    assert b["stale"] == [("reliability-test.json", "fitted on other weights than the run's (retrained since)")]
    assert "reliability-test.json" not in calibration_section(b, "run")


# 6 -- the levels the report says predict answers -------------------------------------------------
def test_enrolled_json_records_the_levels_predict_answers(world: dict[str, Any], tmp_path: Path) -> None:
    from saga.explain.report_openworld import enrolled_section

    tax = Taxonomy.load("synth")
    classes = ["real", "Tencent AI Lab", "Pika Labs"]  # a TEAM-L run: Tencent's generators are T2V and I2V
    enr = Enrollment("x", classes, "TEAM-L", 0.05, np.eye(4, dtype=np.float32)[:3])
    add_entry(enr, "syn-new", generator_labels("syn-new", "T2V", "none", "NewTeam"),
              np.tile(np.eye(4, dtype=np.float32)[3:], (3, 1)), ["a", "b", "c"], "cid")
    head = np.full((1, 3), 1 / 3, np.float32)
    info = type("Info", (), {"level": "TEAM-L"})()
    answered = list(predict_with_enrolled(info, tax, enr, as_inference(np.log(head), head, np.eye(4)[3:])))
    assert list(level_classes(tax, "TEAM-L", enr)) == answered == ["TEAM-L", "SD-L", "BIN-L"]
    enr.answered = answered
    enr.save(tmp_path)
    meta = json.loads((tmp_path / "enrolled.json").read_text())
    assert Enrollment.load(tmp_path).answered == answered
    assert "given at: BIN-L, SD-L, TEAM-L (" in enrolled_section({"enrolled": meta}, "run")
    with unreliable("the prototype temperature τ"):
        enr_run = enroll_run(world["run"], "syn-hotshot", world["cache"].root, split="train", team="T", task="T2V",
                             out=tmp_path / "o")  # no --sd: no SD-L answer
    assert json.loads((tmp_path / "o" / "enrolled.json").read_text())["answered"] == enr_run.answered == [
        "GEN-L", "TEAM-L", "TASK-L", "BIN-L"]


# 7 -- holdout's labelled.json written once -------------------------------------------------------
def test_a_holdout_killed_before_training_reruns(world: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import saga.openworld.holdout as holdout
    from saga.train.attribute import AttributeConfig

    cfg = lambda: AttributeConfig(d_model=16, depth=1, heads=2, eval_batch_size=64, level="GEN-L", fraction=1.0,  # noqa: E731
                                  floor=1, loss="ce", epochs=1, min_steps=0, eval_every_steps=0, batch_size=16,
                                  frames=TP, warmup_epochs=0.0, patience=0)

    def killed(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(holdout, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        holdout.train_holdout(world["cache"].root, tmp_path / "fold", cfg(), exclude=["syn-hotshot"])
    assert not (tmp_path / "fold" / "labelled.json").exists()  # no half-written file left behind
    monkeypatch.undo()
    run = holdout.train_holdout(world["cache"].root, tmp_path / "fold", cfg(), exclude=["syn-hotshot"])
    assert json.loads((run / "labelled.json").read_text())["openworld"]["exclude"] == ["syn-hotshot"]


# also noted -- a labelled video that failed extraction is not a wrong cache -------------------------
def test_a_failed_labelled_video_is_named_as_such(world: dict[str, Any], tmp_path: Path) -> None:
    cache = cache_with_failures(tmp_path / "cache", {"syn-svd/v2.mp4"})
    with pytest.raises(SagaError, match=r"1 of the run's labelled videos failed extraction there \(e.g. syn-svd/v2"):
        fit_openset_run(world["run"], cache=cache.root, out=tmp_path / "o")


def test_class_and_enrolled_names_with_brackets_print_as_written() -> None:
    """An enrolled name like `kling [v1.5]` or `a[/]b` is text, not Rich markup (it lost its brackets or crashed
    predict mid-batch)."""

    from saga.commands.common import console
    from saga.commands.predict_cmds import _print_prediction

    from saga.predict import Prediction

    pred = Prediction(status="ok", path="v [1].mp4", level="GEN-L", predicted="kling [v1.5]", confidence=0.9,
                      implied={"TEAM-L": "a[/]b"}, probabilities={"kling [v1.5]": 0.9, "x[/]": 0.1},
                      source=None, openworld={"enrolled": {"GEN-L": {"predicted": "c[/]d", "confidence": 0.5}}})
    with console.capture() as cap:
        _print_prediction(pred)
    out = cap.get()
    for text in ("v [1].mp4", "kling [v1.5]", "TEAM-L a[/]b", "x[/] 10.0%", "GEN-L c[/]d"):
        assert text in out, out


# a fold never reads its held-out generator --------------------------------------------------------
FOLD_OPTIONS = {"d_model": 16, "depth": 1, "heads": 2, "eval_batch_size": 64, "loss": "ce", "epochs": 1,
                "min_steps": 0, "eval_every_steps": 0, "batch_size": 16, "frames": TP, "warmup_epochs": 0.0,
                "patience": 0}


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every video whose features are read (FeatureCache.read and read_shard: all training reads go through them)."""
    read: list[str] = []
    plain, shard = FeatureCache.read, FeatureCache.read_shard

    def recorded_read(self: FeatureCache, records: Any, check: bool = True) -> dict[str, np.ndarray]:
        read.extend(r.path for r in records)
        return plain(self, records, check)

    def recorded_shard(self: FeatureCache, ref: Any, check: bool = True) -> dict[str, np.ndarray]:
        read.extend(r.path for r in ref.records)
        return shard(self, ref, check)

    monkeypatch.setattr(FeatureCache, "read", recorded_read)
    monkeypatch.setattr(FeatureCache, "read_shard", recorded_shard)
    return read


def reads_per_run(monkeypatch: pytest.MonkeyPatch, train: Any) -> dict[str, set[str]]:
    """The videos read while each run trained (train_folds logs a line after each run)."""
    read, per_run = record_reads(monkeypatch), {}

    def log(line: str) -> None:
        per_run[line.split()[1]] = set(read)
        read.clear()

    train(log)
    return per_run


def test_a_logo_fold_reads_no_video_of_its_held_out_generator(world: dict[str, Any], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Not for its content basis, self-training's unlabelled pool or model selection: they read every train
    (and val) video, so a fold self-trained on the generator it holds out and fitted its basis on it; the
    retrained fold reads only the k videos it is given of it."""
    from saga.openworld.logo import _check_fold_options, enrollment_videos, evaluate_folds, train_folds
    from saga.train.attribute import AttributeConfig

    cache = world["cache"]
    reads = reads_per_run(monkeypatch, lambda log: train_folds(cache.root, tmp_path, dict(FOLD_OPTIONS),
                                                              ["syn-hotshot"], 3, 0, retrain=True, log=log))
    hotshot = {r.path for r in cache.ok_records() if r.generator == "syn-hotshot"}
    assert reads["logo/syn-hotshot"] and not reads["logo/syn-hotshot"] & hotshot
    given = set(enrollment_videos(cache, "syn-hotshot", 3, 0))
    assert reads["retrain3/syn-hotshot"] & hotshot == given  # not its 2 other train videos, nor its val videos
    done = json.loads((tmp_path / "logo" / "syn-hotshot" / "done.json").read_text())
    assert done["self_training"] == "every train video is labelled" and done["unlabelled_videos"] == 0
    # a fold trained before (nothing withheld) is not reused as if it were one
    run = tmp_path / "logo" / "syn-hotshot"
    config = json.loads((run / "config.json").read_text())
    write_json(run / "config.json", {k: v for k, v in config.items() if k != "withheld"})
    with pytest.raises(SagaError, match="by an older saga, which read other videos of the generator it holds out"):
        train_folds(cache.root, tmp_path, dict(FOLD_OPTIONS), ["syn-hotshot"], 3, 0, retrain=False)
    lines: list[str] = []  # and measured all the same, but flagged
    with unreliable_fold():
        res = evaluate_folds(cache, tmp_path, tmp_path / "out", ["syn-hotshot"], 3, 0, log=lines.append)
    assert res["not_withheld"] == [str(run)] and f"{run}: trained by an older saga" in "\n".join(lines)
    assert "**Not unseen-generator figures:** 1 run(s)" in (tmp_path / "out" / "results.md").read_text()
    cfg = AttributeConfig.from_dict({**FOLD_OPTIONS, "level": "GEN-L", "seed": 0, "fraction": 1.0, "floor": 1})
    with pytest.raises(SagaError, match="trained from scratch, this call asks for stage 1"):
        _check_fold_options(tmp_path / "retrain3" / "syn-hotshot", cfg, config["withheld"] | {"keep": sorted(given)},
                            tmp_path / "stage1" / "syn-hotshot")


def test_a_two_stage_fold_adapts_a_stage1_run_that_never_read_its_held_out_generator(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold built on a stage-1 run trained on every train video (real/fake labels) has seen the generator it
    holds out: refused; `two_stage` trains stage1/<g> without g (streamed here: the shard reader is checked too)."""
    from saga.openworld.holdout import train_holdout
    from saga.openworld.logo import train_folds
    from saga.train.attribute import AttributeConfig
    from saga.train.stage1 import Stage1Config, train_stage1

    cache = world["cache"]
    plain = train_stage1(cache.root, tmp_path / "s1", Stage1Config(d_model=16, depth=1, heads=2, epochs=1,
                                                                  frames=TP, eval_batch_size=64))
    cfg = AttributeConfig.from_dict({**FOLD_OPTIONS, "level": "GEN-L", "fraction": 1.0, "floor": 1})
    with pytest.raises(SagaError, match=r"s1: this stage-1 run trained on 8 video\(s\) of syn-hotshot \(real/fake"):
        train_holdout(cache.root, tmp_path / "fold", cfg, exclude=["syn-hotshot"], from_run=plain)
    opts = {**FOLD_OPTIONS, "stream": True}
    reads = reads_per_run(monkeypatch, lambda log: train_folds(cache.root, tmp_path, dict(opts), ["syn-hotshot"], 3,
                                                              0, retrain=False, log=log, two_stage=True))
    hotshot = {r.path for r in cache.ok_records() if r.generator == "syn-hotshot"}
    assert reads["stage1/syn-hotshot"] and not reads["stage1/syn-hotshot"] & hotshot
    assert reads["logo/syn-hotshot"] and not reads["logo/syn-hotshot"] & hotshot
    config = json.loads((tmp_path / "logo" / "syn-hotshot" / "config.json").read_text())
    assert config["train"]["from_run"] == str((tmp_path / "stage1" / "syn-hotshot").resolve())


@pytest.mark.parametrize("text", ["garbage", "[" * 100_000, "[1, 2]"])
def test_a_damaged_config_json_of_a_logo_fold_is_one_line_naming_it(world: dict[str, Any], tmp_path: Path,
                                                                    text: str) -> None:
    """A finished fold's config.json read by hand (bare json.loads): a JSONDecodeError, RecursionError or
    AttributeError traceback in `saga openset logo` (reusing the fold) and in its measurement."""
    from typer.testing import CliRunner

    from saga.cli import app
    from saga.openworld.logo import evaluate_folds

    fold = tmp_path / "exp" / "logo" / "syn-hotshot"
    shutil.copytree(world["run"], fold)
    (fold / "config.json").write_text(text)
    res = CliRunner().invoke(app, ["openset", "logo", "--cache", str(world["cache"].root), "--out",
                                   str(tmp_path / "exp"), "--only", "syn-hotshot"])
    assert isinstance(res.exception, SagaError), res.output
    assert str(res.exception).startswith(f"{fold / 'config.json'}: corrupt")
    with pytest.raises(SagaError, match=f"^{fold / 'config.json'}: corrupt") as err:
        evaluate_folds(world["cache"], tmp_path / "exp", tmp_path / "out", ["syn-hotshot"], 3, 0, log=print)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["garbage", "[" * 100_000, "[1, 2]"])
def test_a_damaged_kept_fold_measurement_is_measured_again(world: dict[str, Any], tmp_path: Path, text: str) -> None:
    """OUT/folds/<g>.json is logo's own bookkeeping: unreadable, it is measured again (it was a traceback)."""
    from saga.openworld.logo import evaluate_folds

    shutil.copytree(world["run"], tmp_path / "logo" / "syn-hotshot")
    kept = tmp_path / "out" / "folds" / "syn-hotshot.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(text)
    with unreliable_fold():
        res = evaluate_folds(world["cache"], tmp_path, tmp_path / "out", ["syn-hotshot"], 3, 0, log=lambda s: None)
    assert res["openset"]["syn-hotshot"]["GEN-L"]["knn"]["auroc"] is not None
    assert isinstance(json.loads(kept.read_text()), dict)
