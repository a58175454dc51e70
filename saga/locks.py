"""Folder locks: one writer per run folder, cache or synth folder (`lock_folder`), a reader's check that
nobody writes there (`check_unlocked`), and a short read-modify-write lock that waits (`waiting_lock`).

All are `flock`s, so a killed holder frees its lock with its process.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from saga.errors import SagaError, WriteError, shown
from saga.fileio import DENIED, writing

LOCK = ".lock"  # in a run folder or a cache: flock'ed by the one process writing there


@dataclass
class _Hold:
    """This process's lock on one folder: the descriptor, the thread that took it, how often it did."""

    fd: int
    owner: threading.Thread
    count: int


_HELD: dict[str, _Hold] = {}  # folder -> its lock held by a thread of this process
_HELD_GUARD = threading.Lock()


def lock_folder(folder: str | Path, busy: str) -> None:
    """Hold an exclusive lock on `folder` until `unlock_folder` or the end of this process; another
    process, or another thread of this one, gets the one-line SagaError "FOLDER: {busy}".

    Why per thread: flock is per open file, so a second thread would otherwise pass and the first
    one's unlock would free the folder while the second still writes. The holding thread may lock
    again (each lock needs its unlock); a thread that ended without unlocking frees the folder, as a
    killed process does."""
    folder = Path(folder)
    key = str(folder.resolve())
    me = threading.current_thread()
    with _HELD_GUARD:
        hold = _HELD.get(key)
        if hold is not None and hold.owner is not me and hold.owner.is_alive():
            raise SagaError(f"{folder}: {busy}")
        if hold is not None and hold.owner is me:
            hold.count += 1
            return
        if hold is None:
            _HELD[key] = _Hold(_flock(folder, busy), me, 1)
        else:  # its thread died holding it: this process still holds the flock, hand it over
            hold.owner, hold.count = me, 1


PROBE_WAIT = 5.0  # seconds a starting holder waits out `check_unlocked` probes (each lasts microseconds)


def _flock(folder: Path, busy: str) -> int:
    """A descriptor holding the exclusive flock of folder/.lock; BUSY when another process holds it.
    Only a holder's exclusive flock refuses: a `check_unlocked` probe's shared one is waited out (it used
    to refuse a trainer starting in the instant an `enroll` checked the run)."""
    fd = _open_lock(folder / LOCK)
    deadline = time.monotonic() + PROBE_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if _held_exclusively(folder / LOCK) or time.monotonic() > deadline:
                os.close(fd)
                raise SagaError(f"{folder}: {busy}") from None
            time.sleep(0.002)


def _open_lock(lock: Path) -> int:
    """A read-write descriptor of `lock`, created when missing. One that exists but cannot be opened (another
    user's file, a restrictive mode) is a WriteError naming it and the fix: `writing` blamed the folder
    ("RUN: not writable"), which may well be writable; the lock file is what needs the chmod."""
    with writing(lock):
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError as exc:
            if not os.path.lexists(lock):  # the folder refused to create it: `writing` names the folder
                raise
            raise WriteError(
                f"{shown(lock)}: cannot be opened for writing ({DENIED.get(exc.errno, exc.strerror)}): it is another "
                f"user's file or its mode forbids it; run chmod u+rw {shown(lock)} if it is yours (ls -l shows its "
                f"owner), else ask its owner to run chmod a+rw {shown(lock)} (or work in a folder of your own)",
                exc.errno) from None


def _held_exclusively(path: Path) -> bool:
    """Whether someone holds `path`'s exclusive flock, tested with a shared one (which `_flock` waits out);
    a missing file is held by nobody. flock ignores the open mode: read-only suffices (a read-only run)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def unlock_folder(folder: str | Path) -> None:
    """Undo one `lock_folder` of this thread; the last one frees the folder. A thread that does not
    hold it (e.g. one that was refused) changes nothing."""
    key = str(Path(folder).resolve())
    with _HELD_GUARD:
        hold = _HELD.get(key)
        if hold is None or hold.owner is not threading.current_thread():
            return
        hold.count -= 1
        if hold.count == 0:
            del _HELD[key]
            os.close(hold.fd)


def check_unlocked(folder: str | Path, busy: str) -> None:
    """Refuse ("FOLDER: {busy}") while another process, or another thread of this one, holds
    `lock_folder(folder)`. For a reader of what that holder rewrites (a run's weights while it trains).
    Takes no lock a holder could trip on (only a shared flock for an instant, which `_flock` waits out),
    creates nothing (a run folder may be read-only); the lock's own holder (the same thread) passes.
    A lock file it cannot open (another user's) is one warning, and it passes (`_warn_cannot_tell`)."""
    folder = Path(folder)
    with _HELD_GUARD:
        hold = _HELD.get(str(folder.resolve()))
    if hold is not None:  # this process holds the flock: only another live thread of it counts
        if hold.owner is not threading.current_thread() and hold.owner.is_alive():
            raise SagaError(f"{folder}: {busy}")
        return
    try:
        held = _held_exclusively(folder / LOCK)
    except OSError as exc:  # another user's .lock (a restrictive umask), or mode 000: cannot tell
        _warn_cannot_tell(folder / LOCK, exc)
        return
    if held:
        raise SagaError(f"{folder}: {busy}")


_WARNED: set[str] = set()  # lock files already named by `_warn_cannot_tell` in this process


def _warn_cannot_tell(lock: Path, exc: OSError) -> None:
    """One warning per lock file that cannot be opened. Why go on rather than refuse: in a shared run folder
    the reader (`saga calibrate --out MINE`) cannot fix another user's file, and refusing would lock it out of
    a run that is most likely finished; a fit's weights are still checked again before it writes."""
    with _HELD_GUARD:
        if str(lock) in _WARNED:
            return
        _WARNED.add(str(lock))
    warnings.warn(f"{shown(lock)}: cannot be opened ({exc.strerror or exc}), so saga cannot tell whether another "
                  f"saga process is writing in {shown(lock.parent)} right now, and goes on as if not; to have it "
                  f"checked, ask the file's owner to run chmod a+r {shown(lock)}", stacklevel=4)


@contextmanager
def waiting_lock(path: str | Path, waiting: str) -> Iterator[None]:
    """Hold the exclusive flock of file `path` for the block; while another process (or thread) holds it,
    warn `waiting` once and wait. For a short read-modify-write that two commands may run at once
    (enrolling two generators into one run): the second then reads what the first wrote."""
    path = Path(path)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warnings.warn(waiting, stacklevel=3)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # frees the flock
