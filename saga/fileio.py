"""Atomic file writes: write to a temporary name beside the target, then `os.replace`.

A reader (or a resumed run) never sees half a file, and a killed writer leaves at most
a hidden `.name.tmp-<pid>@<host>` file behind, never a damaged target. Every module that
writes a file another process may read uses these helpers.

A write that fails because the disk is full or the folder is not writable becomes a
`WriteError`: one line naming the folder and the fix, with the temporary file removed
(the target, e.g. the last checkpoint, is untouched). Folder locks are in `saga.locks`.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from saga.errors import SagaError, WriteError


def temp_path(path: str | Path, thread: bool = False) -> Path:
    """The hidden temporary name beside `path` that `atomic_path` writes first: `.NAME.tmp-PID@HOST`
    (`-TID` after the PID with `thread`). The host, because a PID means nothing on another machine: on a
    disk several machines share, only this host's temporaries of dead processes are swept."""
    path = Path(path)
    tid = f"-{threading.get_ident()}" if thread else ""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{tid}@{host_tag()}")


TEMP_SUFFIX = r"\.tmp-\d+(?:-\d+)?(?:@[A-Za-z0-9._-]+)?"  # temp_path's tail (an older saga's: no host)
TEMP = re.compile(r"\..+\.tmp-(\d+)(?:-\d+)?(?:@([A-Za-z0-9._-]+))?")  # .NAME.tmp-PID[-TID][@HOST]


def host_tag() -> str:
    """This machine's name as temporary names carry it: file-name safe, at most 40 characters (a longer
    name keeps its head and a digest of the whole, so two hosts never share a tag)."""
    name = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"
    if len(name) <= 40:
        return name
    return f"{name[:31]}-{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()}"


def sweep_temps(folder: str | Path, recursive: bool = True) -> int:
    """Remove the temporary files (`temp_path`) of killed writers anywhere under `folder` (or in it); how many.
    Why: a run killed mid-write left one per kill, forever. A running process's (or this one's), and another
    host's (its PID cannot be checked here), are kept."""
    found = Path(folder).rglob(".*.tmp-*") if recursive else Path(folder).glob(".*.tmp-*")
    return sum(_remove_stale(path) for path in found if path.is_file())


def sweep_siblings(path: str | Path) -> int:
    """Remove the temporaries of `path` (`.NAME.tmp-PID@HOST` beside it: a file, or an imported cache's folder)
    left by killed writers of this host; how many. Also the temporaries of those temporaries
    (`..NAME.tmp-PID@HOST.tmp-PID-TID@HOST`: the empty cache an import creates inside its hidden folder). Only
    `path`'s own, so a large parent folder is never walked."""
    path = Path(path)
    pattern = f".{glob.escape(path.name)}.tmp-*"
    found = [*path.parent.glob(pattern), *path.parent.glob(f".{pattern}")]
    return sum(_remove_stale(tmp) for tmp in found)


def live_siblings(path: str | Path) -> list[Path]:
    """The temporaries of `path` that another process may still be writing: a running process's of this
    host, or any of another host (whose PID cannot be checked here)."""
    path = Path(path)
    mine = (os.getpid(), host_tag())
    return sorted(tmp for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*")
                  if (owner := temp_owner(tmp)) is not None and owner != mine and _may_be_live(*owner))


def temp_owner(path: Path) -> tuple[int, str | None] | None:
    """(PID, host) in a temporary name (host None in an older saga's); None for any other name."""
    match = TEMP.fullmatch(path.name)
    return (int(match.group(1)), match.group(2)) if match else None


def _may_be_live(pid: int, host: str | None) -> bool:
    """Whether the writer of a temporary may still run: another host's always may (its PID is not ours to
    check; a live process there whose PID is free here would lose its file)."""
    return (host is not None and host != host_tag()) or pid_running(pid)


def _remove_stale(path: Path) -> bool:
    """Remove `path` when it is a temporary name of a process of this host no longer running."""
    owner = temp_owner(path)
    if owner is None or _may_be_live(*owner):
        return False
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True


def pid_running(pid: int) -> bool:
    """Whether process `pid` exists (this one included; another user's too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # it exists, as another user's process
    except (ProcessLookupError, OverflowError):
        return False
    return True


FULL = {errno.ENOSPC: "the disk is full (no space left on device)", errno.EDQUOT: "the disk quota is exceeded"}
DENIED = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
          errno.EROFS: "read-only file system"}


def write_error(exc: OSError, path: str | Path) -> WriteError | None:
    """A disk-full or not-writable OSError as a one-line WriteError naming `path`'s folder; None for other errors.

    A WriteError is rebuilt for `path` (a caller may name the run folder instead of a hidden temporary one).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if exc.errno in FULL:
        return WriteError(f"{folder}: {FULL[exc.errno]} while writing {path.name}; free space on that disk "
                          "(or choose a folder on another one), then rerun the same command: committed work "
                          "is kept", exc.errno)
    if exc.errno in DENIED:
        return WriteError(f"{folder}: not writable ({DENIED[exc.errno]}); make it writable or choose another "
                          "output folder", exc.errno)
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a disk-full or permission OSError raised inside the block into a WriteError about `path`."""
    try:
        yield
    except WriteError:
        raise  # already one line, about the innermost file
    except OSError as exc:
        error = write_error(exc, path)
        if error is None:
            raise
        raise error from None


def make_dir(path: str | Path) -> Path:
    """mkdir -p, with a full disk, an unwritable parent or a file in the way as one line naming the folder."""
    path = Path(path)
    try:
        with writing(path):
            path.mkdir(parents=True, exist_ok=True)
    except WriteError:
        raise
    except OSError as exc:  # ENOTDIR / EEXIST: a file where a folder must be; ENOENT under /proc ...
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise SagaError(f"{blocker}: exists and is not a folder; choose another output folder") from None
        raise SagaError(f"{path}: cannot create this folder ({exc.strerror or exc}); choose another output "
                        "folder") from None
    return path


def check_writable(folder: str | Path) -> Path:
    """Prove that `folder` (or, while it does not exist, its nearest existing parent) takes a file.

    Commands call this before long work, so an unwritable --out fails in one line at the
    start rather than after an hour of training. Nothing is left behind: the probe file is
    removed and no folder is created. Works as root too (a read-only mount).
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise SagaError(f"{existing}: exists and is not a folder; choose another output folder")
    probe = existing / f".saga-write-test-{os.getpid()}"
    try:
        with writing(probe):
            probe.write_bytes(b"")
            probe.unlink()
    except WriteError:
        raise
    except OSError as exc:  # e.g. a pseudo file system that takes no files at all
        raise WriteError(f"{existing}: cannot hold files ({exc.strerror or exc}); choose another output folder",
                         exc.errno) from None
    return folder


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.

    A full disk or an unwritable folder, in the block or at the rename, is a WriteError.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. a read-only folder: nothing was written there to remove
            pass
        raise


class LineLog:
    """An append-only file of whole lines (a manifest, the split plan, the parts log), committed by fsync.

    A line is committed once its newline is on disk; readers skip an unterminated last line. So
    an append first cuts such a torn tail (a write killed or cut short by a full disk): glued to
    the next line it would become a complete, corrupt line that every later open refuses. A
    failed append cuts the file back to where it began. The cut and each append hold the file's flock:
    the ranks of a distributed pass append their seals to one parts.jsonl at once, and one's cut must
    not take another's line still being written for a torn tail.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with writing(self.path):
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            with self._exclusive():
                self._cut_torn_tail()
        except BaseException:
            os.close(self._fd)
            raise

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the file's flock (other LineLogs of the file wait)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _cut_torn_tail(self) -> None:
        end = os.fstat(self._fd).st_size
        if end == 0 or os.pread(self._fd, 1, end - 1) == b"\n":
            return
        keep, block = end, 1 << 16
        while keep > 0:
            start = max(0, keep - block)
            newline = os.pread(self._fd, keep - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        with writing(self.path):
            os.ftruncate(self._fd, keep)

    def append(self, text: str) -> None:
        """Write `text` (whole lines) and fsync it; on any failure the file is as it was before."""
        data = memoryview(text.encode("utf-8"))
        if not data:
            return
        with self._exclusive():
            self._write(data)

    def _write(self, data: memoryview) -> None:
        start = os.fstat(self._fd).st_size
        try:
            with writing(self.path):
                while data:
                    data = data[os.write(self._fd, data):]
                os.fsync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise

    def close(self) -> None:
        os.close(self._fd)


def append_lines(path: str | Path, text: str) -> None:
    """One durable append of whole lines to a LineLog file."""
    log = LineLog(path)
    try:
        log.append(text)
    finally:
        log.close()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Indented JSON (non-JSON values as str), newline-terminated."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def loads(text: str | bytes) -> Any:
    """`json.loads` for text from a file someone may have crafted: nesting deeper than Python's stack (a line of
    100,000 `[`) is a `json.JSONDecodeError` (a ValueError, which every reader catches), not a RecursionError
    that escaped them all as a traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        doc = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise json.JSONDecodeError("nested too deeply", doc[:80], 0) from None


def loads_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads` for a file someone may have crafted: arrays nested deeper than Python's stack (tomllib
    recurses) are a `tomllib.TOMLDecodeError` "nested too deeply", which every TOML reader catches, as `loads`
    does for JSON."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("nested too deeply") from None


def read_json(path: str | Path, missing: str = "", corrupt: str = "") -> Any:
    """Parse a JSON object file (every file saga writes is one); a missing or corrupt file, or another
    JSON value, is a SagaError naming it (plus the given hints)."""
    path = Path(path)
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SagaError(f"{path}: missing{missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SagaError(f"{path}: corrupt JSON ({exc}){corrupt}") from None
    if not isinstance(data, dict):
        raise SagaError(f"{path}: corrupt (a JSON {type(data).__name__}, not an object){corrupt}")
    return data
