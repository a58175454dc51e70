"""The training lock seen from outside: a reader's check never makes a starting trainer fail, and a lock file
that cannot be opened is one line naming it (split from test_train_guards.py)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.runs import RunFolder
from saga.runs.folder import LOCK
from saga.train.stage1 import train_stage1
from test_train import s1_config
from test_train_guards import cache, held_elsewhere  # noqa: F401  (cache: the module's small cache fixture)


# --- a reader's check never makes a starting trainer fail ---------------------------------------------------
CHECKER = """import fcntl, sys
from saga.runs import RunFolder
real = fcntl.flock
def probe(fd, op):  # the check's non-blocking flock, kept until the trainer has tried its own
    real(fd, op)
    if op & fcntl.LOCK_NB:
        fcntl.flock = real
        print("probing", flush=True)
        sys.stdin.readline()
fcntl.flock = probe
RunFolder(sys.argv[1]).check_not_training("`saga enroll`")
print("free", flush=True)
"""


def _released_at_first_refusal(monkeypatch: pytest.MonkeyPatch, release: Callable[[], None]) -> None:
    """The trainer's flock calls `release` (lets the check finish) the first time the folder is taken."""
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        try:
            real(fd, op)
        except BlockingIOError:
            release()
            raise

    monkeypatch.setattr(fcntl, "flock", flock)


def test_a_trainer_starting_while_another_process_checks_the_run_is_not_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`saga enroll` (openset fit, calibrate) tested the training lock by taking it for an instant: a `saga train`
    starting in that instant was refused as if another trainer held the run."""
    (tmp_path / LOCK).touch()  # the run trained before
    checker = subprocess.Popen([sys.executable, "-c", CHECKER, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert checker.stdout is not None and checker.stdout.readline() == "probing\n"
    _released_at_first_refusal(monkeypatch, lambda: checker.stdin.write("go\n") or checker.stdin.flush())
    try:
        RunFolder(tmp_path).lock()  # the probe is still held here
    finally:
        out, _ = checker.communicate("go\n", timeout=60)
    assert out == "free\n"
    RunFolder(tmp_path).release()


def test_a_trainer_starting_while_another_thread_checks_the_run_is_not_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same within one process (a notebook, `saga demo` calibrating): the check used to register as the
    folder's holder for that instant, so the trainer's thread was refused."""
    probing, go = threading.Event(), threading.Event()
    real, checker = fcntl.flock, None

    def flock(fd: int, op: int) -> None:
        real(fd, op)
        if threading.current_thread() is checker and op & fcntl.LOCK_NB:
            probing.set()
            go.wait(5)

    monkeypatch.setattr(fcntl, "flock", flock)
    (tmp_path / LOCK).touch()
    checker = threading.Thread(target=RunFolder(tmp_path).check_not_training, args=("`saga enroll`",))
    checker.start()
    assert probing.wait(30)
    _released_at_first_refusal(monkeypatch, go.set)
    try:
        RunFolder(tmp_path).lock()
        assert go.is_set()  # it met the probe (the old check also kept other threads out for its whole probe)
    finally:
        go.set()
        checker.join(30)
    RunFolder(tmp_path).release()


def test_a_trainer_holding_the_run_is_still_seen_and_refuses_the_next_at_once(tmp_path: Path) -> None:
    """What the waiting must not change: the check refuses, and a second trainer is refused without waiting."""
    fd = held_elsewhere(tmp_path)
    try:
        with pytest.raises(SagaError, match="is training this run right now, so `saga enroll` would use"):
            RunFolder(tmp_path).check_not_training("`saga enroll`")
        t0 = time.monotonic()
        with pytest.raises(SagaError, match="another saga process is training this run right now; wait"):
            RunFolder(tmp_path).lock()
        assert time.monotonic() - t0 < 1
    finally:
        os.close(fd)
    RunFolder(tmp_path).check_not_training("`saga enroll`")
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]


def test_a_lock_file_that_cannot_be_opened_is_one_warning_not_a_traceback(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's RUN/.lock (mode 600 by a restrictive umask) in a shared run folder: `saga calibrate --out
    MINE` died with a raw PermissionError. The reader cannot fix that file, so it goes on after one warning.
    os.open is denied for that file alone, so the test also runs as root (whom chmod 000 does not stop)."""
    import errno
    import warnings

    (tmp_path / LOCK).touch()
    real_open = os.open

    def denied(path: object, *args: object, **kwargs: object) -> int:
        if os.fspath(path) == str(tmp_path / LOCK):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RunFolder(tmp_path).check_not_training("`saga calibrate`")
        RunFolder(tmp_path).check_not_training("`saga calibrate`")  # checked again before writing: said once
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / LOCK}: cannot be opened (Permission denied), so saga cannot tell whether another saga process "
        f"is writing in {tmp_path} right now, and goes on as if not; to have it checked, ask the file's owner to run "
        f"chmod a+r {tmp_path / LOCK}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens a mode-000 file; the injected test above covers it")
def test_a_mode_000_lock_file_is_one_warning(tmp_path: Path) -> None:
    (tmp_path / LOCK).touch(mode=0o000)
    with pytest.warns(UserWarning, match=r"\.lock: cannot be opened \(Permission denied\), so saga cannot tell"):
        RunFolder(tmp_path).check_not_training("`saga enroll`")


def _deny_open(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """os.open refused for `path` alone (EACCES), as for another user's file; works as root too."""
    import errno

    real_open = os.open

    def denied(target: object, *args: object, **kwargs: object) -> int:
        if os.fspath(target) == str(path):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real_open(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)


def test_a_trainer_meeting_a_lock_file_it_cannot_open_names_that_file(cache: FeatureCache, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's RUN/.lock (or mode 000): the trainer said "RUN: not writable (permission denied)", blaming
    a folder that is writable; the file is what needs the chmod, or the run another --out."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).touch()
    _deny_open(monkeypatch, out / LOCK)
    expected = (f"{out / LOCK}: cannot be opened for writing (permission denied): it is another user's file or its "
                f"mode forbids it; run chmod u+rw {out / LOCK} if it is yours (ls -l shows its owner), else ask its "
                f"owner to run chmod a+rw {out / LOCK} (or work in a folder of your own)")
    with pytest.raises(SagaError) as refused:
        train_stage1(cache.root, out, s1_config(epochs=1))
    assert str(refused.value) == expected
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # refused before anything was written
    from saga.locks import waiting_lock  # the short read-modify-write lock (enroll, openset fit) says the same

    with pytest.raises(SagaError, match=r"\.lock: cannot be opened for writing \(permission denied\)"):
        with waiting_lock(out / LOCK, "waiting"):
            pass


def test_a_folder_that_refuses_the_lock_file_is_still_blamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No RUN/.lock yet and the folder refuses to create it: the folder is what is not writable."""
    _deny_open(monkeypatch, tmp_path / LOCK)
    with pytest.raises(SagaError, match=rf"^{tmp_path}: not writable \(permission denied\)"):
        RunFolder(tmp_path).lock()
