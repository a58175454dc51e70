"""Fixes in explain: the probe on sources (no head start for many generators, C by the summed
classes), the report on run files of another JSON shape, T-Sig rows with CLS pooling, a failed
probe refit, and the macro interval's wording (CPU, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import test_probe as tp
from saga.cache.fraction import labelled_subset
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.probe import Probe, cache_features, evaluate_probe, train_and_evaluate
from saga.explain.probe_runs import run_probe
from saga.explain.tsig import video_signature


def _noise(gen: str, rng: np.random.Generator, frames: int = tp.T) -> np.ndarray:
    return rng.normal(size=(frames, tp.D))  # nothing tells a generator apart


@pytest.fixture(scope="module")
def noise_cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tp, "clip", _noise)
        return tp.make_cache(tmp_path_factory.mktemp("noise") / "cache")


@pytest.fixture(scope="module")
def signal_cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    return tp.make_cache(tmp_path_factory.mktemp("signal") / "cache")


# -- the probe on sources -------------------------------------------------------------------------
def test_a_probe_on_sources_gives_a_class_of_many_generators_no_head_start(noise_cache: FeatureCache,
                                                                           tmp_path: Path) -> None:
    """BIN-L: 'fake' has 4 labelled generators, 'real' 1; on features without signal neither may be favoured
    (summing the generators' probabilities gave 'fake' a 4:1 prior: every test video was called fake)."""
    run_probe(noise_cache.root, tmp_path / "p", level="BIN-L", fraction=1.0, floor=1)
    probe = Probe.load(tmp_path / "p")
    assert probe.subclass_of == [0, 1, 1, 1, 1]
    p = probe.predict_proba(cache_features(noise_cache, noise_cache.ok_records("test")))
    assert abs(float(p[:, 0].mean()) - 0.5) < 0.1  # was 0.2


def test_a_probe_on_sources_picks_c_by_the_summed_classes_on_val(signal_cache: FeatureCache) -> None:
    """The score C was chosen by is the class decision's macro accuracy on the level's val videos."""
    subset = labelled_subset(signal_cache.ok_records("train"), "TASK-L", signal_cache.taxonomy, 1.0, 2, 0)
    probe, metrics = train_and_evaluate(signal_cache, "TASK-L", subset, None, sources=True)
    choice = metrics["selection"]
    assert probe.sources and choice["selected_by"].startswith("val macro accuracy")
    val = evaluate_probe(probe, signal_cache, "TASK-L", "val")
    assert choice["val_macro_accuracy"][repr(probe.C)] == pytest.approx(val["macro_accuracy"])
    assert metrics["n_val"] == val["n"]


def test_a_failed_probe_refit_keeps_the_previous_probes_metrics(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tp, "SPLITS", ["train"] * 8 + ["test"] * 4)  # no val split
        cache = tp.make_cache(tmp_path / "cache")
    out = tmp_path / "p"
    run_probe(cache.root, out, level="TEAM-L", fraction=1.0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SagaError, match="no 'val' video"):
        run_probe(cache.root, out, level="TEAM-L", fraction=1.0, split="val")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # metrics-test.json was deleted


# -- the report -------------------------------------------------------------------------------------
def _run_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    config = {"stage": 1, "level": "BIN-L", "classes": ["real", "fake"]}
    (root / "config.json").write_text(json.dumps(config))
    for name, text in files.items():
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("files", [
    {"metrics.json": "[1, 2]", "metrics-test.json": "[1, 2]"},
    {"metrics-val.json": "[1]", "metrics-test.json": json.dumps({"split": "test", "classes": ["real", "fake"]})},
    {"provenance.json": "[1]"},
    {"metrics.jsonl": '3\n"x"\n{"epoch": 1, "loss": 0.5}\n'},
    {"config.json": json.dumps({"stage": 1, "level": "BIN-L", "classes": None})},
    {"config.json": "[1]"},
    {"metrics-test.json": json.dumps({"classes": None, "per_class": None, "confusion": None, "split": "test"})},
], ids=["metrics-list", "val-list", "provenance-list", "jsonl-scalars", "classes-null", "config-list",
        "metrics-nulls"])
def test_the_report_treats_a_run_file_of_another_json_shape_as_missing(tmp_path: Path, files: dict[str, str]) -> None:
    from saga.explain.report import build_report

    run = _run_folder(tmp_path / "run", files)
    html = build_report([run], tmp_path / "report.html").read_text()
    assert "SAGA report" in html and "Traceback" not in html


def test_the_report_names_both_parts_of_the_macro_interval() -> None:
    from saga.explain import metrics
    from saga.explain.report import per_class_table

    note = per_class_table({"classes": []})
    assert "Agresti-Coull" in note and "wider of" in note
    assert "Agresti-Coull" in (metrics.__doc__ or "")


# -- T-Sigs -------------------------------------------------------------------------------------------
def test_tsig_rows_are_distributions_over_the_frames_with_cls_pooling() -> None:
    """The model cuts the CLS column out of its maps: rows of real frames are renormalised over them."""
    import torch

    from saga.model import ModelConfig, VideoTransformer

    cut = np.array([[0.4, 0.2, 0.2], [0.1, 0.5, 0.2], [0.3, 0.3, 0.2]])  # 0.2 of each row went to CLS
    sig = video_signature(cut)
    np.testing.assert_allclose(sig["map"].sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(sig["map"], cut / 0.8, atol=1e-6)
    padded = video_signature(np.pad(cut, ((0, 1), (0, 1)), constant_values=5.0), np.array([1, 1, 1, 0], bool))
    np.testing.assert_allclose(padded["map"][:3, :3], cut / 0.8, atol=1e-6)
    assert padded["map"][3].sum() == 0 and padded["map"][:, 3].sum() == 0

    torch.manual_seed(1)
    model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=2, heads=2, max_frames=6, n_classes=2,
                                         dropout=0.0, pool="cls")).eval()
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        attn = model(torch.randn(2, 6, 8), mask, return_attn=True).attn[-2].mean(1).numpy()
    assert (attn[0].sum(1) < 0.999).all()  # the raw rows do not sum to 1
    for a, m in zip(attn, mask.numpy()):
        rows = video_signature(a, m)["map"].sum(1)
        np.testing.assert_allclose(rows[m], 1.0, atol=1e-5)
