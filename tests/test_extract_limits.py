"""Phase 1 fixes: the decoding time limits are settings (`--hang-limit`, `--alone-limit`), timed per video, and
hold with `--workers 0` too: a decoder that hangs or crashes there fails that video, not the run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import alarm_guard, make_video_tree, run_saga
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.pipeline import reader
from saga.pipeline.extract import extract
from test_extract import config

BAD = "syn-svd/syn-svd_1.mp4"


def _warned(caught: pytest.WarningsRecorder) -> str:
    return "\n".join(str(w.message) for w in caught)


# --- 1. --workers 0: a hung or crashing decoder fails one video, the pass goes on -----------------------------------

def test_workers_0_a_video_that_hangs_its_decoder_is_a_failed_record_and_the_pass_goes_on(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --workers 0 the decoder ran in the main process: a file that hung it blocked the run for ever (no
    limit applied there). Now it is one child's video: stopped past --hang-limit, decoded alone under
    --alone-limit, then a failed record; the others are extracted."""
    videos = make_video_tree(tmp_path / "v", per_class=2)
    decode = reader.decode_video

    def hang(path: Path, *args: object, **kwargs: object):  # noqa: ANN202
        if str(path).endswith(BAD):
            time.sleep(3600)  # a decoder looping on a crafted file
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(reader, "decode_video", hang)  # the decoding children inherit it
    with alarm_guard(60, "the --workers 0 extraction waited for ever on a hung decoder"), pytest.warns(UserWarning) as seen:
        summary = extract(config(videos, tmp_path / "c", tiny_weights, workers=0, hang_limit=3, alone_limit=3))
    assert [path for path, _ in summary.failures] == [BAD] and summary.ok == 5
    why = summary.failures[0][1]
    assert why.startswith("the decoder's process gave no answer within 3 s (decoding it alone)") and "\n" not in why
    assert f"{BAD}: still decoding after 3 s (--hang-limit): decoding it alone, for at most 3 s (--alone-limit)" in (
        _warned(seen))
    assert not multiprocessing.active_children()  # the stuck children killed and reaped
    assert FeatureCache.open(tmp_path / "c").check_structure()[0] == []


_CRASHING_CLI = """
import faulthandler, os, signal, sys
from saga.pipeline import reader
decode, bad = reader.decode_video, sys.argv[1]
def crash(path, *args, **kwargs):
    if str(path).endswith(bad):
        faulthandler.disable()
        os.kill(os.getpid(), signal.SIGSEGV)  # a decoder segfault
    return decode(path, *args, **kwargs)
reader.decode_video = crash
sys.argv = ["saga", *sys.argv[2:]]
from saga.cli import main
main()
"""


def _cli(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _extract_args(videos: Path, out: Path, weights: Path, workers: int = 0) -> list[str]:
    return ["extract", "--videos", str(videos), "--out", str(out), "--encoder", "saga-tiny-vit", "--pretrained",
            str(weights), "--frames", "8", "--workers", str(workers), "--device", "cpu", "--taxonomy", "synth"]


def test_workers_0_a_decoder_crash_fails_that_video_and_the_pass_goes_on(tmp_path: Path, tiny_weights: Path) -> None:
    """A segfault in the decoder killed `saga extract --workers 0` itself (exit -11, the pass stopped, the other
    videos not extracted, no record of the file). Now its child dies; the video is decoded alone once more,
    crashes again and is a failed record; the others are extracted; exit 1 (some videos failed)."""
    videos = make_video_tree(tmp_path / "v", per_class=2)
    out = tmp_path / "c"
    proc = _cli(_CRASHING_CLI, BAD, *_extract_args(videos, out, tiny_weights))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "6 videos found, 0 already cached, 5 extracted, 1 failed" in proc.stdout
    assert f"{BAD}: its decoder's process died: decoding it alone" in proc.stderr
    assert f"{BAD}: the decoder crashed on this file (decoding it alone: killed by SIGSEGV)" in proc.stderr
    records = {r.path: r for r in FeatureCache.open(out).records()}
    assert len(records) == 6 and not records[BAD].ok and sum(r.ok for r in records.values()) == 5


_HANGING_CLI = """
import sys, time
from saga.pipeline import reader
def hang(path, *args, **kwargs):
    time.sleep(3600)
reader.decode_video = hang
sys.argv = ["saga", *sys.argv[1:]]
from saga.cli import main
main()
"""


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in found.read_text().split()] if found.is_file() else []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decoding_child_does_not_outlive_a_killed_extraction(tmp_path: Path, tiny_weights: Path, workers: int) -> None:
    """A decoding worker stuck in its decoder outlived a SIGKILLed `saga extract`, holding the cache's lock (the
    flock's descriptor is inherited by fork): the rerun was refused, "another saga extract is writing this
    cache", for as long as the decoder hung. It now dies with its parent (the --workers 0 child too)."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc")
    videos = make_video_tree(tmp_path / "v", per_class=1, generators=("real",))
    proc = subprocess.Popen([sys.executable, "-c", _HANGING_CLI, *_extract_args(videos, tmp_path / "c", tiny_weights, workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 90
    while not (children := _children(proc.pid)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert children, "no decoding child started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [c for c in children if _alive(c)]
    for child in left:
        os.kill(child, signal.SIGKILL)
    assert not left, "the decoding child outlived its SIGKILLed parent"


# --- 2. the hang limit is timed per video, from its own start -------------------------------------------------------

def _in_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def test_a_video_is_timed_from_its_own_start_not_from_each_wait(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DataLoader's timeout restarted with every video another worker handed over while one was stuck: here
    the stuck video (2.5 s) never went past a 1 s limit, and in general one could run for many times it. It is
    now timed from when its worker started it: past the limit it is decoded alone (where it is quick)."""
    videos = make_video_tree(tmp_path / "v", per_class=3)
    decode = reader.decode_one

    def slow(path: Path, policy: object, preprocess: object, index: int = 0):  # noqa: ANN202
        if _in_worker():
            time.sleep(2.5 if index == 0 else 0.5)  # the first video slow; the other worker's trickle in
        return decode(path, policy, preprocess, index)

    monkeypatch.setattr(reader, "decode_one", slow)
    with alarm_guard(120, "the extraction did not finish"), pytest.warns(UserWarning) as seen:
        summary = extract(config(videos, tmp_path / "c", tiny_weights, workers=2, hang_limit=1, alone_limit=60))
    assert summary.ok == 9 and summary.failed == 0 and not multiprocessing.active_children()
    first = FeatureCache.open(tmp_path / "c")
    assert len(first.records()) == 9
    todo_first = _first_in_todo(tmp_path / "c", videos)
    assert f"{todo_first}: still decoding after 1 s (--hang-limit)" in _warned(seen)


def _first_in_todo(cache: Path, videos: Path) -> str:
    """The video at todo index 0 (the pass's seeded shuffle)."""
    from saga.cache.manifest import seeded_hash

    paths = sorted(p.relative_to(videos).as_posix() for p in videos.rglob("*.mp4"))
    return (videos / min(paths, key=lambda rel: seeded_hash(0, rel))).as_posix()


# --- 3. stuck videos are decoded alone side by side -----------------------------------------------------------------

def test_stuck_videos_are_decoded_alone_side_by_side(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stuck videos were decoded alone one after the other: N of them took N alone limits (30 min each). Here the
    two videos stuck in the two workers can only decode alone if both lone children run at once (each waits for
    the other's mark): one after the other, the first waited in vain and failed."""
    videos = make_video_tree(tmp_path / "v", per_class=3)
    marks = tmp_path / "marks"
    marks.mkdir()
    decode = reader.decode_one

    def stuck(path: Path, policy: object, preprocess: object, index: int = 0):  # noqa: ANN202
        if index in (0, 1):
            if _in_worker():
                time.sleep(3600)
            (marks / str(index)).touch()
            deadline = time.monotonic() + 15
            while not (marks / str(1 - index)).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not (marks / str(1 - index)).exists():
                time.sleep(3600)
        return decode(path, policy, preprocess, index)

    monkeypatch.setattr(reader, "decode_one", stuck)
    with alarm_guard(120, "the extraction did not finish"), pytest.warns(UserWarning) as seen:
        summary = extract(config(videos, tmp_path / "c", tiny_weights, workers=2, hang_limit=2, alone_limit=30))
    assert summary.failures == [] and summary.ok == 9 and not multiprocessing.active_children()
    assert "for at most 30 s (--alone-limit), before it is recorded as failed" in _warned(seen)


# --- 4. the limits are settings, checked -----------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("hang_limit", 0), ("alone_limit", -5.0), ("hang_limit", float("nan")),
                                           ("alone_limit", float("inf"))])
def test_limits_must_be_positive_seconds(tmp_path: Path, option: str, value: float) -> None:
    cfg = config(tmp_path / "v", tmp_path / "c", tmp_path / "w", **{option: value})
    with pytest.raises(SagaError, match=rf"^--{option.replace('_', '-')} must be a number of seconds > 0, got "):
        cfg.check()


def test_cli_refuses_a_limit_that_is_not_positive_in_one_line(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1, generators=("real",))
    proc = run_saga("extract", "--videos", str(videos), "--out", str(tmp_path / "c"), "--hang-limit", "0")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --hang-limit must be a number of seconds > 0, got 0.0"
    assert not (tmp_path / "c" / "zarr.json").exists()
