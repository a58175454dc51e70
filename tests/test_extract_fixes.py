"""Phase 1 fixes: a file changing while read, interrupts during the commit, the lock before the
cache exists, moved videos, failures of deleted files, Ctrl-C reaching the decoding workers, Ctrl-C on the way
out."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_video_tree, write_clip
from saga.cache.manifest import VideoRecord, file_fingerprint
from saga.cache.store import FeatureCache
from saga.locks import LOCK
from saga.pipeline import reader
from saga.pipeline.extract import RecordMaker, extract
from saga.pipeline.inputs import VideoInput
from saga.pipeline.interrupts import held_signals
from saga.pipeline.reader import DecodedVideo, _worker_init
from saga.pipeline.writer import BackgroundWriter
from saga.taxonomy import Taxonomy
from test_extract import config


def records(out: Path) -> dict[str, VideoRecord]:
    return {r.path: r for r in FeatureCache.open(out).records(refresh=True)}


# --- 1. a file that changes while it is extracted ------------------------------------------------------------------

def test_a_file_still_being_copied_is_recorded_as_it_was_read_and_extracted_again(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy completes while the pass decodes it: the record used to carry the complete file's size and mtime
    (stat'ed after decoding) with the half file's outcome, so it was never extracted again."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    full = (videos / "real" / "real_0.mp4").read_bytes()
    half = videos / "real" / "copy.mp4"
    half.write_bytes(full[: len(full) // 3])
    seen = file_fingerprint(half)
    decode = reader.decode_video

    def copy_finishes(path: Path, *args: object, **kwargs: object):  # noqa: ANN202
        try:
            return decode(path, *args, **kwargs)
        finally:
            if Path(path).name == "copy.mp4" and len(half.read_bytes()) < len(full):
                half.write_bytes(full)
                os.utime(half, ns=(seen[1] + 10**9, seen[1] + 10**9))

    monkeypatch.setattr(reader, "decode_video", copy_finishes)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    record = records(tmp_path / "c")["real/copy.mp4"]
    assert record.fingerprint() == seen and not record.ok and "changed while it was read" in record.error
    monkeypatch.undo()
    again = extract(cfg)
    assert (again.ok, again.failures) == (1, []) and records(tmp_path / "c")["real/copy.mp4"].ok


def test_a_record_carries_the_stat_taken_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.mp4").write_bytes(b"grown since it was decoded")
    make = RecordMaker(tmp_path, [VideoInput("real/a.mp4", "real")], {"real/a.mp4": "train"},
                       Taxonomy.load("synth"))
    assert make(DecodedVideo(index=0, error="truncated", fingerprint=(7, 42))).fingerprint() == (7, 42)


# --- 2. Ctrl-C / SIGTERM while the main thread waits for the writer --------------------------------------------------

class Terminated(KeyboardInterrupt):
    """What the CLI's SIGTERM handler raises."""


class SlowPart:
    """A part on a slow disk; its first add signals this process once the main thread waits in finish()."""

    def __init__(self, sig: int, waiting: threading.Event) -> None:
        self.sig, self.waiting = sig, waiting
        self.added: list[str] = []
        self.closed = False

    def add(self, record: VideoRecord, *arrays: np.ndarray) -> None:
        if not self.added:
            assert self.waiting.wait(10)
            os.kill(os.getpid(), self.sig)
            time.sleep(0.3)  # the old finish() returned at once, the thread still busy here
        self.added.append(record.path)

    def close(self) -> None:
        self.closed = True


class Watched(BackgroundWriter):
    def __init__(self, part: SlowPart) -> None:
        super().__init__(part)  # type: ignore[arg-type]
        self.waiting = part.waiting

    def join(self, timeout: float | None = None) -> None:
        self.waiting.set()
        super().join(timeout)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_finish_waits_commits_every_queued_video_then_stops(sig: int) -> None:
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # a CI started in the background ignores it
    try:
        part = SlowPart(sig, threading.Event())
        writer = Watched(part)
        assert not writer.daemon  # the interpreter waits for it: a daemon died at exit with the queued videos
        writer.start()
        for i in range(4):
            writer.write(VideoRecord(f"v{i}.mp4", 1, 1, "ok", "g", {}, "train"), *[np.zeros(1)] * 3)
        with pytest.raises(Terminated if sig == signal.SIGTERM else KeyboardInterrupt):
            writer.finish()
        assert part.added == [f"v{i}.mp4" for i in range(4)] and part.closed and not writer.is_alive()
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)


def test_held_signals_are_delivered_when_the_span_ends() -> None:
    done = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a CI started in the background ignores it
    try:
        with pytest.raises(KeyboardInterrupt):
            with held_signals():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                done.append("span")
        assert done == ["span"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_signal_held_in_a_span_that_raised_is_still_delivered() -> None:
    """A Ctrl-C noted while the span failed (starting the workers, say) was dropped: the command ended with that
    error, or none, instead of the interrupt (exit 130)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            with held_signals():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                raise OSError("the workers could not start")
        assert isinstance(caught.value.__context__, OSError)  # the span's error stays visible behind it
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_ignored_signal_stays_ignored() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. `nohup saga extract ... &`
    try:
        with held_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# --- 4. the lock before the cache exists -------------------------------------------------------------------------

def test_the_cache_is_created_under_its_lock(tmp_path: Path, tiny_weights: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two passes into one new --out raced in create_or_open (OSError: Directory not empty) before either locked."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    out = tmp_path / "new" / "c"
    create, held = FeatureCache.create_or_open.__func__, []

    def checked(cls: type, root: Path, provenance: dict) -> FeatureCache:
        fd = os.open(root / LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        return create(cls, root, provenance)

    monkeypatch.setattr(FeatureCache, "create_or_open", classmethod(checked))
    assert extract(config(videos, out, tiny_weights)).ok == 3 and held == [True]


# --- 5. videos moved or renamed after extraction ---------------------------------------------------------------

def test_a_renamed_folder_keeps_each_videos_split_and_says_how_to_drop_the_old_records(
        tmp_path: Path, tiny_weights: Path) -> None:
    """syn-svd -> SYN_SVD (the same generator to the taxonomy): the videos were extracted again under new paths
    with fresh splits, the same video in train and in test."""
    videos = make_video_tree(tmp_path / "v", per_class=6)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    before = records(tmp_path / "c")
    (videos / "syn-svd").rename(videos / "SYN_SVD")
    shutil.move(str(videos / "real" / "real_2.mp4"), videos / "syn-latte" / "real_2.mp4")  # "mislabelled"
    with pytest.warns(UserWarning, match=r"7 video\(s\) were renamed or moved .* keeps its split.* `saga cache "
                                         r"prune .* --yes`"):
        again = extract(cfg)
    assert again.ok == 7
    after = records(tmp_path / "c")
    moved = {f"SYN_SVD/syn-svd_{i}.mp4": f"syn-svd/syn-svd_{i}.mp4" for i in range(6)}
    moved["syn-latte/real_2.mp4"] = "real/real_2.mp4"
    assert {new: after[new].split for new in moved} == {new: before[old].split for new, old in moved.items()}
    assert after["syn-latte/real_2.mp4"].generator == "syn-latte"


# --- 6. failed records of deleted files ----------------------------------------------------------------------

def test_failures_of_files_deleted_since_are_counted_apart(tmp_path: Path, tiny_weights: Path) -> None:
    """Every later extract exited 1, listing the failure of a file the user had deleted as told."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "real" / "broken.mp4").write_bytes(b"not a video")
    cfg = config(videos, tmp_path / "c", tiny_weights)
    assert [p for p, _ in extract(cfg).failures] == ["real/broken.mp4"]
    (videos / "real" / "broken.mp4").unlink()
    again = extract(cfg)
    assert (again.failures, again.failed_elsewhere) == ([], 1)


# --- 7. Ctrl-C to the whole process group ---------------------------------------------------------------------

def test_decoding_workers_leave_ctrl_c_to_the_main_process() -> None:
    before = signal.getsignal(signal.SIGINT)
    try:
        _worker_init(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# --- 8. Ctrl-C while a command is on its way out -----------------------------------------------------------------

WAY_OUT = textwrap.dedent("""
    import atexit, os, signal, sys, time
    from saga import cli

    def ctrl_c():  # the user's Ctrl-C reaching the process right here
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)

    class Reader:  # as decord's VideoReader: its destructor runs when the last decoded video is dropped
        def __del__(self):
            ctrl_c()

    def command():  # its work is done: it is on its way out
        if sys.argv[1] == "destructor":
            Reader()
        elif sys.argv[1] == "exit":
            atexit.register(ctrl_c)  # the interpreter's exit: atexit callbacks, threads joined, destructors
        elif sys.argv[1] == "error":
            Reader()
            raise RuntimeError("a library's error on the way out of the interrupt")
        elif sys.argv[1] == "midway":  # the Ctrl-C came in a destructor while the command still had work to do
            Reader()
            time.sleep(3)
            print("ran on", flush=True)
        print("done", flush=True)
        raise SystemExit(0)  # as typer ends a command that succeeded

    cli.app = command
    cli.main()
""")


def way_out(where: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WAY_OUT, where], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a test worker ignores it


@pytest.mark.parametrize("where", ["destructor", "exit", "error", "midway"])
def test_a_ctrl_c_on_the_way_out_ends_with_130_and_one_line(where: str) -> None:
    """A Ctrl-C in a destructor (decord's, as the last videos are dropped) or while the interpreter exits was
    dropped by Python ("Exception ignored in ...", a traceback) and the command exited 0 (or ran on, or ended
    with the error the interrupt caused)."""
    proc = way_out(where)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted: committed work is kept; rerun the same command to resume\n"
    assert "ran on" not in proc.stdout  # interrupted again where the command could act on it


def test_a_command_without_ctrl_c_still_ends_0() -> None:
    proc = way_out("none")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "done\n", "")


DECORD_WAY_OUT = textwrap.dedent("""
    import os, signal, sys, time
    import decord, decord.video_reader as video_reader
    from saga import cli

    free = video_reader._CAPI_VideoReaderFree

    def ctrl_c_while_freeing(handle):  # the user's Ctrl-C lands while decord's destructor frees its reader
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        free(handle)

    video_reader._CAPI_VideoReaderFree = ctrl_c_while_freeing

    def command():
        reader = decord.VideoReader(sys.argv[1])
        print(len(reader), flush=True)
        del reader  # the last decoded video dropped as the command ends
        raise SystemExit(0)

    cli.app = command
    cli.main()
""")


def test_a_ctrl_c_in_decords_destructor_is_one_line_and_130(tmp_path: Path) -> None:
    """What users saw: "Exception ignored in: <function VideoReader.__del__ ...> ... KeyboardInterrupt", exit 0."""
    pytest.importorskip("decord")
    clip = write_clip(tmp_path / "a.mp4", n_frames=4, seed=1)
    proc = subprocess.run([sys.executable, "-c", DECORD_WAY_OUT, str(clip)], capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (proc.returncode, proc.stdout) == (130, "4\n"), proc.stderr
    assert proc.stderr == "interrupted: committed work is kept; rerun the same command to resume\n"
