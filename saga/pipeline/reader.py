"""Phase 1, step 1: decode and preprocess videos in DataLoader worker processes.

A video that cannot be decoded becomes a `DecodedVideo` with an error, never an exception,
so one bad file never stops the pass (the runner records it as failed and goes on).

A file that crashes its decoder (a segfault in FFmpeg or decord, the OOM killer) kills the
worker process decoding it; that cannot be caught in the worker. The stream then stops with
one line (`DecoderCrash`) naming the videos the workers were decoding at that moment (each
worker notes its current video in shared memory). The runner keeps them as suspects, and
the next pass decodes each suspect alone in a child process first: one that crashes again
becomes a failed record, so the run converges instead of stopping at the same file for ever.

A file that hangs its decoder in a worker (still decoding `HANG_LIMIT_S` after it started) takes the same
road within the pass: the workers stuck are killed, their videos are decoded alone at once (side by side),
and the others go on in fresh workers (`saga.pipeline.stream`). With no worker (`--workers 0`) one child
process decodes the videos one at a time (`saga.pipeline.solo`), under the same limits: a crash or a hang
there fails that video, never the pass.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, fields as dataclass_fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from safetensors.torch import load as load_tensors, save as save_tensors
from torch.utils.data import Dataset, get_worker_info

from saga.cache.manifest import file_fingerprint
from saga.errors import BRIEF_LIMIT, DecodeError, SagaError, clipped, reason
from saga.pipeline import child_answer
from saga.pipeline.child_answer import (ARRAYS as _ARRAYS, MALFORMED, SCALARS_LIMIT, MalformedAnswer, NoAnswer,
                                       arrays_limit, check_scalars, checked_arrays)
from saga.pipeline.decode import decode_video
from saga.pipeline.encoders import preprocess_frames
from saga.pipeline.inputs import VideoInput
from saga.pipeline.interrupts import die_with_parent, held_signals
from saga.pipeline.sampling import SamplingPolicy

if TYPE_CHECKING:
    from saga.pipeline.stream import DecodeLimits, VideoStream

# Defaults of `saga extract --alone-limit` and `--hang-limit` (seconds; read when a pass starts).
ALONE_LIMIT_S = 1800.0  # a suspect decoded alone (a genuine one, even a long file through PyAV, takes minutes)
# A video still decoding this long after it started is taken as hung. Decoding one
# video takes seconds (a long file through PyAV, a minute or two); a slow one stopped wrongly only costs its
# decoding again alone, under ALONE_LIMIT_S. A multi-hour run used to wait for ever on one crafted file.
HANG_LIMIT_S = 600.0
CHANGED = "the file changed while it was read (still being copied or written?); rerun to extract it again"


@dataclass
class DecodedVideo:
    """One video ready for the encoder: (W*T, C, H, W) pixels, or the reason it has none."""

    index: int  # position in the runner's todo list
    seconds: float = 0.0  # decode + preprocess time in the worker
    error: str = ""
    pixels: torch.Tensor | None = None
    mask: np.ndarray | None = None  # (W, T) real frames
    timestamps: np.ndarray | None = None
    fps: float = 0.0
    n_frames: int = 0
    backend: str = ""
    fingerprint: tuple[int, int] | None = None  # the file's (size, mtime_ns) before it was read: its record's

    @property
    def ok(self) -> bool:
        return not self.error


def _first_line(exc: BaseException) -> str:
    """The first line of `exc`'s text; never raises: a decoder's exception whose `__str__` failed escaped
    `decode_one`, so its worker's error stopped the pass as a decoder crash instead of failing that video."""
    try:
        text = str(exc)
    except Exception:
        return "<exception str() failed>"  # as Python's own traceback says it
    return text.splitlines()[0] if text else ""


def decode_one(path: Path, policy: SamplingPolicy, preprocess: Callable, index: int = 0) -> DecodedVideo:
    """Decode `path` with `policy` and preprocess its frames; any failure is returned, not raised.

    The file is stat'ed before it is opened and again after: its record carries the first stat, so a
    file that changes later (a copy still under way) no longer matches it and the next pass extracts
    it again; one that changed while it was read is a failure (its frames may mix two versions).
    """
    start = time.perf_counter()
    out = DecodedVideo(index=index, fingerprint=file_fingerprint(path))
    try:
        clip = decode_video(path, policy)
        w, t = clip.mask.shape
        flat = clip.frames.reshape(w * t, *clip.frames.shape[2:])
        out.pixels = preprocess_frames(preprocess, flat)
        out.mask, out.timestamps = clip.mask, clip.timestamps
        out.fps, out.n_frames, out.backend = float(clip.fps), int(clip.n_frames), clip.backend
    except DecodeError as exc:
        out.error = _first_line(exc) or "undecodable"
    except Exception as exc:  # one bad video must never stop the run
        out.error = f"{type(exc).__name__}: {_first_line(exc)}".strip()
    if file_fingerprint(path) != out.fingerprint:
        out.error, out.pixels = CHANGED, None
    out.seconds = time.perf_counter() - start
    return out


class VideoDataset(Dataset):
    """The todo list (or the part of it `order` picks) as a map-style dataset, so worker processes decode in
    parallel; each worker notes the todo index it is decoding in `busy` (shared memory, -1 when idle), and
    in `started` since when (time.monotonic(), the same clock in every process), so a hang is timed per video."""

    def __init__(self, items: list[VideoInput], root: Path, policy: SamplingPolicy, preprocess: Callable,
                 order: list[int] | None = None, busy: Any = None, started: Any = None) -> None:
        self.items, self.root, self.policy, self.preprocess = items, root, policy, preprocess
        self.order = list(range(len(items))) if order is None else order
        self.busy, self.started = busy, started

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> DecodedVideo:
        index = self.order[position]
        info = get_worker_info()
        if self.busy is None or info is None:
            return decode_one(self.items[index].absolute(self.root), self.policy, self.preprocess, index)
        if self.started is not None:
            self.started[info.id] = time.monotonic()
        self.busy[info.id] = index
        video = decode_one(self.items[index].absolute(self.root), self.policy, self.preprocess, index)
        self.busy[info.id] = -1
        return video


def _identity(batch: DecodedVideo) -> DecodedVideo:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one decoding thread per worker: the workers are the parallelism
    # Ctrl-C in a terminal reaches the whole process group: only the main process stops the pass (and
    # commits); a worker killed by it would be misreported as a crash, or its KeyboardInterrupt ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a worker stuck in its decoder outlived a SIGKILLed parent, holding the cache's lock


def decode_workers(requested: int | None) -> int:
    """Decoding processes: `requested`, or (None) this process's cores minus one, shared among torchrun ranks.

    Decoding bounds extraction on a GPU unless enough cores feed it (docs/performance.md: ~4.9 cores of
    decord per 1,000 encoder frames/s, bench/results/decode.json), so every core but the one driving the
    encoder decodes.
    """
    if requested is not None:
        return max(0, requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // ranks - 1)


class DecoderCrash(SagaError):
    """A decoding worker process died (a decoder segfault, the OOM killer); `suspects`: the videos it may have
    been decoding (relative paths), for the next pass to decode alone first."""

    def __init__(self, message: str, suspects: list[str]) -> None:
        super().__init__(message)
        self.suspects = suspects


def worker_died(exc: BaseException) -> bool:
    """The fallback only (`stream.Workers` decides by the pool's processes): whether `exc` reads as torch's
    report of a dead worker, its SIGCHLD handler's or its queue check's RuntimeError (raised wherever the main
    thread is), or an EOFError/ConnectionError from a result the dead worker was still handing over. Text can
    err both ways: torch re-raises a live worker's own RuntimeError as "Caught RuntimeError in DataLoader
    worker process N", and another torch release may word a death otherwise."""
    if isinstance(exc, RuntimeError):
        return "DataLoader worker" in str(exc)
    return isinstance(exc, (EOFError, ConnectionError))


def read_videos(items: list[VideoInput], root: Path, policy: SamplingPolicy, preprocess: Callable,
                workers: int, pin_memory: bool = False, suspects: set[int] = frozenset(),
                limits: "DecodeLimits | None" = None) -> "VideoStream":
    """Decoded videos, `workers` processes ahead of the encoder (0: each in a child process of its own); the todo
    indices in `suspects` first, each decoded alone in a child process (`decode_alone`)."""
    from saga.pipeline.stream import DecodeLimits, VideoStream  # the pool side: it calls back into this module

    return VideoStream(items, root, policy, preprocess, workers, pin_memory, sorted(suspects),
                       limits or DecodeLimits())


@dataclass
class Lone:
    """A video being decoded in a child process of its own (`start_alone`, read by `finish_alone`)."""

    child: BaseProcess
    receive: Connection
    index: int
    fingerprint: tuple[int, int] | None
    expect: tuple[tuple[int, ...], tuple[int, ...], torch.dtype]
    limit: float
    deadline: float


def decode_alone(path: Path, policy: SamplingPolicy, preprocess: Callable, index: int,
                 limit: float | None = None) -> DecodedVideo:
    """`decode_one` in a child process: a file that crashes the decoder there becomes a failed video, and so
    does one whose child hands back something other than its decoded video (`_from_bytes`), more than one can
    take (`child_answer.receive`), or no answer within `limit` (None: `ALONE_LIMIT_S`). The record's size and
    mtime are the parent's own stat, taken before the child starts: nothing the child says is the file's
    identity."""
    return finish_alone(start_alone(path, policy, preprocess, index, limit))


def start_alone(path: Path, policy: SamplingPolicy, preprocess: Callable, index: int,
                limit: float | None = None) -> Lone:
    """The child of `decode_alone` started, its deadline running: several can decode side by side."""
    limit = ALONE_LIMIT_S if limit is None else limit
    expect = _expected(policy, preprocess)
    context = multiprocessing.get_context()  # the DataLoader's too
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_decode_into, args=(send, path, policy, preprocess, index), daemon=True)
    fingerprint = file_fingerprint(path)
    with held_signals():
        child.start()
    send.close()
    return Lone(child, receive, index, fingerprint, expect, limit, time.monotonic() + limit)


def finish_alone(lone: Lone) -> DecodedVideo:
    """The video `lone`'s child hands back, or why it has none; the child is gone when this returns."""
    child, index, expect, deadline = lone.child, lone.index, lone.expect, lone.deadline
    data, malformed, patience = [], "", time.monotonic()  # killed at once unless it answered or hung up
    try:
        data, patience = child_answer.receive(lone.receive, (SCALARS_LIMIT, arrays_limit(*expect)), deadline), deadline
    except EOFError:  # it died before sending everything (a core dump may take a while)
        patience = deadline
    except MalformedAnswer as exc:
        malformed = str(exc)
    except NoAnswer:
        pass
    finally:
        lone.receive.close()
        exited = child_answer.end(child, patience)
    if exited and data and child.exitcode == 0 and not malformed:
        try:
            video = _from_bytes(*data, index=index, expect=lambda: expect)
            video.fingerprint = lone.fingerprint
            return video
        except MalformedAnswer as exc:
            malformed = str(exc)
    return DecodedVideo(index=index, fingerprint=lone.fingerprint,
                        error=clipped(_alone_error(malformed, child, exited, lone.limit)))


def _alone_error(malformed: str, child: BaseProcess, exited: bool, limit: float) -> str:
    if malformed:
        return malformed_text(malformed)
    if not exited:
        return (f"the decoder's process gave no answer within {took(limit)} (decoding it alone): it was "
                "stopped and the file is recorded as failed (it may be crafted to hang the decoder; --retry-failed "
                "tries it again, --alone-limit gives it longer)")
    return f"the decoder crashed on this file (decoding it alone: {_exit_text(child.exitcode)})"


def malformed_text(why: str) -> str:
    return f"{MALFORMED} ({why}); the file may be crafted to attack the decoder: it is recorded as failed"


def _decode_into(send: Connection, path: Path, policy: SamplingPolicy, preprocess: Callable, index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    die_with_parent()
    torch.set_num_threads(1)
    data = _to_bytes(decode_one(path, policy, preprocess, index))
    try:
        for message in data:
            send.send_bytes(message)
    except OSError:  # the parent stopped listening (Ctrl-C): nothing to report
        pass
    send.close()


def _to_bytes(video: DecodedVideo) -> tuple[bytes, bytes]:
    """JSON of the scalars and safetensors of the arrays: data only, so nothing the child sends (a child
    a crafted video took over, say) can make the parent run code, as unpickling would."""
    scalars = {f.name: getattr(video, f.name) for f in dataclass_fields(video) if f.name not in _ARRAYS}
    arrays = {name: torch.as_tensor(getattr(video, name)).contiguous() for name in _ARRAYS
              if getattr(video, name) is not None}
    return json.dumps(scalars).encode(), save_tensors(arrays)


def _from_bytes(scalars: bytes, arrays: bytes, index: int,
                expect: Callable[[], tuple[tuple[int, ...], tuple[int, ...], torch.dtype]] | None = None
                ) -> DecodedVideo:
    """The video a child sent, checked field by field as someone else's data: its own `index`, each scalar of
    its type and range (`check_scalars`), and (decoded) the arrays `expect()` says: (W, T) of the mask, a
    frame's shape and dtype.
    Anything else raises `MalformedAnswer` (one line), so that video fails and the pass goes on."""
    try:
        fields, tensors = json.loads(scalars), load_tensors(arrays)
    except Exception as exc:  # any parse failure of someone else's bytes (JSON, UTF-8, depth, safetensors)
        raise MalformedAnswer(reason(exc, BRIEF_LIMIT)) from None
    check_scalars(fields, {f.name for f in dataclass_fields(DecodedVideo)} - set(_ARRAYS), index)
    fp = fields["fingerprint"]
    video = DecodedVideo(**{**fields, "fingerprint": None if fp is None else tuple(fp)})
    if video.ok:
        video.pixels, video.mask, video.timestamps = checked_arrays(tensors, expect)
    return video


def _expected(policy: SamplingPolicy, preprocess: Callable) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
    """(W, T), and one frame's shape and dtype as `preprocess` makes it (any frame: it resizes to its own size)."""
    probe = preprocess_frames(preprocess, np.zeros((1, 8, 8, 3), np.uint8))
    return (policy.windows, policy.frames), tuple(probe.shape[1:]), probe.dtype


def took(seconds: float) -> str:
    """Seconds as a message says them: \"30 min\", \"1.5 s\"."""
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
