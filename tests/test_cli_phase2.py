"""Phase 2 and the explain commands end to end through the real CLI on a tiny benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_saga
from saga.benchmark.synth import SynthConfig, generate

SMALL_MODEL = 'd_model = 32\ndepth = 2\nheads = 2\nepochs = 3\nmin_steps = 0\nbatch_size = 16\n'


# `saga synth --per-class 4 --seed 3`'s benchmark (20 classes, 88 clips) at 64 px and 10-16 frames instead of
# 256 px and 32-48: the same classes, counts and splits, 8 frames extracted from each as before, in ~1/20 of the
# rendering time. The `saga synth` command itself runs end to end in test_synth_fixes.
TINY_BENCHMARK = SynthConfig(videos_per_class=4, seed=3, sizes=((64, 64),), min_frames=10, max_frames=16)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    root = tmp_path_factory.mktemp("phase2")
    generate(root / "videos", TINY_BENCHMARK)
    run_saga("extract", "--videos", str(root / "videos"), "--out", str(root / "cache"), "--encoder", "saga-tiny-vit",
             "--pretrained", str(tiny_weights), "--frames", "8", "--workers", "1", "--device", "cpu", check=True)
    (root / "small.toml").write_text(SMALL_MODEL)
    return root


@pytest.fixture(scope="module")
def stage1_run(tiny_cache: Path) -> Path:
    """A finished stage-1 run on the tiny cache, trained once through the CLI (the default stage: 1, the default
    --out: runs/stage1 under the current folder) for the whole phase-2 chain, the predict tests and the attribute
    test's default stage-1 run; none of them changes it (the unfinished-run and attribute tests change copies)."""
    run_saga("train", "--cache", str(tiny_cache / "cache"), "--config", str(tiny_cache / "small.toml"),
             cwd=tiny_cache, check=True)
    run = tiny_cache / "runs" / "stage1"
    assert (run / "done.json").is_file()
    return run


def test_train_attribute_evaluate_predict_explain(tiny_cache: Path, stage1_run: Path) -> None:
    root, cache = tiny_cache, str(tiny_cache / "cache")
    small = str(root / "small.toml")
    stage1 = stage1_run
    assert (stage1 / "model.safetensors").is_file() and (stage1 / "done.json").is_file()
    provenance = json.loads((stage1 / "provenance.json").read_text())
    assert {"cache_id", "encoder", "seed", "versions"} <= set(provenance)
    again = run_saga("train", "--stage", "1", "--cache", cache, "--out", str(stage1), "--config", small, check=True)
    assert "already holds" in again.stderr  # a finished run is reused, not retrained

    sd = root / "runs" / "sd-l"
    run_saga("attribute", "--level", "SD-L", "--cache", cache, "--from", str(stage1), "--out", str(sd),
             "--fraction", "0.5", "--floor", "2", "--loss", "ce+hnm", "--config", small, check=True)
    config = json.loads((sd / "config.json").read_text())
    assert config["classes"][0] == "real" and "none" not in config["classes"] and len(config["classes"]) == 5
    lines = [json.loads(x) for x in (sd / "metrics.jsonl").read_text().splitlines()]
    assert all("active_triplets" in x for x in lines)
    labelled = json.loads((sd / "labelled.json").read_text())
    assert labelled
    assert "SD-L gives no class" in json.loads((sd / "done.json").read_text())["self_training"]  # scope unknown

    metrics = json.loads(run_saga("evaluate", str(sd), "--cache", cache, "--format", "json", check=True).stdout)
    assert metrics["level"] == "SD-L" and {"accuracy", "macro_accuracy", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) <= set(config["classes"])
    probe = metrics["probe"]  # the linear probe beside the run, fitted on the run's own labelled videos
    assert probe["n_train"] == sum(labelled["counts"].values()) and probe["subset"]["source"] == "labelled.json"
    assert probe["classes"] == config["classes"] and probe["accuracy_ci"] and metrics["accuracy_ci"]
    assert probe["paired"]["n"] == metrics["n"] and "correct" not in probe  # θ − probe on the same videos
    table = " ".join(run_saga("evaluate", str(sd), "--cache", cache, check=True).stdout.split())
    assert "transformer − probe" in table and "paired over the same" in table
    like = json.loads(run_saga("probe", "--cache", cache, "--like", str(sd), "--out", str(root / "probe-sd"),
                               "--format", "json", check=True).stdout)
    assert like["accuracy"] == probe["accuracy"] and like["n_train"] == probe["n_train"]
    bin_metrics = json.loads(run_saga("evaluate", str(stage1), "--cache", cache, "--format", "json",
                                      check=True).stdout)
    assert bin_metrics["auc"] is not None

    run_saga("tsig", str(sd), "--cache", cache, check=True)
    assert (sd / "tsig.npz").is_file() and (sd / "tsig_maps.png").is_file()
    run_saga("tsne", str(sd), "--cache", cache, "--color-by", "GEN-L", check=True)
    assert (sd / "tsne_GEN-L.png").is_file()

    video = next((root / "videos" / "syn-hotshot").glob("*.mp4"))
    proc = run_saga("predict", str(sd), str(video), str(root / "missing.mp4"), "--format", "json", "--tsig")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr  # the missing file fails, the other works
    records = [json.loads(x) for x in proc.stdout.splitlines()]
    ok = next(r for r in records if r["status"] == "ok")
    assert ok["level"] == "SD-L" and abs(sum(ok["probabilities"].values()) - 1) < 1e-4
    assert ok["predicted"] in config["classes"] and len(ok["tsig"]) == 8
    if ok["predicted"] != "real":
        assert ok["implied"]["BIN-L"] == "fake"
    assert next(r for r in records if r["status"] == "failed")["error"]
    # the evidence behind the answer (a whole clip: nothing to warn about), and the run that gave it, in every record
    assert ok["evidence"]["frames"] == ok["evidence"]["of"] == 8 and not ok["evidence"]["still"] and ok["warnings"] == []
    from saga.runs import file_fingerprint

    assert all(r["run"] == str(sd.absolute()) and r["run_model"] == file_fingerprint(sd / "model.safetensors")
               and r["run_finished"] is True for r in records)
    by_class = json.loads((sd / "done.json").read_text())["sources"]  # SD-L classes pool several generators
    assert isinstance(by_class, list) and ok["source"]["rows"] == len(by_class[config["classes"].index(ok["predicted"])])
    assert ok["source"]["generator"] in by_class[config["classes"].index(ok["predicted"])]
    assert "nearest class signature" in proc.stderr and (sd / "predict" / f"{video.stem}_tsig.png").is_file()
    odd = root / "odd-names"  # legal names that cannot be a plot file or title as they are
    odd.mkdir()
    for name in ("cost $a$ and $b$.mp4", "x" * 240 + ".mp4"):
        (odd / name).write_bytes(video.read_bytes())
    proc = run_saga("predict", str(sd), str(odd), "--format", "json", "--tsig", "--out", str(root / "odd-plots"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert [json.loads(x)["status"] for x in proc.stdout.splitlines()] == ["ok", "ok"]
    assert len(list((root / "odd-plots").glob("*_tsig.png"))) == 2

    html = root / "report.html"
    run_saga("report", str(stage1), str(sd), "--out", str(html), check=True)
    text = html.read_text()
    assert "data:image/png;base64," in text and "SD-L" in text


def test_predict_refuses_another_encoder(tiny_cache: Path, stage1_run: Path) -> None:
    video = next((tiny_cache / "videos" / "real").glob("*.mp4"))
    proc = run_saga("predict", str(stage1_run), str(video), "--pretrained", "none")
    assert proc.returncode == 2 and "encoder mismatch" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_refuses_an_unfinished_run_unless_asked(tiny_cache: Path, stage1_run: Path, tmp_path: Path) -> None:
    """An interrupted run's mid-training weights were used silently, exit 0 (stage 2's readout comes last)."""
    run = tmp_path / "unfinished"
    shutil.copytree(stage1_run, run)
    (run / "done.json").unlink()
    video = next((tiny_cache / "videos" / "real").glob("*.mp4"))
    proc = run_saga("predict", str(run), str(video))
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    line = " ".join(proc.stderr.split())
    assert "the run is unfinished (no done.json)" in line and "--resume" in line and "--allow-unfinished" in line
    proc = run_saga("predict", str(run), str(video), "--allow-unfinished", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "ok"
    assert "warning:" in proc.stderr and "unfinished" in proc.stderr


def test_attribute_options_are_validated(tiny_cache: Path, tmp_path: Path) -> None:
    proc = run_saga("attribute", "--level", "XYZ-L", "--cache", str(tiny_cache / "cache"), "--out",
                    str(tmp_path / "r"))
    assert proc.returncode == 2 and "unknown level" in proc.stderr
    proc = run_saga("attribute", "--loss", "triplet", "--cache", str(tiny_cache / "cache"), "--out",
                    str(tmp_path / "r"))
    assert proc.returncode == 2 and "loss must be one of" in proc.stderr
    proc = run_saga("attribute", "--readout", "knn", "--cache", str(tiny_cache / "cache"), "--out",
                    str(tmp_path / "r"))
    assert proc.returncode == 2 and "readout must be one of" in proc.stderr and "Traceback" not in proc.stderr


def test_attribute_adapts_the_default_stage1_run(tiny_cache: Path, stage1_run: Path, tmp_path: Path) -> None:
    cache, small = str(tiny_cache / "cache"), str(tiny_cache / "small.toml")
    common = ("--level", "TASK-L", "--cache", cache, "--config", small, "--fraction", "0.5")
    proc = run_saga("attribute", *common, "--out", "runs/scratch", cwd=tmp_path, check=True)
    assert "training from scratch" in proc.stderr
    # calibrated when done: the temperature that predict applies, fitted on the val split
    cal = json.loads((tmp_path / "runs/scratch/calibration.json").read_text())
    assert f"calibrated on {cal['n']} val videos: T = {cal['temperature']:.3f}" in proc.stdout and cal["n"] > 0
    run_saga("attribute", *common, "--out", "runs/plain", "--no-calibrate", "--no-self-training",
             "--no-sources", cwd=tmp_path, check=True)
    assert not (tmp_path / "runs/plain/calibration.json").exists()
    plain = json.loads((tmp_path / "runs/plain/done.json").read_text())
    assert plain["self_training"] == "self_training = false" and plain["sources"] == "off"
    assert isinstance(json.loads((tmp_path / "runs/scratch/done.json").read_text())["sources"], list)
    assert json.loads((tmp_path / "runs/scratch/done.json").read_text())["self_training"] == "on"
    assert json.loads((tmp_path / "runs/scratch/config.json").read_text())["train"]["from_run"] is None
    # the default stage-1 run (`saga train` with no --out in this folder, as the stage1_run fixture made it)
    shutil.copytree(stage1_run, tmp_path / "runs" / "stage1")
    proc = run_saga("attribute", *common, cwd=tmp_path, check=True)
    assert "adapting the stage-1 run" in proc.stderr
    config = json.loads((tmp_path / "runs/task-l/config.json").read_text())
    assert config["train"]["from_run"] == str((tmp_path / "runs/stage1").resolve())
    assert config["train"]["head_lr_scale"] == 10.0
    proc = run_saga("attribute", *common, "--scratch", "--from", "runs/stage1", cwd=tmp_path)
    assert proc.returncode != 0 and "exclude each other" in proc.stderr and "Traceback" not in proc.stderr


def test_paths_and_class_names_with_brackets_print_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train / attribute / evaluate printed the run path, progress lines and the table's class names as rich
    markup: `[x]` vanished, and `--out 'g[/b]'` (folders `g[` and `b]`) was a MarkupError after the run was saved."""
    import saga.explain.metrics
    import saga.openworld.api
    import saga.train.attribute
    import saga.train.stage1
    from typer.testing import CliRunner

    from saga.cli import app
    from saga.progress import ProgressEvent

    def trained(cache: Path, out: Path, cfg: object, progress: object = None, **kw: object) -> Path:
        progress(ProgressEvent("labelled", message="labelled videos: kling [v1.5] 3"))  # type: ignore[operator]
        return Path(out)

    metrics = {"level": "GEN-L", "split": "test", "n": 2, "accuracy": 0.5, "classes": ["kling [v1.5]"],
               "per_class_n": {"kling [v1.5]": 2}, "per_class": {"kling [v1.5]": 0.5}, "probe": {}}
    monkeypatch.setattr(saga.train.stage1, "train_stage1", trained)
    monkeypatch.setattr(saga.train.attribute, "train_attribution", trained)
    monkeypatch.setattr(saga.explain.metrics, "compute_evaluation", lambda *a, **k: dict(metrics))
    monkeypatch.setattr(saga.openworld.api, "evaluate_openworld", lambda *a, **k: {})
    out, cache = tmp_path / "g[" / "b]", str(tmp_path)
    (tmp_path / "zarr.json").write_text("{}")  # stand-in cache (the CLI checks it)
    runner = CliRunner()
    for args in (["train", "--stage", "1"], ["attribute", "--scratch", "--no-calibrate"]):
        result = runner.invoke(app, [*args, "--cache", cache, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "kling [v1.5] 3" in result.output and f"run: {out}" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--cache", cache, "--out", str(out), "--no-probe"])
    assert result.exit_code == 0, result.output
    assert "kling [v1.5]" in result.output and f"written to {out / 'metrics.json'}" in result.output
