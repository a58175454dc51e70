"""Progress of the re-encoding commands: `saga robustness` printed one line per perturbation and nothing while it
re-encoded and re-extracted every test video (hours on real data), `saga extract --augment` nothing while it
re-encoded the copies, `saga demo` nothing while it generated its videos. Each pass now has its own labelled
display: a bar on a terminal, plain lines in a log (`robustness crf35 re-encode: 6/6 videos`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import make_video_tree, run_saga
from saga import progress as progress_mod
from saga.cache.manifest import AUGMENTED
from saga.cache.store import FeatureCache
from saga.progress import ProgressEvent
from saga.robustness.copies import make_copies
from saga.robustness.perturb import parse
from test_progress_log import _console
from test_robustness_fixes import scored_run

COUNT = re.compile(r"^(?P<name>[\w. -]+): (?P<done>\d+)/(?P<total>\d+) videos")


def counts(stderr: str, name: str) -> list[tuple[int, int]]:
    """(done, total) of each progress line of the display `name`, in order."""
    found = [COUNT.match(line) for line in stderr.splitlines()]
    return [(int(m["done"]), int(m["total"])) for m in found if m and m["name"] == name]


@pytest.fixture
def plain_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr a pipe, as under `2> robustness.log`: rich would call it a terminal with these set."""
    for name in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)


def test_make_copies_reports_each_source_reused_and_failed_ones_too(tmp_path: Path, tiny_weights: Path) -> None:
    videos, cache, _ = scored_run(tmp_path, tiny_weights)
    records = sorted(FeatureCache.open(cache).ok_records("test"), key=lambda r: r.path)
    (videos / records[0].path).write_bytes(b"garbage, not a video")
    for _ in range(2):  # made, then reused: a resumed pass still counts every source
        events: list[ProgressEvent] = []
        made = list(make_copies(parse("crf35"), records, videos, tmp_path / "copies", lambda line: None,
                                events.append))
        assert len(made) == 5
        assert [(e.kind, e.done, e.total, e.data["failed"]) for e in events] == [
            ("videos", 0, 6, 0), *(("videos", done, 6, 1) for done in range(1, 7))]


def test_saga_robustness_into_a_log_shows_each_perturbations_passes(tmp_path: Path, tiny_weights: Path,
                                                                    plain_stderr: None) -> None:
    videos, cache, run = scored_run(tmp_path, tiny_weights)
    proc = run_saga("robustness", str(run), "--cache", str(cache), "--videos", str(videos), "--out",
                    str(tmp_path / "rb"), "--perturb", "crf35,fps0.5", "--workers", "0", "--device", "cpu", check=True)
    for p in ("crf35", "fps0.5"):
        encoded = counts(proc.stderr, f"robustness {p} re-encode")
        extracted = counts(proc.stderr, f"robustness {p} extract")
        assert encoded[0] == (0, 6) and encoded[-1] == (6, 6), proc.stderr
        assert extracted[0] == (0, 6) and extracted[-1] == (6, 6), proc.stderr
    ends = [line for line in proc.stderr.splitlines() if re.match(r"robustness \S+ extract: 6/6 videos", line)]
    assert len(ends) == 2 and all(re.search(r"frames/s, done in ", line) for line in ends), ends
    order = [m["name"] for m in map(COUNT.match, proc.stderr.splitlines()) if m]
    assert order.index("robustness crf35 extract") < order.index("robustness fps0.5 re-encode")  # pass by pass
    assert "\x1b" not in proc.stderr and "━" not in proc.stderr


def test_saga_extract_augment_into_a_log_shows_the_reencoding(tmp_path: Path, tiny_args: list[str],
                                                              plain_stderr: None) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=2)
    proc = run_saga("extract", "--videos", str(videos), "--out", str(tmp_path / "c"), *tiny_args,
                    "--split", "1,0,0", "--augment", "crf35", check=True)
    train = [r for r in FeatureCache.open(tmp_path / "c").ok_records("train") if not r.path.startswith(AUGMENTED)]
    n = len(train)
    assert n > 0 and counts(proc.stderr, "extract")[-1] == (n, n), proc.stderr  # the originals, as before
    encoded = counts(proc.stderr, "augment crf35 re-encode")
    assert (encoded[0], encoded[-1]) == ((0, n), (n, n)), proc.stderr
    assert counts(proc.stderr, "augment extract")[-1] == (n, n), proc.stderr


@pytest.mark.parametrize("terminal", [False, True])
def test_each_pass_has_its_own_labelled_display(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    from saga.commands.common import pass_progress

    out = _console(monkeypatch, terminal)
    passes = pass_progress("robustness")
    for label, frames in (("crf28 re-encode", False), ("crf28 extract", True)):
        with passes(label, frames=frames) as update:
            for done in range(0, 4):
                update(ProgressEvent("videos", done, 3, data={"frames": 8 * done} if frames else {}))
    text = out.getvalue()
    assert "robustness crf28 re-encode" in text and "robustness crf28 extract" in text
    assert ("━" in text) is terminal
    if not terminal:
        assert counts(text, "robustness crf28 re-encode")[-1] == counts(text, "robustness crf28 extract")[-1] == (3, 3)


def test_the_demo_shows_generating_its_videos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`saga demo` said "videos: generating ..." and then nothing for minutes; its extraction had a bar."""
    import saga.benchmark.synth as synth_mod
    import saga.pipeline.extract as extract_mod
    from saga.commands.explain_cmds import demo
    from saga.errors import SagaError

    def generate(folder: Path, config: object, progress: object) -> Path:
        folder.mkdir(parents=True)
        for done in range(0, 6):
            progress(ProgressEvent("videos", done, 5))
        return folder / "labels.csv"

    def extract(config: object, progress: object) -> None:
        for done in range(0, 4):
            progress(ProgressEvent("videos", done, 3, data={"frames": 8 * done}))
        raise SagaError("stop after the extraction's progress")

    out = _console(monkeypatch, terminal=False)
    monkeypatch.setattr(synth_mod, "generate", generate)
    monkeypatch.setattr(extract_mod, "extract", extract)
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)  # every event a line
    with pytest.raises(SagaError, match="stop after"):
        demo(out=str(tmp_path / "demo"), per_class=1, seed=0, workers=0, device="cpu", ablation=False)
    text = out.getvalue()
    assert counts(text, "synth") == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)], text
    assert counts(text, "extract")[-1] == (3, 3), text
