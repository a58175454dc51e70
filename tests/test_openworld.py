"""Open-world attribution (issue #13): open-set scores, enrollment, calibration (CPU, tiny, deterministic).

Pure functions are checked against their definitions on hand-made numbers; the run-folder
operations on a tiny cache and an untrained GEN-L "run" that lacks one generator (as a
leave-one-generator-out fold would). No accuracy target is asserted anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from saga.cache.manifest import VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.model import ModelConfig, VideoTransformer
from saga.model.inference import infer
from saga.openworld.api import calibrate_run, enroll_run, fit_openset_run
from saga.openworld.calibration import Calibration
from saga.openworld.enroll import Enrollment
from saga.openworld.extras import OpenWorld
from saga.openworld.openset import OpenSet
from saga.runs import load_model, make_provenance, save_weights, write_json
from saga.taxonomy import Taxonomy

from expected_warnings import unreliable, unreliable_fold

T, W, D, TP = 8, 1, 12, 4
GENS = ["real", "syn-svd", "syn-pika", "syn-sd", "syn-hotshot"]
KNOWN = GENS[:4]  # the run never saw syn-hotshot
SPLITS = ["train"] * 5 + ["val"] * 3 + ["test"] * 3


# -- a tiny cache and a run that lacks one generator ----------------------------------------------
def make_cache(root: Path, dim: int = D, name: str = "toy") -> FeatureCache:
    """Each generator's features lean on one dim; 5 train, 3 val, 3 test videos per generator."""
    tax = Taxonomy.load("synth")
    prov = cache_provenance(EncoderSpec.simulated(dim, T, W, name=name), tax)
    cache = FeatureCache.create_or_open(root, prov)
    rng = np.random.default_rng(0)
    writer = PartWriter(cache, next_part_name(cache), capacity=len(GENS) * len(SPLITS) * W)
    for g, gen in enumerate(GENS):
        for k, split in enumerate(SPLITS):
            feats = rng.normal(size=(W, T, dim)).astype(np.float16)
            feats[..., g] += 3
            rec = VideoRecord(path=f"{gen}/v{k}.mp4", size=1, mtime_ns=1, status="ok", generator=gen,
                              labels=tax.labels(gen), split=split)
            writer.add(rec, feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    return FeatureCache.open(root)


def make_run(root: Path, cache: FeatureCache) -> Path:
    mcfg = ModelConfig(in_dim=D, d_model=16, depth=2, heads=2, max_frames=16, n_classes=len(KNOWN), dropout=0.0)
    torch.manual_seed(0)
    root.mkdir(parents=True)
    save_weights(root / "model.safetensors", VideoTransformer(mcfg), epoch=1, metric=0.5)
    write_json(root / "config.json", {"stage": 2, "level": "GEN-L", "classes": KNOWN, "frames": TP,
                                      "model": mcfg.to_dict(), "train": {"seed": 0}, "cache": str(cache.root)})
    write_json(root / "provenance.json", make_provenance(cache, 0))
    subset = {g: [f"{g}/v{k}.mp4" for k in range(5)] for g in KNOWN}
    write_json(root / "labelled.json", {"level": "GEN-L", "classes": subset})
    (root / "done.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ow")
    cache = make_cache(tmp / "cache")
    return {"tmp": tmp, "cache": cache, "run": make_run(tmp / "run", cache)}


def test_calibration_is_saved_and_bound_to_the_weights(world: dict[str, Any]) -> None:
    with unreliable("the temperature"):
        cal, diagrams = calibrate_run(world["run"], report_split="test")
    saved = json.loads((world["run"] / "calibration.json").read_text())
    assert saved["temperature"] == pytest.approx(cal.temperature) and saved["n"] == 3 * len(KNOWN)
    assert diagrams["before"]["n"] == diagrams["after"]["n"] == 3 * len(KNOWN)
    assert Calibration.load(world["run"], cal.run_model).temperature == pytest.approx(cal.temperature)
    with pytest.raises(SagaError, match="other weights"):
        Calibration.load(world["run"], "0" * 32)
    model, info = load_model(world["run"])
    inf = infer(model, info, world["cache"], list(world["cache"].ok_records("test")))
    assert np.array_equal(cal.probs(inf.logits).argmax(1), inf.logits.argmax(1))  # T never changes a prediction


def test_openset_detector_round_trips_and_flags_about_5_percent_of_val(world: dict[str, Any]) -> None:
    for kind in ("prototype", "knn"):
        with unreliable("the unknown threshold at the 95th percentile"):
            det = fit_openset_run(world["run"], kind=kind, k=3, percentile=95.0, out=world["tmp"] / kind)
        back = OpenSet.load(world["tmp"] / kind)
        assert back.kind == kind and back.threshold == pytest.approx(det.threshold)
        assert back.prototypes.shape == (len(KNOWN), 16) and back.bank.shape == (5 * len(KNOWN), 16)
    model, info = load_model(world["run"])
    val = [r for r in world["cache"].ok_records("val") if r.labels["GEN-L"] in KNOWN]
    flagged = back.unknown(infer(model, info, world["cache"], val).embeddings)
    assert flagged.mean() <= 0.1  # the 95th percentile of these very scores


def test_a_damaged_openset_file_is_refused_and_a_refit_replaces_the_pair(world: dict[str, Any], tmp_path: Path) -> None:
    with unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(world["run"], out=tmp_path)
    tensors = json.loads((tmp_path / "openset.json").read_text())["tensors"]
    (tmp_path / tensors).write_bytes(b"garbage")
    with pytest.raises(SagaError, match="does not match"):
        OpenSet.load(tmp_path)
    with unreliable("the unknown threshold at the 90th percentile"):
        fit_openset_run(world["run"], out=tmp_path, percentile=90.0)  # new content: a new tensors name
    assert OpenSet.load(tmp_path).percentile == 90.0
    assert len(list(tmp_path.glob("openset.*.safetensors"))) == 1  # the superseded file is gone


def test_enroll_a_generator_from_its_cache_videos(world: dict[str, Any], tmp_path: Path) -> None:
    with unreliable("the prototype temperature τ"):
        enr = enroll_run(world["run"], "syn-hotshot", world["cache"].root, split="train", team="Hotshot-Team",
                         task="T2V", sd="none", out=tmp_path)
    assert enr.names == ["syn-hotshot"] and len(enr.entries[0].paths) == 5
    meta = json.loads((tmp_path / "enrolled.json").read_text())
    assert meta["tensors"].startswith("enrolled.") and (tmp_path / meta["tensors"]).is_file()
    back = Enrollment.load(tmp_path)
    assert np.allclose(back.entries[0].prototype, enr.entries[0].prototype)
    enroll_run(world["run"], "syn-other", world["cache"].root, videos="syn-hotshot", split="test", out=tmp_path)
    assert Enrollment.load(tmp_path).names == ["syn-hotshot", "syn-other"]  # a second enrollment appends


def test_enroll_refuses_an_incompatible_cache_in_one_line(world: dict[str, Any], tmp_path: Path) -> None:
    other = make_cache(tmp_path / "other", name="another-encoder")
    with pytest.raises(SagaError) as exc:
        enroll_run(world["run"], "syn-hotshot", other.root, out=tmp_path / "o")
    assert "\n" not in str(exc.value) and "encoder" in str(exc.value)
    with pytest.raises(SagaError, match="no extracted videos"):
        enroll_run(world["run"], "syn-nothing", world["cache"].root, out=tmp_path / "o")


def test_openworld_extras_for_predict(world: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    with unreliable("the temperature"):
        calibrate_run(run, report_split=None)
    with unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(run)
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "syn-hotshot", world["cache"].root, split="train", team="T", task="T2V", sd="none")
    model, info = load_model(run)
    inf = infer(model, info, world["cache"], list(world["cache"].ok_records("test"))[:4])
    ow = OpenWorld.load(run, info)
    rows = ow.apply(inf.logits, inf.probs, inf.embeddings)
    assert len(rows) == 4 and {"calibrated", "unknown", "enrolled"} <= set(rows[0])
    assert "syn-hotshot" in rows[0]["enrolled"]["GEN-L"]["probabilities"]
    ev = ow.evaluation(inf)
    assert set(ev) == {"calibration", "openset"}
    from saga.openworld.api import evaluate_openworld

    full = evaluate_openworld(run, split="test")
    assert full["calibration"]["after"]["n"] == 3 * len(KNOWN) and full["openset"]["n_known"] == 3 * len(KNOWN)
    assert evaluate_openworld(world["run"]) == {} or (world["run"] / "calibration.json").is_file()


def test_cli_calibrate_openset_enroll(world: dict[str, Any], tmp_path: Path) -> None:
    from saga.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", str(world["run"]), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "calibration.json").is_file() and (tmp_path / "reliability-test.png").is_file()
    res = runner.invoke(app, ["openset", "fit", str(world["run"]), "--out", str(tmp_path), "--kind", "knn"])
    assert res.exit_code == 0 and "percentile" in res.output, res.output
    res = runner.invoke(app, ["enroll", str(world["run"]), "--generator", "syn-hotshot", "--cache",
                              str(world["cache"].root), "--split", "train", "--limit", "4", "--out", str(tmp_path)])
    assert res.exit_code == 0 and "from 4 videos" in res.output, res.output


def test_holdout_trains_without_a_class_and_with_few_videos_of_another(world: dict[str, Any], tmp_path: Path) -> None:
    from saga.openworld.holdout import filtered_subset, train_holdout
    from saga.train.attribute import AttributeConfig

    def cfg() -> AttributeConfig:
        return AttributeConfig(d_model=16, depth=1, heads=2, eval_batch_size=64, level="GEN-L", fraction=1.0,
                               floor=1, loss="ce", epochs=1, min_steps=0, eval_every_steps=0, batch_size=16,
                               frames=TP, warmup_epochs=0.0, patience=0)
    few = {"syn-sd": ["syn-sd/v0.mp4", "syn-sd/v3.mp4"]}
    subset = filtered_subset(world["cache"], cfg(), exclude=["syn-hotshot"], few=few)
    assert list(subset) == ["real", "syn-svd", "syn-pika", "syn-sd"] and subset["syn-sd"] == few["syn-sd"]
    run = train_holdout(world["cache"].root, tmp_path / "fold", cfg(), exclude=["syn-hotshot"], few=few)
    _, info = load_model(run)
    assert info.classes == ["real", "syn-svd", "syn-pika", "syn-sd"]
    assert json.loads((run / "labelled.json").read_text())["openworld"]["exclude"] == ["syn-hotshot"]
    with pytest.raises(SagaError, match="filtered differently"):
        train_holdout(world["cache"].root, tmp_path / "fold", cfg(), exclude=["syn-pika"])
    with pytest.raises(SagaError, match="not a train video"):
        filtered_subset(world["cache"], cfg(), few={"syn-sd": ["syn-sd/v9.mp4"]})


def test_logo_fold_measures_on_a_tiny_fold(world: dict[str, Any], tmp_path: Path) -> None:
    """The leave-one-generator-out measurement runs end to end (untrained runs: plumbing, not accuracy)."""
    import shutil

    from saga.openworld.logo import evaluate_folds, to_markdown

    shutil.copytree(world["run"], tmp_path / "logo" / "syn-hotshot")
    retrain = tmp_path / "retrain3" / "syn-hotshot"
    shutil.copytree(world["run"], retrain)
    mcfg = ModelConfig(in_dim=D, d_model=16, depth=2, heads=2, max_frames=16, n_classes=len(GENS), dropout=0.0)
    save_weights(retrain / "model.safetensors", VideoTransformer(mcfg), epoch=1, metric=0.5)
    config = json.loads((retrain / "config.json").read_text())
    write_json(retrain / "config.json", {**config, "classes": GENS, "model": mcfg.to_dict()})
    with unreliable_fold():
        res = evaluate_folds(world["cache"], tmp_path, tmp_path / "out", ["syn-hotshot"], 3, 0, log=lambda s: None)
    gen = res["openset"]["syn-hotshot"]["GEN-L"]
    assert gen["prototype"]["n_unknown"] == 3 and gen["prototype"]["n_known"] == 3 * len(KNOWN)
    assert 0.0 <= gen["knn"]["auroc"] <= 1.0 and 0.0 <= gen["prototype"]["oscr"] <= 1.0
    assert res["openset"]["syn-hotshot"]["TASK-L"]["unseen_class"] is None  # T2V is known: nothing unseen there
    enr = res["enroll"]["syn-hotshot"]["levels"]["GEN-L"]
    assert {"before", "gate", "ncm", "retrain"} <= set(enr) and enr["before"]["new"] == 0.0
    assert "Open set" in to_markdown(res) and (tmp_path / "out" / "results.json").is_file()
    scores = gen["knn"]["scores"]  # kept for the report's ROC curves; TASK-L (nothing unseen) keeps none
    assert scores["n"]["unknown"] == 3 and len(scores["known_correct"]) + len(scores["known_wrong"]) == 3 * len(KNOWN)
    assert "scores" not in res["openset"]["syn-hotshot"]["TASK-L"]["knn"]
    from saga.explain.report import render_report

    html = render_report([], openworld=[tmp_path / "out"])
    assert "Leave-one-generator-out: out" in html and "every fold&#x27;s ROC" in html and "enrolled, gate" in html


def test_evaluate_and_report_show_calibration_and_open_set(world: dict[str, Any], tmp_path: Path) -> None:
    import json
    import shutil

    from saga.cli import app

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    runner = CliRunner()
    for args in (["calibrate", str(run)], ["openset", "fit", str(run)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(run), "--cache", str(world["cache"].root), "--no-probe",
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    ow = json.loads((run / "metrics.json").read_text())["openworld"]
    assert ow["calibration"]["before"]["n"] == ow["calibration"]["after"]["n"] > 0
    assert 0.0 <= ow["openset"]["false_unknown"] <= 1.0 and ow["openset"]["kind"] == "knn"
    # the test split holds syn-hotshot, which the run never saw: AUROC / OSCR, and the scores behind them
    o = ow["openset"]
    assert o["n_known"] == 3 * len(KNOWN) and o["n_unknown"] == 3 and 0.0 <= o["auroc"] <= 1.0
    assert sum(o["scores"]["n"].values()) == 3 * len(GENS) and len(o["scores"]["unknown"]) == 3
    assert o["scores"]["n"]["known_correct"] == round(o["closed_accuracy"] * o["n_known"])
    res = runner.invoke(app, ["evaluate", str(run), "--cache", str(world["cache"].root), "--no-probe"])
    assert "calibration (T = " in res.output and "known videos called unknown" in res.output
    assert f"unseen sources (3 videos): AUROC {o['auroc']:.3f}, OSCR {o['oscr']:.3f}" in res.output
    res = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert "<h3>Calibration</h3>" in html and "reliability diagram, test split" in html
    assert "<h3>Open set (unknown sources)</h3>" in html and f"{o['auroc']:.3f}" in html and "ROC and OSCR" in html


def test_files_of_other_weights_cost_neither_the_evaluation_nor_a_true_report(world: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    """Retrained weights: evaluate keeps its metrics (a stale enrolled.json is not its business, a stale
    calibration.json is skipped with a line) and the report shows neither as if it were valid."""
    import shutil

    from saga.cli import app

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    runner = CliRunner()
    assert runner.invoke(app, ["calibrate", str(run)]).exit_code == 0
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "syn-hotshot", world["cache"].root, split="train", team="Hotshot-Team", task="T2V", sd="none")
    mcfg = ModelConfig(in_dim=D, d_model=16, depth=2, heads=2, max_frames=16, n_classes=len(KNOWN), dropout=0.0)
    torch.manual_seed(1)
    save_weights(run / "model.safetensors", VideoTransformer(mcfg), epoch=1, metric=0.5)  # retrained
    res = runner.invoke(app, ["evaluate", str(run), "--cache", str(world["cache"].root), "--no-probe"])
    assert res.exit_code == 0 and "open-world figures skipped" in res.output and "other weights" in res.output
    assert json.loads((run / "metrics.json").read_text())["n"] == 3 * len(GENS)
    assert runner.invoke(app, ["calibrate", str(run)]).exit_code == 0  # refitted: only enrolled.json is stale
    res = runner.invoke(app, ["evaluate", str(run), "--cache", str(world["cache"].root), "--no-probe"])
    assert res.exit_code == 0 and "calibration (T = " in res.output
    assert runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")]).exit_code == 0
    html = (tmp_path / "r.html").read_text()
    assert "enrolled.json: fitted on other weights than the run" in html and "Hotshot-Team" not in html


def test_a_finished_logo_fold_is_reused_only_for_the_options_it_was_trained_with(tmp_path: Path) -> None:
    from saga.openworld.logo import _check_fold_options
    from saga.train.attribute import AttributeConfig

    run = tmp_path / "logo" / "syn-pika"
    run.mkdir(parents=True)
    trained = AttributeConfig(level="GEN-L", fraction=1.0, floor=1, seed=0, d_model=64)
    trained.check()
    write_json(run / "config.json", {"train": {**trained.to_dict(), "frames": 16, "lr": 3e-4}})
    _check_fold_options(run, AttributeConfig(level="GEN-L", fraction=1.0, floor=1, seed=0, d_model=64))
    with pytest.raises(SagaError, match=r"syn-pika: trained with seed = 0, this call asks for 1; pass another --out"):
        _check_fold_options(run, AttributeConfig(level="GEN-L", fraction=1.0, floor=1, seed=1, d_model=64))
    with pytest.raises(SagaError, match="trained with d_model = 64, this call asks for 256"):
        _check_fold_options(run, AttributeConfig(level="GEN-L", fraction=1.0, floor=1, seed=0))


def test_a_video_routed_to_an_enrolled_generator_is_not_called_an_unknown_source(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector knows the trained classes only; a video the enrollment rule gives to an enrolled generator
    is known through enrollment (it was reported "unknown source" beside its enrolled label)."""
    import shutil

    import saga.openworld.extras as extras

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    with unreliable("the unknown threshold at the 95th percentile"):
        fit_openset_run(run)
    with unreliable("the prototype temperature τ"):
        enroll_run(run, "syn-hotshot", world["cache"].root, split="train", team="T", task="T2V", sd="none")
    model, info = load_model(run)
    hotshot = [r for r in world["cache"].ok_records("test") if r.generator == "syn-hotshot"]
    inf = infer(model, info, world["cache"], hotshot)
    classes = [*KNOWN, "syn-hotshot"]
    routed = {"GEN-L": {"pred": ["syn-hotshot", "syn-pika", "syn-hotshot"], "classes": classes,
                        "probs": np.eye(len(classes))[[4, 2, 4]]}}  # what a trained run's enrollment rule says
    monkeypatch.setattr(extras, "predict_with_enrolled", lambda *a, **k: routed)
    rows = OpenWorld.load(run, info).apply(inf.logits, inf.probs, inf.embeddings)
    far = [row["unknown"]["score"] > row["unknown"]["threshold"] for row in rows]
    assert all(far)  # the untrained run puts every hotshot video far from its classes
    assert [row["unknown"]["unknown"] for row in rows] == [False, True, False]
    assert [row["unknown"].get("enrolled") for row in rows] == ["syn-hotshot", None, "syn-hotshot"]
