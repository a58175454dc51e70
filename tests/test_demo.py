"""`saga demo` edges that need no full demo run (`make demo` runs it end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_demo_too_small_for_a_tsne_skips_it_with_a_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`saga demo --per-class 1` trained every level, then stopped at the t-SNE ("only 1 test videos")."""
    import saga.explain.tsne as tsne
    from saga import demo
    from saga.errors import SagaError

    def too_few(*args: object, **kwargs: object) -> None:
        raise SagaError("cache: only 1 test videos; t-SNE needs at least 5")

    monkeypatch.setattr(tsne, "run_tsne", too_few)
    lines: list[str] = []
    demo._tsne_or_skip(tmp_path / "run", tmp_path / "cache", "GEN-L", "cpu", lines.append)
    assert lines == ["GEN-L: t-SNE skipped (cache: only 1 test videos; t-SNE needs at least 5)"]


@pytest.mark.parametrize("change,message", [
    ({"device": "bogus"}, "--device bogus: unknown device"),
    ({"workers": -1}, r"--workers must be >= 0 \(0: one child process decodes one video at a time\), got -1"),
    ({"seed": -3}, "--seed must be >= 0, got -3"),
])
def test_bad_options_are_one_line_before_any_video(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  change: dict, message: str) -> None:
    """A bad --device or --workers used to be reported only after the whole benchmark was rendered."""
    import saga.benchmark.synth as synth
    from saga.demo import DemoConfig, run_demo
    from saga.errors import SagaError

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("videos generated before the options were checked")

    monkeypatch.setattr(synth, "generate", no_work)
    lines: list[str] = []
    with pytest.raises(SagaError, match=message):
        run_demo(DemoConfig(out=tmp_path / "demo", per_class=1, **change), log=lines.append)
    assert lines == [] and not (tmp_path / "demo").exists()


def test_the_ablation_follows_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`saga demo --seed 7 --ablation` ran the ablation on seeds 0, 1, 2 whatever --seed said."""
    import saga.ablate
    import saga.explain.metrics
    import saga.explain.report
    import saga.explain.tsig
    import saga.openworld.api
    import saga.train.attribute
    import saga.train.stage1
    from saga import demo

    def returns(value: object):  # noqa: ANN202 - a stub for one pipeline step
        return lambda *args, **kwargs: value

    calls: list[dict] = []
    for module, name, stub in [
        (demo, "_synth", returns(tmp_path / "videos")), (demo, "_extract", returns(tmp_path / "cache")),
        (demo, "_tsne_or_skip", returns(None)), (saga.train.stage1, "train_stage1", returns(tmp_path / "stage1")),
        (saga.train.attribute, "train_attribution", returns(tmp_path / "run")),
        (saga.openworld.api, "calibrate_run", returns(None)), (saga.explain.tsig, "run_tsigs", returns(None)),
        (saga.explain.metrics, "evaluate", returns({"accuracy": 1.0, "macro_accuracy": 1.0})),
        (saga.explain.report, "build_report", returns(tmp_path / "report.html")),
        (saga.ablate, "run_ablation", lambda *args, **kwargs: calls.append(kwargs) or {"failed": []}),
    ]:
        monkeypatch.setattr(module, name, stub)
    demo.run_demo(demo.DemoConfig(out=tmp_path / "demo", seed=7, ablation=True), log=lambda line: None)
    assert [call["seeds"] for call in calls] == [(7, 8, 9)]


def test_demo_ablation_with_a_failed_cell_says_so_and_exits_1_after_the_report(monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path) -> None:
    """`saga demo --ablation` ignored `failed` of the grid: a failed cell left the demo at exit 0 without a word
    (`saga ablate` on the same grid ends with one line and exit 1)."""
    import json
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import saga.ablate
    import saga.explain.metrics
    import saga.explain.report
    import saga.explain.tsig
    import saga.openworld.api
    import saga.train.attribute
    import saga.train.stage1
    from saga import demo
    from saga.cli import app

    def returns(value: object):  # noqa: ANN202 - a stub for one pipeline step
        return lambda *args, **kwargs: value

    def cell(_cache: Path, run: Path, *args: object, **kwargs: object) -> dict:
        run.mkdir(parents=True, exist_ok=True)  # as training makes the run folder (and so the grid's)
        if run.name in ("2-stage_ce_seed1", "1-stage_ce+hnm_seed2"):
            raise RuntimeError(f"CUDA error in {run.name}")
        return {"accuracy": 0.5, "macro_accuracy": 0.5, "per_class": {"a": 0.5}, "n": 4, "per_class_n": {"a": 4},
                "probe": {"skipped": "stub"}}

    reports: list[Path] = []
    level = {"accuracy": 1.0, "macro_accuracy": 1.0, "classes": ["a", "b"], "n": 4}
    for module, name, stub in [
        (demo, "_synth", returns(tmp_path / "videos")), (demo, "_extract", returns(tmp_path / "cache")),
        (demo, "_tsne_or_skip", returns(None)), (saga.train.stage1, "train_stage1", returns(tmp_path / "stage1")),
        (saga.train.attribute, "train_attribution", returns(tmp_path / "run")),
        (saga.openworld.api, "calibrate_run", returns(None)), (saga.explain.tsig, "run_tsigs", returns(None)),
        (saga.explain.metrics, "evaluate", returns(level)),
        (saga.explain.report, "build_report", lambda runs, out, ablation, **kwargs: reports.append(out) or out),
        (saga.ablate, "check_before_cells",
         lambda _cache, _stage1, base, _given: (base, SimpleNamespace(path="stage1", origin={}))),
        (saga.ablate, "_current_cache", returns(None)), (saga.ablate, "_kept_on_changed_cache", returns(False)),
        (saga.ablate, "_run_cell", cell),
    ]:
        monkeypatch.setattr(module, name, stub)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--ablation"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert reports == [out / "report.html"]  # the report (with the table of the other cells) is written first
    failed = json.loads((out / "runs" / "ablation" / "ablation.json").read_text())["failed"]
    assert [f["run"] for f in failed] == ["1-stage_ce+hnm_seed2", "2-stage_ce_seed1"]
    flat = "".join(result.output.split())
    assert "".join(("error: 2 cell run(s) failed (first: 1-stage_ce+hnm_seed2: RuntimeError: CUDA error in "
                    "1-stage_ce+hnm_seed2); the table has the others; rerun the same command").split()) in flat
    assert "alsofailed:2-stage_ce_seed1:RuntimeError:CUDAerrorin2-stage_ce_seed1" in flat
    assert flat.index("report:") < flat.index("error:2cellrun(s)failed")
