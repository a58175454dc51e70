"""The setup steps of `saga predict` (walking the folder, loading the run and the encoder), `saga robustness` (the
run, the cache, the encoder, the clean scores), training (opening the cache, reading its features, building the
model) and `saga cache verify` (reading every feature) showed nothing: minutes of a silent terminal or an empty log
on a large dataset, taken for a hang. They are status lines now, through extract's mechanism (`with_status`):
on stderr, before the command's first record, pass or training line; stdout unchanged."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from saga import progress as progress_mod
from saga.progress import STATUS, ProgressEvent, report_step
from test_progress_log import _console
from test_robustness_fixes import scored_run
from test_train import TINY, build_cache


@pytest.fixture
def every_step_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a log a step gets a line once it lasted STATUS_DELAY_S, and its total once it lasted LOG_INTERVAL_S: 0 here,
    so every step shows, whatever the machine's speed (no timing in the assertions)."""
    monkeypatch.setattr(progress_mod, "STATUS_DELAY_S", 0.0)
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)


def _first(lines: list[str], prefix: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def test_predict_into_a_log_names_each_setup_step_and_stdout_stays_one_record_per_video(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        every_step_a_line: None) -> None:
    from saga.commands.common import OutputFormat
    from saga.commands.predict_cmds import predict

    videos, _, run = scored_run(tmp_path, tiny_weights)
    err = _console(monkeypatch, terminal=False)
    predict(run, [videos], device="cpu", format=OutputFormat.json)
    lines = err.getvalue().splitlines()
    steps = ["predict: importing torch...", f"predict: scanning {videos}: ", f"predict: loading the run {run}...",
             f"predict: loading encoder saga-tiny-vit ({tiny_weights})..."]
    at = [_first(lines, step) for step in steps]
    assert at == sorted(at), lines
    assert f"predict: scanning {videos}: 6 files, done in " in err.getvalue()  # the walk's total
    assert "\x1b" not in err.getvalue()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and all(json.loads(line)["status"] == "ok" for line in out), out  # records alone


def test_robustness_names_its_setup_steps_and_ends_them_when_the_first_pass_opens(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, every_step_a_line: None) -> None:
    from saga.commands.robustness_cmds import robustness

    videos, cache, run = scored_run(tmp_path, tiny_weights)
    err = _console(monkeypatch, terminal=False)
    robustness(run, videos, cache=cache, out=tmp_path / "rb", perturb="crf35", workers=0, device="cpu",
               pretrained=str(tiny_weights))  # the weights named: loaded and checked against the run's, up front
    lines = err.getvalue().splitlines()
    steps = [f"robustness: loading the run {run}...", f"robustness: opening {cache}...",
             f"robustness: loading encoder saga-tiny-vit ({tiny_weights})...",
             "robustness: scoring the 6 clean test videos...",
             "robustness: scoring the 6 clean test videos, done in ",  # ended as the pass opens
             "robustness crf35 re-encode: 0/6 videos"]
    at = [_first(lines, step) for step in steps]
    assert at == sorted(at), lines


def test_a_pass_opening_ends_the_setup_status_and_a_later_step_is_dropped(
        monkeypatch: pytest.MonkeyPatch, every_step_a_line: None) -> None:
    """Two live displays garble a terminal: the status gives way to the pass's, and stays gone."""
    from saga.commands.common import pass_progress, status_progress

    err = _console(monkeypatch, terminal=False)
    with status_progress("robustness") as steps:
        report_step(steps, "loading the run r")
        passes = pass_progress("robustness", steps)
        with passes("crf35 re-encode") as update:
            update(ProgressEvent("videos", 0, 2))
            report_step(steps, "late step")
            update(ProgressEvent("videos", 2, 2))
    lines = err.getvalue().splitlines()
    assert lines[:3] == ["robustness: loading the run r...", "robustness: loading the run r, done in 0 s",
                         "robustness crf35 re-encode: 0/2 videos"], lines
    assert not any("late step" in line for line in lines)


def test_on_a_terminal_the_status_is_a_spinner_gone_before_the_command_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.commands import common

    out = _console(monkeypatch, terminal=True)
    with common.status_progress("predict") as steps:
        report_step(steps, "loading the run r")
    assert "predict: loading the run r..." in out.getvalue()
    with common.err.status("the next display"):  # rich refuses a second live display: the spinner has gone
        pass


def test_training_reports_its_setup_steps_before_its_start_line(tmp_path: Path) -> None:
    from saga.train.stage1 import Stage1Config, train_stage1

    cache = build_cache(tmp_path / "c", real=10, per_gen=3)
    n_train, n_val = len(cache.ok_records("train")), len(cache.ok_records("val"))
    events: list[ProgressEvent] = []
    cfg = Stage1Config(**{**TINY, "epochs": 1, "batch_size": 32, "patience": 0, "stream": False})
    train_stage1(cache.root, tmp_path / "s1", cfg, progress=events.append)
    kinds = [e.kind for e in events]
    steps = [e.message for e in events[:kinds.index("start")]]
    assert steps == [f"opening {cache.root}", "building the model", f"reading the features of {n_train} train videos",
                     "fitting the content basis and window statistics",
                     f"reading the features of {n_val} val videos"], steps
    assert STATUS not in kinds[kinds.index("start"):]  # none once training runs
    reused: list[ProgressEvent] = []
    train_stage1(cache.root, tmp_path / "s1", cfg, progress=reused.append)
    assert [e.kind for e in reused] == [STATUS, STATUS, "reused"]  # a finished run: no features read
    bare: list[ProgressEvent] = []  # θ without a content basis or window statistics fits nothing on the pool
    train_stage1(cache.root, tmp_path / "s1-bare", replace(cfg, content_basis=0, video_stats=0),
                 progress=bare.append)
    assert "fitting the content basis and window statistics" not in [e.message for e in bare]
    assert f"reading the features of {n_val} val videos" in [e.message for e in bare]


def test_stage_2_reports_its_setup_steps_around_its_labelled_line(tmp_path: Path) -> None:
    from saga.train.attribute import AttributeConfig, train_attribution

    cache = build_cache(tmp_path / "c", real=10, per_gen=3)
    events: list[ProgressEvent] = []
    cfg = AttributeConfig(**{**TINY, "level": "TASK-L", "epochs": 1, "batch_size": 32, "patience": 0,
                             "stream": False, "readout": "head", "self_training": False, "loss": "ce", "min_steps": 0})
    train_attribution(cache.root, tmp_path / "a", cfg, progress=events.append)
    kinds = [e.kind for e in events]
    before = [e.message.split(" of ")[0] if e.kind == STATUS else e.kind for e in events[:kinds.index("start")]]
    assert before == [f"opening {cache.root}", "building the model", "labelled", "reading the features",
                      "reading the features"], before


def test_saga_attribute_into_a_log_shows_its_setup_until_training_starts_then_only_its_own_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_step_a_line: None) -> None:
    import saga.train.attribute as attribute_mod
    from saga.commands import common, phase2

    def train(cache: Path, out: Path, cfg: object, progress: object = None, **kw: object) -> Path:
        report_step(progress, "opening c")
        progress(ProgressEvent("labelled", message="labelled per TASK-L class: 6 videos"))
        report_step(progress, "reading the features of 6 labelled train videos")
        progress(ProgressEvent("start", message="training 1 epochs (1 steps) into a"))
        report_step(progress, "mining")  # once training runs a status would be a second display: dropped
        progress(ProgressEvent("done", message="best epoch 1 -> a"))
        return out

    cache = build_cache(tmp_path / "c", real=10, per_gen=3)
    out = io.StringIO()
    shared = Console(file=out, force_terminal=False, force_interactive=False, soft_wrap=True)
    monkeypatch.setattr(common, "err", shared)  # the status line
    monkeypatch.setattr(phase2, "err", shared)  # training's own lines
    monkeypatch.setattr(attribute_mod, "train_attribution", train)
    phase2.attribute(level="TASK-L", cache=cache.root, out=tmp_path / "a", scratch=True, calibrate=False)
    assert out.getvalue().splitlines() == [
        "attribute: opening c...", "labelled per TASK-L class: 6 videos", "attribute: opening c, done in 0 s",
        "attribute: reading the features of 6 labelled train videos...",
        "attribute: reading the features of 6 labelled train videos, done in 0 s",
        "start: training 1 epochs (1 steps) into a", "done: best epoch 1 -> a"]


def test_cache_verify_counts_the_records_it_reads_and_stdout_is_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        every_step_a_line: None) -> None:
    from saga.commands.cache_cmds import verify

    cache = build_cache(tmp_path / "c", real=10, per_gen=3)
    events: list[ProgressEvent] = []
    assert cache.verify(events.append) == []
    n = len(cache.ok_records())
    assert {e.kind for e in events} == {STATUS} and events[-1].done == events[-1].total == n
    assert len(events) <= n // progress_mod.REPORT_EVERY + 2  # not one event per record
    err = _console(monkeypatch, terminal=False)
    verify(cache.root)
    assert f"cache verify: verifying {cache.root}: {n:,}/{n:,} records, done in " in err.getvalue()
    assert capsys.readouterr().out == f"{cache.root}: all {n} records match their checksums\n"
