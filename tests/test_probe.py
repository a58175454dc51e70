"""The linear probe (`saga probe`, and beside every run in `saga evaluate`) and the 95 % intervals (CPU, fast)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_saga
from saga.cache.manifest import VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.explain.intervals import format_ci
from saga.taxonomy import Taxonomy
from saga.cache.fraction import labelled_subset
from saga.explain.probe import STAT_NAMES, Probe, cache_features, fit_probe, temporal_statistics, video_features
from saga.explain.probe_runs import run_probe
from saga.runs import write_json

T, W, D = 16, 2, 8
GENS = ["real", "syn-svd", "syn-pika", "syn-sd", "syn-hotshot"]
HOLD = {"real": 1, "syn-svd": 2, "syn-pika": 3, "syn-sd": 4, "syn-hotshot": 1}  # hotshot: flicker instead
SPLITS = ["train"] * 8 + ["val"] * 3 + ["test"] * 4


def provenance() -> dict[str, Any]:
    return cache_provenance(EncoderSpec.simulated(D, T, W, name="toy"), Taxonomy.load("synth"))


def clip(gen: str, rng: np.random.Generator, frames: int = T) -> np.ndarray:
    """Content-free temporal signature: frames held HOLD× from a random phase, or a flicker; random content."""
    hold = HOLD[gen]
    phase = int(rng.integers(0, hold))
    base = rng.normal(size=(frames // hold + 2, D))
    x = base[(np.arange(frames) + phase) // hold] + 0.05 * rng.normal(size=(frames, D))
    if gen == "syn-hotshot":
        x = x * np.where(np.arange(frames) % 2, 1.0, 0.3)[:, None]
    return x


def make_cache(root: Path) -> FeatureCache:
    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(root, provenance())
    rng = np.random.default_rng(0)
    writer = PartWriter(cache, next_part_name(cache), capacity=len(GENS) * len(SPLITS) * W)
    for gen in GENS:
        for k, split in enumerate(SPLITS):
            feats = np.stack([clip(gen, rng) for _ in range(W)]).astype(np.float16)
            mask = np.ones((W, T), bool)
            if k % 4 == 1:  # short video: 10 real frames, then padding
                mask[:, 10:] = False
                feats[:, 10:] = feats[:, 9:10]
            rec = VideoRecord(path=f"{gen}/v{k}.mp4", size=1, mtime_ns=1, status="ok", generator=gen,
                              labels=tax.labels(gen), split=split)
            writer.add(rec, feats, mask, np.zeros((W, T), np.float32))
    writer.close()
    return FeatureCache.open(root)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    return make_cache(tmp_path_factory.mktemp("probe") / "cache")


# -- the statistics ----------------------------------------------------------------------------------
def test_statistics_are_shift_invariant() -> None:
    """Where a periodic artefact starts changes nothing (min/max exactly; the rest up to the clip's ends)."""
    rng = np.random.default_rng(3)
    period = rng.normal(size=(3, D))
    long = period[np.arange(63) % 3]  # a frame pattern repeating every 3 frames (a whole number of periods)
    m = np.ones(len(long), bool)
    ref = temporal_statistics(long, m)
    assert ref.shape == (len(STAT_NAMES),) and ref.dtype == np.float32
    for shift in (1, 2, 5):
        rolled = temporal_statistics(np.roll(long, shift, axis=0), m)
        np.testing.assert_allclose(rolled, ref, rtol=0.02, atol=0.02)  # up to the clip's ends (1 of 62 pairs)
        minmax = [i for i, n in enumerate(STAT_NAMES) if n.endswith(("_min", "_max"))]
        np.testing.assert_allclose(rolled[minmax], ref[minmax], atol=1e-6)
    # rolled by a whole period it is the very same sequence
    np.testing.assert_array_equal(temporal_statistics(np.roll(long, 3, axis=0), m), ref)
    # ...while a different period is far away: the statistics carry the artefact, not its phase
    other = temporal_statistics(period[np.arange(63) % 2], m)
    assert np.abs(other - ref).max() > 0.3
    # a held-2× clip from any phase: same statistics up to the ends of a 16-frame clip
    a, b = (clip("syn-svd", np.random.default_rng(s)) for s in (0, 1))
    sa, sb = temporal_statistics(a, np.ones(T, bool)), temporal_statistics(b, np.ones(T, bool))
    lag1 = STAT_NAMES.index("cosdist_lag1_mean")
    assert abs(sa[lag1] - sb[lag1]) < 0.25


def test_statistics_are_mask_aware() -> None:
    """Padding (anything under mask False, before or after the real frames) changes nothing."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, D))
    ref = temporal_statistics(x, np.ones(10, bool))
    for before, after in ((0, 6), (3, 3), (5, 0)):
        padded = np.concatenate([rng.normal(size=(before, D)) * 100, x, rng.normal(size=(after, D)) * 100])
        mask = np.r_[np.zeros(before, bool), np.ones(10, bool), np.zeros(after, bool)]
        np.testing.assert_allclose(temporal_statistics(padded, mask), ref, rtol=1e-5, atol=1e-6)
    # batched = one by one; a clip with a single real frame has no pairs: zeros, no NaN
    batch = np.stack([np.concatenate([x, np.zeros((6, D))]), rng.normal(size=(16, D))])
    bm = np.stack([np.r_[np.ones(10, bool), np.zeros(6, bool)], np.eye(16, dtype=bool)[0]])
    out = temporal_statistics(batch, bm)
    np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-6)
    assert np.isfinite(out).all() and not out[1].any()
    feats = video_features(batch[:, None], bm[:, None])  # (n, W=1, T, D)
    assert feats.shape == (2, D + len(STAT_NAMES))
    np.testing.assert_allclose(feats[0, :D], x.mean(0), rtol=1e-5, atol=1e-6)  # mean of the real frames only
    with pytest.raises(SagaError, match="expected"):
        temporal_statistics(batch, bm[:, :3])


# -- the probe ----------------------------------------------------------------------------------------
def test_probe_trains_predicts_and_round_trips(cache: FeatureCache, tmp_path: Path) -> None:
    res = run_probe(cache.root, tmp_path / "probe", level="GEN-L", fraction=1.0, floor=2, seed=0)
    assert res["classes"] == GENS and res["n_train"] == 5 * 8 and res["n"] == 5 * 4
    assert res["accuracy"] >= 0.8 and res["macro_accuracy"] >= 0.8  # temporal-only classes: a linear probe sees them
    assert res["C"] in (0.01, 0.1, 1.0, 10.0) and res["selection"]["selected_by"] == "val macro accuracy"
    assert len(res["accuracy_ci"]) == 2 and res["accuracy_ci"][0] <= res["accuracy"] <= res["accuracy_ci"][1]
    out = tmp_path / "probe"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "labelled.json", "metrics-test.json", "metrics.json", "probe.safetensors"]
    assert not any(b"pickle" in p.read_bytes()[:4096] or p.suffix in (".pkl", ".pt", ".joblib")
                   for p in out.iterdir())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "probe" and cfg["level"] == "GEN-L" and cfg["cache_id"] == cache.cache_id
    assert cfg["fraction"] == 1.0 and cfg["features"]["statistics"] == list(STAT_NAMES)
    # loads back equal, and predicts with numpy exactly what was reported
    probe = Probe.load(out)
    again = Probe.load(out / "probe.safetensors")
    for key in ("coef", "intercept", "mean", "scale"):
        np.testing.assert_array_equal(getattr(probe, key), getattr(again, key))
    assert probe.classes == GENS and probe.C == res["C"] and probe.spec == cfg["features"]
    test = cache.ok_records("test")
    preds = probe.predict(cache_features(cache, test))
    truth = np.array([GENS.index(r.generator) for r in test])
    assert (preds == truth).mean() == pytest.approx(res["accuracy"])
    # deterministic: a rerun in place gives the same numbers
    assert run_probe(cache.root, out, level="GEN-L", fraction=1.0, floor=2, seed=0)["accuracy"] == res["accuracy"]


def test_probe_matches_sklearn_and_uses_the_stage2_subset(cache: FeatureCache, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = cache.ok_records("train")
    subset = labelled_subset(train, "TASK-L", cache.taxonomy, 0.25, 2, 7)
    res = run_probe(cache.root, tmp_path / "p", level="TASK-L", fraction=0.25, floor=2, seed=7)
    saved = json.loads((tmp_path / "p" / "labelled.json").read_text())
    assert saved["classes"] == subset and res["n_train"] == sum(map(len, subset.values()))
    # fit_probe = StandardScaler + LogisticRegression(lbfgs, balanced) for a fixed C
    x = cache_features(cache, train)
    y = np.array([GENS.index(r.generator) % 3 for r in train])
    probe, choice = fit_probe(x, y, ["a", "b", "c"], {"frames": None})
    assert choice == {"C": 1.0, "grid": None, "val_macro_accuracy": None, "selected_by": "default",
                      "selected_on": None}
    z = StandardScaler().fit_transform(x)
    ref = LogisticRegression(C=1.0, solver="lbfgs", max_iter=2000, class_weight="balanced").fit(z, y)
    np.testing.assert_allclose(probe.predict_proba(x), ref.predict_proba(z), atol=1e-4)  # float32 features
    # two classes: sklearn's binary form
    yb = (y > 0).astype(int)
    pb, _ = fit_probe(x, yb, ["real", "fake"], {})
    refb = LogisticRegression(C=1.0, solver="lbfgs", max_iter=2000, class_weight="balanced").fit(z, yb)
    np.testing.assert_allclose(pb.predict_proba(x), refb.predict_proba(z), atol=1e-4)
    with pytest.raises(SagaError, match="class"):
        fit_probe(x, np.zeros(len(x), int), ["a", "b"], {})


def test_probe_on_sources_sums_each_classs_generators(cache: FeatureCache, tmp_path: Path) -> None:
    res = run_probe(cache.root, tmp_path / "src", level="TASK-L", fraction=1.0, floor=2, seed=0)  # default: sources
    plain = run_probe(cache.root, tmp_path / "plain", level="TASK-L", fraction=1.0, floor=2, seed=0, sources=False)
    probe, flat = Probe.load(tmp_path / "src"), Probe.load(tmp_path / "plain")
    t2v = res["classes"].index("T2V")  # syn-pika, syn-sd, syn-hotshot: three generators, one class
    assert sorted(res["sources"]) == sorted(GENS) and plain["sources"] is None and flat.subclass_of == []
    assert probe.coef.shape[0] == len(GENS) and probe.subclass_of.count(t2v) == 3
    assert json.loads((tmp_path / "src" / "config.json").read_text())["sources"] == probe.sources
    x = cache_features(cache, cache.ok_records("test"))
    p = probe.predict_proba(x)
    rows = np.exp(probe.row_logits(x) - probe.row_logits(x).max(1, keepdims=True))
    rows /= rows.sum(1, keepdims=True)
    groups = np.array(probe.subclass_of)
    np.testing.assert_allclose(p[:, t2v], rows[:, groups == t2v].sum(1))
    np.testing.assert_allclose(p.sum(1), 1.0)
    # beside a run: sources exactly when the run was trained on them
    subset = json.loads((tmp_path / "src" / "labelled.json").read_text())["classes"]
    run = _fake_run(tmp_path / "run", cache, 2, "TASK-L", T, subset, {"level": "TASK-L", "fraction": 1.0,
                                                                        "floor": 2, "seed": 0, "cache_id": cache.cache_id})
    from saga.explain.metrics import probe_metrics

    assert probe_metrics(run, cache, "test", list(subset))["sources"] is None
    config = json.loads((run / "config.json").read_text())
    write_json(run / "config.json", {**config, "train": {"sources": True}})
    beside = probe_metrics(run, cache, "test", list(subset))
    assert beside["sources"] == probe.sources and beside["accuracy"] == res["accuracy"]
    assert run_probe(cache.root, tmp_path / "like", like=run)["sources"] == probe.sources  # --like follows the run


def _fake_run(root: Path, cache: FeatureCache, stage: int, level: str, frames: int,
              subset: dict[str, list[str]] | None = None, settings: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True)
    classes = list(subset) if subset else Taxonomy.load("synth").classes(level)
    write_json(root / "config.json", {"stage": stage, "level": level, "classes": classes, "frames": frames})
    if subset is not None:
        write_json(root / "labelled.json", {**(settings or {}), "classes": subset})
    return root


def test_probe_like_a_run_and_beside_evaluate(cache: FeatureCache, tmp_path: Path) -> None:
    from saga.explain.metrics import metrics_table, probe_metrics

    train = cache.ok_records("train")
    wanted = {"level": "TEAM-L", "fraction": 0.5, "floor": 2, "seed": 3, "cache_id": cache.cache_id}
    subset = labelled_subset(train, "TEAM-L", cache.taxonomy, 0.5, 2, 3)
    run = _fake_run(tmp_path / "team", cache, 2, "TEAM-L", 12, subset, wanted)
    res = run_probe(cache.root, tmp_path / "like", like=run)
    cfg = json.loads((tmp_path / "like" / "config.json").read_text())
    assert cfg["level"] == "TEAM-L" and cfg["frames"] == 12 and cfg["seed"] == 3 and cfg["fraction"] == 0.5
    assert json.loads((tmp_path / "like" / "labelled.json").read_text())["classes"] == subset
    with pytest.raises(SagaError, match="--level"):
        run_probe(cache.root, tmp_path / "clash", like=run, level="GEN-L")
    # beside evaluate: the same numbers, in the run's class order
    beside = probe_metrics(run, cache, "test", list(subset))
    assert beside["accuracy"] == res["accuracy"] and beside["subset"]["source"] == "labelled.json"
    assert beside["frames"] == 12 and beside["n_train"] == res["n_train"]
    # a stage-1 run: all train labels at BIN-L
    s1 = _fake_run(tmp_path / "s1", cache, 1, "BIN-L", T)
    b = probe_metrics(s1, cache, "test", ["real", "fake"])
    assert b["n_train"] == len(train) and b["subset"]["source"] == "all train labels" and b["auc"] is not None
    capped = probe_metrics(s1, cache, "test", ["real", "fake"], max_train=20)
    assert capped["n_train"] == 20 and capped["subset"]["capped"]
    # a stage-2 run whose labelled videos are gone: the probe is skipped, with the reason
    foreign = _fake_run(tmp_path / "foreign", cache, 2, "TEAM-L", 12, subset, {**wanted, "cache_id": "x" * 32})
    assert "not" in probe_metrics(foreign, cache, "test", list(subset))["skipped"]
    other = _fake_run(tmp_path / "s1-other", cache, 1, "BIN-L", T)  # a run of another cache: no probe on this one
    write_json(other / "provenance.json", {"cache_id": "y" * 32})
    assert "own cache" in probe_metrics(other, cache, "test", ["real", "fake"])["skipped"]
    table = metrics_table({**res, "probe": beside})
    assert [c.header for c in table.columns] == ["class", "n", "accuracy %", "95 % CI", "probe %"]
    assert "linear probe" in str(table.caption)


# -- the CLI -------------------------------------------------------------------------------------------
def test_cli_probe_end_to_end(cache: FeatureCache, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from saga.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["probe", "--cache", str(cache.root), "--level", "SD-L", "--fraction", "1.0",
                                   "--floor", "2", "--seed", "1", "--out", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["level"] == "SD-L" and data["excluded"] == 4  # syn-pika has no SD backbone
    assert (out / "probe.safetensors").is_file() and json.loads((out / "config.json").read_text())["seed"] == 1
    text = CliRunner().invoke(app, ["probe", "--cache", str(cache.root), "--level", "TASK-L", "--fraction", "1.0",
                                    "--out", str(tmp_path / "t")])
    assert text.exit_code == 0 and "linear probe on 40 labelled videos" in text.stdout and "95 % CI" in text.stdout
    team = CliRunner().invoke(app, ["probe", "--cache", str(cache.root), "--level", "TEAM-L", "--per-generator", "1",
                                    "--out", str(tmp_path / "team")])
    assert team.exit_code == 0, team.output
    labelled = json.loads((tmp_path / "team" / "labelled.json").read_text())
    train = cache.ok_records("train")
    assert labelled["per_generator"] == 1 and labelled["classes"] == labelled_subset(
        train, "TEAM-L", cache.taxonomy, 0.005, 2, 0, per_generator=1)
    assert {r.generator for r in train} == {r.generator for r in train
                                            if r.path in {p for ps in labelled["classes"].values() for p in ps}}
    assert json.loads((tmp_path / "team" / "config.json").read_text())["train"]["per_generator"] == 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    busy = CliRunner().invoke(app, ["probe", "--cache", str(cache.root), "--out", str(tmp_path / "busy")])
    assert isinstance(busy.exception, SagaError) and "not empty" in str(busy.exception)


def test_cli_probe_default_out_is_what_the_help_says(cache: FeatureCache, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--level: runs/probe-<level> lower-cased; --like RUN: runs/probe-<RUN's folder name> (one probe per run)."""
    from typer.testing import CliRunner

    from saga.cli import app

    help_text = CliRunner().invoke(app, ["probe", "--help"], env={"COLUMNS": "300"}).stdout
    assert "default runs/probe-<level>, lower-cased; with --like RUN: runs/probe-<RUN's folder name>" in help_text
    monkeypatch.chdir(tmp_path)
    _fake_run(tmp_path / "runs" / "Stage1", cache, 1, "BIN-L", T)
    for args, folder in ((["--like", "runs/Stage1"], "probe-Stage1"), (["--level", "BIN-L"], "probe-bin-l")):
        res = CliRunner().invoke(app, ["probe", "--cache", str(cache.root), *args])
        assert res.exit_code == 0, res.output
        assert f"written to runs/{folder}" in " ".join(res.stdout.split()) and (tmp_path / "runs" / folder).is_dir()


def test_cli_bad_level_is_one_line(cache: FeatureCache, tmp_path: Path) -> None:
    proc = run_saga("probe", "--cache", str(cache.root), "--level", "FOO-L", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown level 'FOO-L'" in proc.stderr
    assert not (tmp_path / "x").exists()


# -- beside a real run: evaluate and the report -----------------------------------------------------------
def test_evaluate_and_report_show_the_probe_and_intervals(cache: FeatureCache, tmp_path: Path) -> None:
    import torch

    from saga.explain.metrics import evaluate
    from saga.explain.report import build_report
    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import make_provenance, save_weights

    run = tmp_path / "runs" / "stage1"
    run.mkdir(parents=True)
    mcfg = ModelConfig(in_dim=D, d_model=16, depth=2, heads=2, max_frames=16, n_classes=2, dropout=0.0)
    torch.manual_seed(0)
    save_weights(run / "model.safetensors", VideoTransformer(mcfg), epoch=1, metric=0.5)
    write_json(run / "config.json", {"stage": 1, "level": "BIN-L", "classes": ["real", "fake"], "frames": 8,
                                     "model": mcfg.to_dict(), "train": {"loss": "ce", "fraction": 1.0}})
    write_json(run / "provenance.json", make_provenance(cache, 0))
    unfinished = r"stage1: the run is unfinished \(no done.json\): these are the metrics of its best weights so far"
    with pytest.warns(UserWarning, match=unfinished):  # no done.json: a run still training, as far as saga knows
        res = evaluate(run, cache.root)
    pr = res["probe"]
    assert pr["n_train"] == 5 * 8 and pr["frames"] == 8 and pr["classes"] == ["real", "fake"]
    assert pr["subset"]["source"] == "all train labels" and 0 <= pr["accuracy"] <= 1 and pr["accuracy_ci"]
    paired = pr["paired"]  # the transformer minus the probe, on the same 20 videos
    assert paired["n"] == res["n"] == 20 and "correct" not in pr
    assert paired["difference"] == pytest.approx(res["accuracy"] - pr["accuracy"])
    assert res["per_class_n"] == {"real": 4, "fake": 16} and res["few"] == ["real"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["probe"]["accuracy"] == pr["accuracy"] and saved["macro_accuracy_ci"] == res["macro_accuracy_ci"]
    with pytest.warns(UserWarning, match=unfinished):
        assert "probe" not in evaluate(run, cache.root, probe=False)
    with pytest.warns(UserWarning, match=unfinished):
        evaluate(run, cache.root)
    html = build_report([run], tmp_path / "report.html").read_text()
    assert "probe acc %" in html and "linear probe accuracy %" in html and "Linear probe: logistic regression" in html
    assert "95 % CI" in html and "class=few" in html and format_ci(res["accuracy_ci"]) in html
    assert "paired over the same 20 videos" in html


def test_a_probe_refit_in_place_leaves_no_metrics_of_the_old_one_and_is_readable(tmp_path: Path) -> None:
    import stat

    from saga.explain.probe_runs import run_probe
    from test_train import build_cache

    cache = build_cache(tmp_path / "c", real=12, per_gen=2)
    run_probe(cache.root, tmp_path / "p", level="GEN-L", fraction=1.0, floor=1, split="val")
    assert (tmp_path / "p" / "metrics-val.json").is_file()
    run_probe(cache.root, tmp_path / "p", level="TASK-L", fraction=1.0, floor=1)
    assert sorted(p.name for p in (tmp_path / "p").glob("metrics-*.json")) == ["metrics-test.json"]
    mode = {n: stat.S_IMODE((tmp_path / "p" / n).stat().st_mode) for n in ("probe.safetensors", "config.json")}
    assert mode["probe.safetensors"] == mode["config.json"]  # like every other output (was 0600)


def test_cli_probe_prints_the_labelled_count_per_class(cache: FeatureCache, tmp_path: Path) -> None:
    """As `saga attribute` does: one line, fewest and most labelled classes (QA realdata 2)."""
    from saga.cache.fraction import counts_line

    proc = run_saga("probe", "--cache", str(cache.root), "--level", "GEN-L", "--fraction", "0.5",
                    "--out", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    subset = json.loads((tmp_path / "p" / "labelled.json").read_text())["classes"]
    assert counts_line("GEN-L", subset).startswith("labelled per GEN-L class: ")
    assert counts_line("GEN-L", subset) in proc.stderr.splitlines()
