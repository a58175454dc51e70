"""Progress where stderr is not a terminal (`saga extract ... 2> extract.log`, nohup, a batch job, CI): a rich
bar printed nothing there until the whole run ended, so a multi-hour extraction looked like a hang. Now a
plain line comes at the start, the first item, at most every LOG_INTERVAL_S seconds, and at the end."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from conftest import make_video_tree, run_saga
from saga import progress as progress_mod
from saga.progress import ProgressEvent, ProgressLog

LINE = re.compile(r"^(extract|synth): (\d+)/(\d+) videos")


class Clock:
    """A clock the test moves by hand: no sleeps, no timed assertions."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_at_the_start_first_item_every_interval_and_the_end() -> None:
    clock, lines = Clock(), []
    log = ProgressLog("extract", lines.append, clock=clock)
    for done in range(0, 101):  # one video a second for 100 s, against the default 30 s interval
        log(ProgressEvent("videos", done, 100, data={"frames": 8 * done}))
        clock.now += 1
    counts = [int(LINE.match(line).group(2)) for line in lines]
    assert counts == [0, 1, 31, 61, 91, 100]  # not one line per video
    assert lines[0] == "extract: 0/100 videos"
    assert lines[2] == "extract: 31/100 videos, 1.0 videos/s, 8 frames/s, about 1 min 9 s left"
    assert lines[-1] == "extract: 100/100 videos, 1.0 videos/s, 8 frames/s, done in 1 min 40 s"
    log(ProgressEvent("videos", 100, 100))  # a repeated end (the pass's last report) adds nothing
    log.close()
    assert len(lines) == 6


def test_the_interval_is_a_module_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 5.0)
    clock, lines = Clock(), []
    log = ProgressLog("synth", lines.append, clock=clock)
    for done in range(1, 21):
        log(ProgressEvent("videos", done, 20))
        clock.now += 1
    assert [int(LINE.match(line).group(2)) for line in lines] == [1, 2, 7, 12, 17, 20]


def test_failures_slow_rates_and_a_resumed_count() -> None:
    clock, lines = Clock(), []
    log = ProgressLog("extract", lines.append, clock=clock)
    log(ProgressEvent("videos", 40, 1100, data={"failed": 0}))  # the rate counts this run's videos only
    clock.now += 120
    log(ProgressEvent("videos", 42, 1100, data={"failed": 3}))
    assert lines == ["extract: 40/1100 videos", "extract: 42/1100 videos (3 failed), 1.0 videos/min, "
                     "about 17 h 38 min left"]


def test_an_interrupted_pass_ends_with_its_last_count() -> None:
    """As a bar shows its last state on Ctrl-C, the log gets the count reached since the last line."""
    clock, lines = Clock(), []
    log = ProgressLog("extract", lines.append, clock=clock)
    for done in range(0, 6):
        log(ProgressEvent("videos", done, 50))
        clock.now += 1
    log.close()
    assert [int(LINE.match(line).group(2)) for line in lines] == [0, 1, 5]
    log.close()  # nothing new since: no second line
    assert len(lines) == 3


def _console(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> io.StringIO:
    from saga.commands import common

    out = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=out, force_terminal=terminal, force_interactive=terminal,
                                               soft_wrap=True))
    return out


@pytest.mark.parametrize("terminal", [False, True])
def test_the_cli_draws_a_bar_on_a_terminal_and_lines_in_a_log(monkeypatch: pytest.MonkeyPatch,
                                                              terminal: bool) -> None:
    from saga.commands.common import extract_progress

    out = _console(monkeypatch, terminal)
    with extract_progress() as update:
        for done in range(0, 4):
            update(ProgressEvent("videos", done, 3, data={"frames": 8 * done}))
    text = out.getvalue()
    assert ("━" in text) is terminal  # the interactive bar as before
    assert ("extract: 0/3 videos\n" in text) is not terminal and ("\x1b" in text) is terminal


def test_synth_writes_progress_lines_to_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import saga.benchmark.synth as synth_mod
    from saga.commands.phase1 import synth

    def generate(folder: Path, config: object, progress: object) -> Path:
        for done in range(1, 6):
            progress(ProgressEvent("videos", done, 5))
        return folder / "labels.csv"

    out = _console(monkeypatch, terminal=False)
    monkeypatch.setattr(synth_mod, "generate", generate)
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)  # every event a line
    synth(out=str(tmp_path / "b"), per_class=1, real=1, seed=0, workers=1)
    counts = [LINE.match(line).group(2) for line in out.getvalue().splitlines()]
    assert counts == ["1", "2", "3", "4", "5"]


def test_saga_extract_into_a_log_shows_progress_lines(tmp_path: Path, tiny_args: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end, stderr a pipe as under `2> extract.log`: the lines say how far the pass is, with failures."""
    for name in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE"):  # rich would call a pipe a terminal
        monkeypatch.delenv(name, raising=False)
    videos = make_video_tree(tmp_path / "v", per_class=2)
    (videos / "real" / "empty.mp4").write_bytes(b"")
    proc = run_saga("extract", "--videos", str(videos), "--out", str(tmp_path / "c"), *tiny_args,
                    "--batch-size", "8")
    assert proc.returncode == 1, proc.stderr  # one video failed
    lines = [line for line in proc.stderr.splitlines() if LINE.match(line)]
    assert lines[0] == "extract: 0/7 videos" and len(lines) >= 2, proc.stderr
    assert re.fullmatch(r"extract: 7/7 videos \(1 failed\), [\d.]+ videos/(s|min), \d+ frames/s, done in .+",
                        lines[-1]), lines
    assert "\x1b" not in proc.stderr and "━" not in proc.stderr


def test_synth_into_a_log_starts_with_a_zero_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like extract's `extract: 0/N videos`: the first line came only once the first clip was written (`synth: 1/N`),
    so a log showed nothing while the real sources were decoded and the first clip rendered."""
    import saga.benchmark.synth as synth_mod
    from saga.commands.phase1 import synth

    def make(job: tuple) -> str:  # a stand-in clip: the real rendering takes 20 s here
        _, _, cls, index, folder = job
        path = folder / synth_mod.video_path(cls, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"clip")
        return synth_mod.video_path(cls, index)

    monkeypatch.setattr(synth_mod, "_make", make)
    monkeypatch.setattr(synth_mod, "real_sources", dict)
    out = _console(monkeypatch, terminal=False)
    synth(out=str(tmp_path / "b"), per_class=1, real=1, seed=0, workers=1)
    lines = [line for line in out.getvalue().splitlines() if LINE.match(line)]
    assert lines[0] == "synth: 0/20 videos" and LINE.match(lines[1]).group(2) == "1"
    assert LINE.match(lines[-1]).group(2) == "20"
