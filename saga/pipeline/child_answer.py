"""A lone decoder child's answer (`reader.decode_alone`), read by the parent within bounds of its own, and
checked as someone else's data (`check_scalars`, `checked_arrays`).

Why not `Connection.recv_bytes`: it believes the length the sender writes (a child a crafted video took
over made the parent allocate whatever it claimed) and waits for ever (a child that never answered, stopped
half-way through a message or never exited hung the whole extraction). Here each message has a limit known
before it is read, from what a genuine answer can hold, and the whole answer a deadline. The framing is
multiprocessing's (the child sends with `send_bytes`): a "!i" length, or -1 and a "!Q" one from 2 GiB.
"""

from __future__ import annotations

import math
import os
import select
import struct
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Callable

import numpy as np
import torch

from saga.cache.manifest import INT_RANGES
from saga.errors import brief

MALFORMED = "the decoder's process handed back malformed data"
SCALARS_LIMIT = 1 << 20  # bytes of a child's JSON: a few numbers and the first line of an error
HEADER_SLACK = 64 << 10  # a safetensors header of three arrays takes a few hundred bytes
_CHUNK = 1 << 20
ARRAYS = ("pixels", "mask", "timestamps")
BACKENDS = ("", "decord", "pyav")  # "": failed before a decoder read it
_KINDS: dict[str, tuple[type, ...]] = {"index": (int,), "seconds": (int, float), "error": (str,),
                                       "fps": (int, float), "n_frames": (int,), "backend": (str,)}


class MalformedAnswer(ValueError):
    """What a child sent is not a decoded video's data (a crafted video may have taken it over)."""


class NoAnswer(Exception):
    """The child did not answer, or did not exit, before the deadline."""


def arrays_limit(windows: tuple[int, ...], frame: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes a genuine answer's arrays can take: per sampled frame its pixels, a mask byte and a time (at most
    float64), plus the safetensors header."""
    frames = math.prod(windows)
    return frames * (math.prod(frame) * torch.empty((), dtype=dtype).element_size() + 1 + 8) + HEADER_SLACK


def receive(conn: Connection, limits: tuple[int, ...], deadline: float) -> list[bytes]:
    """One message per limit, each within it, all before `deadline` (time.monotonic()); EOFError when the child
    hung up first, `MalformedAnswer` for a message over its limit (refused from its header, before it is read),
    `NoAnswer` past the deadline."""
    fd, messages = conn.fileno(), []
    for limit in limits:
        size = struct.unpack("!i", _read(fd, 4, deadline))[0]
        if size == -1:
            size = struct.unpack("!Q", _read(fd, 8, deadline))[0]
        if not 0 <= size <= limit:
            raise MalformedAnswer(f"a message of {size} bytes, more than the {limit} a decoded video's can take"
                                  if size > limit else f"a message length of {size}")
        messages.append(_read(fd, size, deadline))
    return messages


def _read(fd: int, size: int, deadline: float) -> bytes:
    poller = select.poll()  # not select(): no limit on the descriptor's number
    poller.register(fd, select.POLLIN)
    chunks, left = [], size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not poller.poll(math.ceil(wait * 1000)):
            raise NoAnswer
        chunk = os.read(fd, min(left, _CHUNK))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def end(child: BaseProcess, deadline: float) -> bool:
    """Wait for `child` to exit until `deadline`, then kill it; whether it exited by itself."""
    child.join(max(0.0, deadline - time.monotonic()))
    if child.exitcode is not None:
        return True
    child.kill()
    child.join()
    return False


def check_scalars(fields: Any, names: set[str], index: int) -> None:
    """`MalformedAnswer` unless `fields` are a decoded video's (`names`) for todo `index`, each of its type and of
    a value a decoder gives: they reach the manifest, where an n_frames past int64 broke every later read of
    the cache, a NaN fps is not JSON, and a backend or a multi-line error is printed as it came."""
    if not isinstance(fields, dict):
        raise MalformedAnswer(f"not a JSON object: {brief(fields)}")
    if set(fields) != names:
        raise MalformedAnswer(f"fields missing or unknown: {brief(sorted(set(fields) ^ names))}")
    for name, kinds in _KINDS.items():
        if not isinstance(fields[name], kinds) or isinstance(fields[name], bool):
            raise MalformedAnswer(f"{name} {brief(fields[name])}")
    if fields["index"] != index:
        raise MalformedAnswer(f"index {fields['index']}, not {index}: another video's")
    fp = fields["fingerprint"]
    if fp is not None and not (isinstance(fp, list) and len(fp) == 2 and all(type(v) is int for v in fp)):
        raise MalformedAnswer(f"fingerprint {brief(fp)}")
    low, high = INT_RANGES["n_frames"]  # the manifest's own bound: the value is written there
    wrong = [name for name, good in (("n_frames", low <= fields["n_frames"] <= high),
                                     ("fps", math.isfinite(fields["fps"]) and fields["fps"] >= 0),
                                     ("seconds", math.isfinite(fields["seconds"]) and fields["seconds"] >= 0),
                                     ("backend", fields["backend"] in BACKENDS),
                                     ("error", len(fields["error"].splitlines()) <= 1)) if not good]
    if wrong:
        raise MalformedAnswer(f"{wrong[0]} {brief(fields[wrong[0]])}")


def checked_arrays(tensors: dict[str, torch.Tensor], expect: Callable | None
                   ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The three arrays of a decoded video, of the shapes the encode step relies on: one video's rows too many or
    too few shifted every other video's features in its batch."""
    if set(tensors) != set(ARRAYS):
        raise MalformedAnswer(f"arrays {sorted(tensors)}, not {sorted(ARRAYS)}")
    pixels, mask, timestamps = (tensors[name] for name in ARRAYS)
    if mask.dtype != torch.bool or mask.ndim != 2 or timestamps.shape != mask.shape or pixels.ndim != 4 or (
            pixels.shape[0] != mask.numel() or not timestamps.is_floating_point()):
        raise MalformedAnswer(f"arrays of shapes {[tuple(t.shape) for t in (pixels, mask, timestamps)]}")
    windows, frame, dtype = expect() if expect is not None else (tuple(mask.shape), tuple(pixels.shape[1:]),
                                                                  pixels.dtype)
    if tuple(mask.shape) != windows or tuple(pixels.shape[1:]) != frame or pixels.dtype != dtype:
        raise MalformedAnswer(f"mask {tuple(mask.shape)} and pixels {tuple(pixels.shape)} {pixels.dtype}, not a "
                              f"{windows} mask and {frame} {dtype} frames")
    if not torch.isfinite(timestamps).all():  # a decoder's are seconds from the start (the cache keeps them)
        raise MalformedAnswer("timestamps not finite")
    return pixels, mask.numpy(), timestamps.numpy()
