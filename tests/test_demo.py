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
    ({"workers": -1}, r"--workers must be >= 0 \(0 decodes in the main process\), got -1"),
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
        (saga.ablate, "run_ablation", lambda *args, **kwargs: calls.append(kwargs)),
    ]:
        monkeypatch.setattr(module, name, stub)
    demo.run_demo(demo.DemoConfig(out=tmp_path / "demo", seed=7, ablation=True), log=lambda line: None)
    assert [call["seeds"] for call in calls] == [(7, 8, 9)]
