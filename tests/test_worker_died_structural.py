"""A dead decoding worker is known by the pool's own processes, not by torch's words (saga.pipeline.stream.Workers).

`reader.worker_died` matched "DataLoader worker" in a RuntimeError. torch re-raises a live worker's own exception as
"Caught RuntimeError in DataLoader worker process N ...", so such an error stopped the pass as a decoder crash (a
healthy video kept as its suspect, the real error hidden); and a torch release wording a death otherwise would have
turned a real crash into a traceback."""

from __future__ import annotations

import faulthandler
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch.utils.data import DataLoader, get_worker_info
from torch.utils.data._utils import signal_handling
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from conftest import make_video_tree
from saga.errors import SagaError
from saga.pipeline import reader, stream
from saga.pipeline.extract import extract
from saga.pipeline.inputs import VideoInput
from saga.pipeline.resume import SUSPECTS
from saga.pipeline.sampling import SamplingPolicy
from test_extract import config

GONE = "a loader process is gone"  # torch's report of a dead worker, in other words


@pytest.fixture
def reworded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch's two reports of a dead worker (its SIGCHLD handler's, its queue check's) with other words; the list
    collects the texts replaced."""
    said: list[str] = []
    check, try_get = signal_handling._error_if_any_worker_fails, _MultiProcessingDataLoaderIter._try_get_data

    def reword(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            said.append(str(exc))
            raise RuntimeError(GONE) from None

    monkeypatch.setattr(signal_handling, "_error_if_any_worker_fails", lambda: reword(check))
    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_try_get_data",
                        lambda self, *a, **k: reword(lambda: try_get(self, *a, **k)))
    return said


def _in_worker() -> bool:
    return get_worker_info() is not None


def _read(root: Path, names: list[str]) -> stream.VideoStream:
    items = [VideoInput(f"real/{name}", "real") for name in names]
    return reader.read_videos(items, root, SamplingPolicy(frames=4), lambda im: torch.zeros(3, 2, 2), workers=1)


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ConnectionResetError("a bug"), EOFError("a bug")],
                         ids=lambda e: type(e).__name__)
def test_an_error_raised_in_a_live_worker_is_that_error_not_a_dead_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Raised outside decode_one's per-video `try` (saga's own code in the worker): the old code reported "a decoding
    worker process died" and kept the video as a crash suspect."""
    videos = make_video_tree(tmp_path / "v", per_class=2, generators=("real",))
    fingerprint = reader.file_fingerprint
    monkeypatch.setattr(reader, "file_fingerprint", lambda p: (_ for _ in ()).throw(error) if _in_worker()
                        else fingerprint(p))
    decoded = _read(videos, ["real_0.mp4", "real_1.mp4"])
    try:
        with pytest.raises(type(error), match=f"Caught {type(error).__name__} in DataLoader worker process 0") as got:
            next(decoded)
    finally:
        decoded.close()
    assert not isinstance(got.value, SagaError), got.value
    assert any("still running, so it is no decoder crash" in note for note in got.value.__notes__)


def test_a_pass_stopped_by_a_workers_own_error_keeps_no_suspect(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error surfaces as itself (a bug's traceback), and the next pass does not decode a healthy video alone."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    init = reader._worker_init

    def broken_init(worker: int) -> None:
        init(worker)
        raise RuntimeError("worker setup failed")

    monkeypatch.setattr(reader, "_worker_init", broken_init)
    with pytest.raises(RuntimeError, match="Caught RuntimeError in DataLoader worker process 0") as got:
        extract(config(videos, tmp_path / "c", tiny_weights, workers=1))
    assert not isinstance(got.value, SagaError), got.value
    assert not (tmp_path / "c" / SUSPECTS.format(rank=0)).exists()


def test_a_decoder_error_that_cannot_be_printed_fails_only_its_video(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its `__str__` raised inside decode_one's handler, so it escaped the worker and stopped the pass as a crash."""
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    videos = make_video_tree(tmp_path / "v", per_class=2, generators=("real",))
    decode = reader.decode_video

    def decode_or_raise(path: Path, *args: object, **kwargs: object) -> Any:
        if path.name == "real_0.mp4":
            raise Unprintable()
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(reader, "decode_video", decode_or_raise)
    decoded = _read(videos, ["real_0.mp4", "real_1.mp4"])
    try:
        got = list(decoded)
    finally:
        decoded.close()
    assert [v.error for v in got] == ["Unprintable: <exception str() failed>", ""]


def test_a_dead_worker_is_a_crash_whatever_torch_says(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch, reworded: list[str]) -> None:
    """The old code let the reworded RuntimeError through as a traceback: no suspect kept, every rerun stopped there."""
    videos = make_video_tree(tmp_path / "v", per_class=2)
    bad, decode = "syn-svd/syn-svd_1.mp4", reader.decode_video

    def segfault_on_bad(path: Path, *args: object, **kwargs: object) -> Any:
        if str(path).endswith(bad) and _in_worker():
            faulthandler.disable()  # pytest's: no traceback of this process on the terminal
            os.kill(os.getpid(), signal.SIGSEGV)
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(reader, "decode_video", segfault_on_bad)
    with pytest.raises(reader.DecoderCrash, match=rf"a decoding worker process died \(pid \d+: killed by SIGSEGV\) "
                                                  f"while decoding {bad}; the videos written so far") as got:
        extract(config(videos, tmp_path / "c", tiny_weights, workers=1))
    assert reworded, "torch reported no death: the test proves nothing"
    assert got.value.suspects == [bad] and (tmp_path / "c" / SUSPECTS.format(rank=0)).is_file()


def test_the_pools_processes_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """An EOFError no worker raised counts only once a worker has exited (here: none within the grace, then one
    killed); torch's `_workers` and `_process_data` are there to inspect on this torch."""
    monkeypatch.setattr(stream, "EXIT_GRACE_S", 0.0)
    pool = iter(DataLoader(range(4), batch_size=None, num_workers=1))
    workers = stream.Workers(pool)
    try:
        assert next(pool) == 0 and workers.processes and not workers.relayed
        assert not workers.died(EOFError()) and not workers.died(RuntimeError("DataLoader worker (pid 1) died"))
        stream._unwatch(pool)  # out of torch's SIGCHLD check: its own error would interrupt this test
        pool._workers[0].kill()
        pool._workers[0].join()
        assert workers.died(EOFError()) and workers.died(RuntimeError(GONE))
        assert workers.how() == f"pid {pool._workers[0].pid}: killed by SIGKILL"
    finally:
        pool._shutdown_workers()


def test_without_the_pools_processes_the_text_decides() -> None:
    """A later torch without `_workers`: torch's wording still counts (the documented fallback)."""
    workers = stream.Workers(object())
    assert workers.processes is None
    assert workers.died(RuntimeError("DataLoader worker (pid 4242) is killed by signal: Segmentation fault."))
    assert not workers.died(RuntimeError(GONE))
