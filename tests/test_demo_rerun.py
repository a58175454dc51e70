"""A rerun of `saga demo` on a finished folder reuses every current product and redoes only what changed.

Why: a rerun calibrated, evaluated (with the probe) and drew the T-Sigs and t-SNE of every run again (minutes on
2 cores for nothing changed), and said nothing of what it reused. The steps run for real on a tiny cache and
tiny finished runs (test_explain's); only the video synthesis, the extraction and the training are stubbed
(their own reuse is the run folder's: config + done.json).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache, PartWriter, next_part_name
from saga.progress import ProgressEvent
from saga.taxonomy import LEVELS, Taxonomy
from test_explain import D, T, W, make_cache, make_run

STEPS = [("saga.openworld.api", "calibrate_run"), ("saga.explain.metrics", "evaluate"),
         ("saga.explain.tsig", "run_tsigs"), ("saga.explain.tsne", "run_tsne")]


def stub_steps(monkeypatch: pytest.MonkeyPatch, out: Path) -> dict[str, list[Path]]:
    """The demo on `out` (its cache and finished runs): synthesis, extraction and training stubbed, the rest
    counted as it runs for real; the calls made."""
    import importlib

    import saga.train.attribute
    import saga.train.stage1
    from saga import demo

    def trained(_cache: Path, run: Path, *args: object, progress: Callable | None = None, **kwargs: object) -> Path:
        if progress:  # as `open_run` says it: the run folder holds this finished run
            progress(ProgressEvent("reused", message=f"{run} already holds this finished run"))
        return Path(run)

    calls: dict[str, list[Path]] = {name: [] for _, name in STEPS}
    for module_name, name in STEPS:
        module = importlib.import_module(module_name)
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda run, *a, _real=real, _name=name, **k:
                            calls[_name].append(Path(run)) or _real(run, *a, **k))
    for module, name, stub in [(demo, "_synth", lambda *a: out / "videos"), (demo, "_extract", lambda *a: out / "cache"),
                               (saga.train.stage1, "train_stage1", trained),
                               (saga.train.attribute, "train_attribution", trained)]:
        monkeypatch.setattr(module, name, stub)
    return calls


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished demo (made once: its first run costs what the reruns must not), with that run's calls."""
    out = tmp_path_factory.mktemp("finished") / "demo"
    cache = make_cache(out / "cache")
    for name, level in [("stage1", "BIN-L"), *((level.lower(), level) for level in LEVELS)]:
        make_run(out / "runs" / name, cache, level=level)
    with pytest.MonkeyPatch.context() as monkeypatch:
        world = {"out": out, "calls": stub_steps(monkeypatch, out)}
        world["lines"] = run_demo(world)
        world["first"] = called(world)
    return world


@pytest.fixture
def demo_world(finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A copy of the finished demo (mtimes kept), its steps counted afresh."""
    out = tmp_path / "demo"
    shutil.copytree(finished["out"], out)
    runs = {p.name: p for p in sorted((out / "runs").iterdir())}
    return {"out": out, "cache": FeatureCache.open(out / "cache"), "runs": runs, "calls": stub_steps(monkeypatch, out)}


def run_demo(world: dict[str, Any]) -> list[str]:
    """One `saga demo` on the world; its lines. The counted calls start from none."""
    from saga.demo import DemoConfig, run_demo as demo

    for made in world["calls"].values():
        made.clear()
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny cache's split warnings are not what this test is about
        demo(DemoConfig(out=world["out"], per_class=1), log=lines.append)
    return lines


def products(run: Path) -> dict[str, int]:
    """Each product file of a run and its mtime (ns): a rewritten file has another."""
    names = ["calibration.json", "metrics-test.json", "tsig.npz", "tsig_maps.png", "tsne_GEN-L.png"]
    return {name: (run / name).stat().st_mtime_ns for name in names if (run / name).is_file()}


def called(world: dict[str, Any]) -> dict[str, int]:
    return {name: len(runs) for name, runs in world["calls"].items()}


def test_a_rerun_of_a_finished_demo_redoes_nothing_and_says_what_it_reused(finished: dict[str, Any],
                                                                          demo_world: dict[str, Any]) -> None:
    assert finished["first"] == {"calibrate_run": 5, "evaluate": 6, "run_tsigs": 5, "run_tsne": 5}
    before = {name: products(run) for name, run in demo_world["runs"].items()}
    assert all(len(files) == 5 for name, files in before.items() if name != "stage1")
    report = (demo_world["out"] / "report.html").stat()

    again = run_demo(demo_world)
    assert called(demo_world) == {"calibrate_run": 0, "evaluate": 0, "run_tsigs": 0, "run_tsne": 0}
    assert {name: products(run) for name, run in demo_world["runs"].items()} == before
    assert any(line.startswith("made: ") and "GEN-L T-Sigs" in line for line in finished["lines"])
    reused = next(line for line in again if line.startswith("reused: "))
    assert "GEN-L evaluation" in reused and "stage-1 evaluation" in reused and "SD-L t-SNE" in reused
    assert not any(line.startswith("made: ") for line in again) and reused.endswith(", report")
    assert (demo_world["out"] / "report.html").stat().st_mtime_ns == report.st_mtime_ns


def test_a_removed_product_is_redone_alone(demo_world: dict[str, Any]) -> None:
    runs = demo_world["runs"]
    (demo_world["out"] / "report.html").unlink()
    (runs["sd-l"] / "tsig_maps.png").unlink()
    (runs["team-l"] / "calibration.json").unlink()
    (runs["gen-l"] / "metrics-test.json").unlink()
    (runs["task-l"] / "tsne_GEN-L.png").unlink()
    shutil.copy2(runs["gen-l"] / "tsig_profiles.png", runs["team-l"])  # a figure of other weights (a cut-short tsig)
    prov = json.loads((runs["stage1"] / "provenance.json").read_text())
    prov["versions"]["saga_source"] = "0" * 16  # trained by an older saga: reused, and said so
    (runs["stage1"] / "provenance.json").write_text(json.dumps(prov))
    lines = run_demo(demo_world)
    calls = demo_world["calls"]
    assert (calls["run_tsigs"], calls["calibrate_run"]) == ([runs["sd-l"], runs["team-l"]], [runs["team-l"]])
    assert (calls["evaluate"], calls["run_tsne"]) == ([runs["gen-l"]], [runs["task-l"]])
    assert (demo_world["out"] / "report.html").is_file()
    assert "made: TASK-L t-SNE, SD-L T-Sigs, TEAM-L calibration, TEAM-L T-Sigs, GEN-L evaluation, report" in lines
    assert lines[-1].startswith("reused runs trained by other saga code") and lines[-1].endswith(str(runs["stage1"]))


def test_a_retrained_run_or_a_grown_cache_is_never_shown_from_stale_files(demo_world: dict[str, Any]) -> None:
    """Other weights in one run redo its products alone; videos added to the cache (same cache id: an appending
    extract keeps it) redo every product, their figures included."""
    from saga.runs import save_weights
    from saga.runs.loading import load_model

    bin_run = demo_world["runs"]["bin-l"]
    model, _ = load_model(bin_run)
    for param in model.parameters():
        param.data.add_(0.5)
    save_weights(bin_run / "model.safetensors", model, epoch=3, metric=0.7)
    run_demo(demo_world)
    assert {name: set(runs) for name, runs in demo_world["calls"].items()} == {
        name: {bin_run} for name in ("calibrate_run", "evaluate", "run_tsigs", "run_tsne")}

    cache: FeatureCache = demo_world["cache"]
    writer = PartWriter(cache, next_part_name(cache), capacity=W)
    gen = "syn-svd"
    writer.add(VideoRecord(path=f"{gen}/added.mp4", size=1, mtime_ns=9, status="ok", generator=gen,
                           labels=Taxonomy.load("synth").labels(gen), split="test"),
               np.ones((W, T, D), np.float16), np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    assert FeatureCache.open(cache.root).cache_id == cache.cache_id
    run_demo(demo_world)
    assert called(demo_world) == {"calibrate_run": 0, "evaluate": 6, "run_tsigs": 5, "run_tsne": 5}
