"""Folder locks: one process (and one thread of it) writes a run folder or a cache at a time.

Split from `saga.fileio` (atomic writes): a lock is an `flock` on FOLDER/.lock, held from opening
the folder until the work is committed; a second writer gets one line naming the folder, never a
half-written file of the first. A killed holder frees it (the kernel drops the flock).
"""

from __future__ import annotations

import fcntl
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from saga.errors import SagaError
from saga.fileio import writing

LOCK = ".lock"  # in a run folder or a cache: flock'ed by the one process writing there


@dataclass
class _Hold:
    """This process's lock on one folder: the descriptor, the thread that took it, how often it did."""

    fd: int
    owner: threading.Thread
    count: int


_HELD: dict[str, _Hold] = {}  # folder -> its lock held by a thread of this process
_HELD_GUARD = threading.Lock()


def lock_folder(folder: str | Path, busy: str, create: bool = True) -> None:
    """Hold an exclusive lock on `folder` until `unlock_folder` or the end of this process; another
    process, or another thread of this one, gets the one-line SagaError "FOLDER: {busy}".

    Why per thread: flock is per open file, so a second thread would otherwise pass and the first
    one's unlock would free the folder while the second still writes. The holding thread may lock
    again (each lock needs its unlock); a thread that ended without unlocking frees the folder, as a
    killed process does. `create=False` (for `check_unlocked`) opens an existing .lock read-only."""
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
            _HELD[key] = _Hold(_flock(folder, busy, create), me, 1)
        else:  # its thread died holding it: this process still holds the flock, hand it over
            hold.owner, hold.count = me, 1


def _flock(folder: Path, busy: str, create: bool = True) -> int:
    """A descriptor holding the exclusive flock of folder/.lock; BUSY when another process holds it."""
    with writing(folder / LOCK):  # flock ignores the open mode: a read-only descriptor locks as well
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT if create else os.O_RDONLY, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SagaError(f"{folder}: {busy}") from None
    return fd


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
    `lock_folder(folder)`; hold nothing after. For a reader of what that holder rewrites (a run's
    weights while it trains). A folder never locked passes, and nothing is created in it (a run
    folder may be read-only); the lock's own holder (the same thread) passes too."""
    folder = Path(folder)
    if not (folder / LOCK).is_file():
        return
    try:
        lock_folder(folder, busy, create=False)
    except FileNotFoundError:  # removed since the check (a folder deleted): nobody holds it
        return
    unlock_folder(folder)


@contextmanager
def waiting_lock(path: str | Path, waiting: str) -> Iterator[None]:
    """Hold the exclusive flock of file `path` for the block; while another process (or thread) holds it,
    warn `waiting` once and wait. For a short read-modify-write that two commands may run at once
    (enrolling two generators into one run): the second then reads what the first wrote."""
    path = Path(path)
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warnings.warn(waiting, stacklevel=3)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # frees the flock
