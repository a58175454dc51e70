"""Phase 1 fix: a file that hangs its decoder in a DataLoader worker (rather than crashing it) no longer blocks the
extraction for ever: past `HANG_LIMIT_S` without a next video the stuck workers are killed, their videos decoded
alone (under `ALONE_LIMIT_S`) and the pass goes on with the others in fresh workers."""

from __future__ import annotations

import multiprocessing
import re
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import alarm_guard, make_video_tree
from saga.cache.store import FeatureCache
from saga.pipeline import reader
from saga.pipeline.extract import extract
from test_extract import config, features_by_path

BAD = "syn-svd/syn-svd_1.mp4"
STILL_DECODING = re.escape(BAD) + r": still decoding after 3 s \(--hang-limit\): decoding it alone, for at most 3 s"


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """The old code waited for ever on the hung worker: fail after 60 s instead."""
    with alarm_guard(60, "the extraction did not finish: it waits on a hung decoding worker"):
        yield


def _hang_on_bad(monkeypatch: pytest.MonkeyPatch, in_workers_only: bool) -> None:
    """Patched before the DataLoader starts: the forked workers (and lone children) inherit it."""
    from torch.utils.data import get_worker_info

    decode = reader.decode_video

    def hang(path: Path, *args: object, **kwargs: object):  # noqa: ANN202
        if str(path).endswith(BAD) and (get_worker_info() is not None or not in_workers_only):
            time.sleep(3600)  # blocks for ever, as a decoder looping on a crafted file
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(reader, "decode_video", hang)
    # 3 s, not 1: a fresh worker's first (good) decode took ~1 s on a loaded 2-core machine, and a good video past
    # both limits would fail the test
    monkeypatch.setattr(reader, "HANG_LIMIT_S", 3.0, raising=False)
    monkeypatch.setattr(reader, "ALONE_LIMIT_S", 3.0)


def test_a_file_that_hangs_a_decoding_worker_is_a_failed_record_and_the_pass_goes_on(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, hang_guard: object) -> None:
    """The DataLoader had no timeout and saga no watchdog: one file hanging its decoder blocked the extraction for
    ever, with no message."""
    videos = make_video_tree(tmp_path / "v", per_class=2)
    _hang_on_bad(monkeypatch, in_workers_only=False)
    with pytest.warns(UserWarning, match=STILL_DECODING):  # the pass names the stuck video (not left unasserted)
        summary = extract(config(videos, tmp_path / "c", tiny_weights, workers=2))
    assert [path for path, _ in summary.failures] == [BAD] and summary.ok == 5 and summary.failed == 1
    why = summary.failures[0][1]
    assert why.startswith("the decoder's process gave no answer within 3 s (decoding it alone)") and "\n" not in why
    assert not multiprocessing.active_children()  # the stuck worker and the lone child killed and reaped
    cache = FeatureCache.open(tmp_path / "c")
    assert sorted(r.path for r in cache.records()) == sorted(p.relative_to(videos).as_posix()
                                                              for p in videos.rglob("*.mp4"))  # each once
    assert cache.check_structure()[0] == []


def test_a_video_that_hangs_only_in_a_worker_is_extracted_alone_with_the_same_features(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, hang_guard: object) -> None:
    """A video stopped for want of time in a worker gets its chance alone: here it decodes there, so every video
    is extracted, once, with the features a clean pass gives."""
    videos = make_video_tree(tmp_path / "v", per_class=2)
    extract(config(videos, tmp_path / "clean", tiny_weights))
    _hang_on_bad(monkeypatch, in_workers_only=True)
    with pytest.warns(UserWarning, match=STILL_DECODING):
        summary = extract(config(videos, tmp_path / "c", tiny_weights, workers=2))
    assert summary.ok == 6 and summary.failed == 0 and not multiprocessing.active_children()
    clean, got = features_by_path(tmp_path / "clean"), features_by_path(tmp_path / "c")
    assert sorted(got) == sorted(clean) and len(FeatureCache.open(tmp_path / "c").records()) == 6
    for path, features in clean.items():
        assert abs(got[path] - features).max() < 1e-5, path


def test_a_ctrl_c_while_a_worker_hangs_leaves_no_worker_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hang_guard: object) -> None:
    """A worker stuck in C code never runs the SIGTERM handler it inherits from the CLI (simulated: SIGTERM ignored),
    so the DataLoader's shutdown left it running after Ctrl-C (and multiprocessing's exit then waited on it for
    ever); the workers still decoding are now SIGKILLed and reaped."""
    import threading

    import torch
    from saga.pipeline.inputs import VideoInput
    from saga.pipeline.sampling import SamplingPolicy

    videos = make_video_tree(tmp_path / "v", per_class=1, generators=("real",))

    def stuck(*_: object, **__: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)

    def ctrl_c(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(reader, "decode_video", stuck)
    stream = reader.read_videos([VideoInput("real/real_0.mp4", "real")], videos, SamplingPolicy(frames=4),
                                lambda im: torch.zeros(3, 2, 2), workers=1)
    before = signal.signal(signal.SIGUSR1, ctrl_c)
    try:
        threading.Timer(1.0, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)).start()
        with pytest.raises(KeyboardInterrupt):
            next(stream)  # waits on the stuck worker until the "Ctrl-C"
        stream.close()
    finally:
        signal.signal(signal.SIGUSR1, before)
        left = multiprocessing.active_children()
        for child in left:  # the old code's: killed here, or the suite's exit waited on it for ever
            child.kill()
            child.join()
    assert not left
