"""The setup steps before `saga extract`'s bar (scanning the videos folder, loading the encoder, checking the
cache) showed nothing: on a large dataset a user saw a silent terminal, or an empty log, for minutes and took
it for a hang. Each step is now a status line on stderr (a spinner on a terminal, plain rate-limited lines in a
log, none for a quick step there), and stdout stays the summary alone."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from conftest import make_video_tree
from saga import progress as progress_mod
from saga.progress import STATUS, ProgressEvent, StatusLog, StepCount, report_step
from test_progress_log import LINE, Clock, _console


def test_extract_into_a_log_names_each_setup_step_in_order_and_stdout_stays_json(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from saga.commands.common import OutputFormat
    from saga.commands.phase1 import extract

    err = _console(monkeypatch, terminal=False)
    monkeypatch.setattr(progress_mod, "STATUS_DELAY_S", 0.0)  # every step a line, however quick
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)  # and its total
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cache = tmp_path / "c"
    extract(videos=videos, out=cache, encoder="saga-tiny-vit", pretrained=str(tiny_weights), frames=8, workers=0,
            device="cpu", taxonomy="synth", format=OutputFormat.json)
    lines = err.getvalue().splitlines()
    steps = ["extract: importing torch...", f"extract: scanning {videos}: ",
             f"extract: loading encoder saga-tiny-vit ({tiny_weights})...", f"extract: checking {cache}: 0 part(s): "]
    at = [next(i for i, line in enumerate(lines) if line.startswith(step)) for step in steps]
    first_count = next(i for i, line in enumerate(lines) if LINE.match(line))
    assert at == sorted(at) and at[-1] < first_count, lines
    assert f"extract: scanning {videos}: 3 files, done in " in err.getvalue()  # the scan's total
    assert "\x1b" not in err.getvalue()
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and json.loads(out)["found"] == 3, out  # the summary, nothing else


def test_a_long_step_in_a_log_gets_a_line_after_the_delay_then_one_per_interval_then_its_total() -> None:
    clock, lines = Clock(), []
    log = StatusLog("extract", lines.append, clock=clock)
    scan = StepCount(log, "scanning v")
    for _ in range(100):  # 1,000 files a second for 100 s: 100 events, a handful of lines
        clock.now += 1
        scan.add(1000)
    scan.end()
    report_step(log, "loading encoder X (webli)")  # the scan is over: its total, once
    clock.now += 9
    log.poll()  # the encoder reports nothing while it loads: the caller's timer asks
    clock.now += 1
    log.poll()
    clock.now += 55
    log.poll()  # no count moves: no second line
    log.end()
    assert lines == ["extract: scanning v: 10,000 files", "extract: scanning v: 40,000 files",
                     "extract: scanning v: 70,000 files", "extract: scanning v: 100,000 files",
                     "extract: scanning v: 100,000 files, done in 1 min 40 s",
                     "extract: loading encoder X (webli)...", "extract: loading encoder X (webli), done in 1 min 5 s"]


def test_quick_steps_leave_a_log_untouched_and_an_error_says_no_done() -> None:
    clock, lines = Clock(), []
    log = StatusLog("extract", lines.append, clock=clock)
    report_step(log, "importing torch")
    clock.now += 2
    StepCount(log, "scanning v").end()
    clock.now += 9.9
    report_step(log, "loading encoder X")
    log.end()
    assert lines == []  # a quick run's log is as before: a setup error stays one line
    report_step(log, "loading encoder Y")
    clock.now += 12
    log.poll()
    report_step(log, "checking c")
    log.end()  # a step of 12 s: its line says enough, no "done in" line
    report_step(log, "loading encoder Z")
    clock.now += 40
    log.poll()
    log.stop()  # the load failed: no "done"
    assert lines == ["extract: loading encoder Y...", "extract: loading encoder Z..."]


def test_the_scan_counts_every_file_in_a_few_events(tmp_path: Path) -> None:
    """Not one event per file (100,000 of them on a large dataset), and the last one is the total."""
    from saga.pipeline.inputs import find_inputs
    from saga.taxonomy import Taxonomy

    for gen in ("real", "syn-svd"):
        (tmp_path / gen).mkdir()
        for i in range(300):
            (tmp_path / gen / (f"{i}.mp4" if i < 3 else f"{i}.json")).write_bytes(b"")
    events: list[ProgressEvent] = []
    inputs = find_inputs(tmp_path, None, Taxonomy.load("synth"), progress=events.append)
    assert len(inputs.items) == 6 and {e.kind for e in events} == {STATUS}
    assert {e.message for e in events} == {f"scanning {tmp_path}"}
    counts = [e.done for e in events]
    assert counts == sorted(counts) and counts[-1] == 600 and len(events) <= 600 // progress_mod.REPORT_EVERY + 2


def test_a_step_that_reports_nothing_gets_its_log_line_from_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the encoder is one blocking call: the line must come while it runs, not after."""
    from io import StringIO

    from rich.console import Console

    from saga.commands import status

    monkeypatch.setattr(status, "POLL_S", 0.01)
    clock, lines, written = Clock(), [], threading.Event()
    display = status.Lines("extract", Console(file=StringIO()))
    display.log.clock = clock

    def write(line: str) -> None:
        lines.append(line)
        written.set()

    display.log.write = write
    report_step(display, "loading encoder X")
    assert lines == []  # not yet: quick steps get none
    clock.now += 40  # the load goes on (the command's thread is blocked in it)
    assert written.wait(timeout=60), "the timer wrote no line"
    display.end()
    assert lines == ["extract: loading encoder X...", "extract: loading encoder X, done in 40 s"]
    assert display.timer is None


def test_on_a_terminal_the_status_is_a_spinner_the_bar_replaces(monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.commands.common import extract_progress

    out = _console(monkeypatch, terminal=True)
    with extract_progress() as update:
        report_step(update, "loading encoder X")
        for done in range(0, 4):
            update(ProgressEvent("videos", done, 3, data={"frames": 8 * done}))
        report_step(update, "late step")  # once the bar is up, a status would be a second live display: dropped
    text = out.getvalue()
    assert "extract: loading encoder X..." in text and "━" in text
    assert text.index("loading encoder X") < text.index("━") and "late step" not in text
    assert re.search(r"3/3", text)


def test_a_labels_csv_scan_counts_its_rows_then_the_folder_it_checks_for_left_out_videos(tmp_path: Path) -> None:
    from saga.pipeline.inputs import find_inputs
    from saga.taxonomy import Taxonomy

    (tmp_path / "real").mkdir()
    for i in range(3):
        (tmp_path / "real" / f"{i}.mp4").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("path,generator\n" + "".join(f"real/{i}.mp4,real\n" for i in range(3)))
    events: list[ProgressEvent] = []
    find_inputs(tmp_path, None, Taxonomy.load("synth"), progress=events.append)
    last = {e.message: e.done for e in events}  # in order of each step's first event
    assert list(last.items()) == [(f"reading {tmp_path / 'labels.csv'}", 3),
                                  (f"scanning {tmp_path} for videos labels.csv leaves out", 3)]
