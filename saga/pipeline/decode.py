"""Decode the sampled frames of one video: decord first (fast, random access), PyAV fallback.

Why two backends: decord seeks and batch-decodes quickly but cannot read GIF, fails on many
truncated files, sometimes reports more frames than it can decode, and in some formats returns
other frames than asked without an error (`decord_reads_right` sends those to PyAV); PyAV reads
almost anything FFmpeg can. Both give upright frames and times from the stream's start. Every failure becomes a one-line DecodeError so extraction can record
the reason and go on: no other exception type escapes decode_video for a bad input file.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from saga.errors import DecodeError, SagaError, clipped, shown
from saga.pipeline.sampling import SamplingPolicy

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_FPS = 25.0
_stderr_lock = threading.Lock()


@dataclass
class Clip:
    """Sampled frames of one video; padded positions repeat the last real frame."""

    frames: np.ndarray  # (W, T, H, W_, 3) uint8 RGB
    mask: np.ndarray  # (W, T) bool, False where the last frame was repeated as padding
    timestamps: np.ndarray  # (W, T) float32 seconds of each sampled frame
    fps: float
    n_frames: int
    backend: str  # "decord" | "pyav"


def _debug() -> bool:
    return os.environ.get("SAGA_DEBUG", "") not in ("", "0")


def _fail(path: Path, reason: str) -> DecodeError:
    """One-line DecodeError naming the file; .path and .reason let extraction log a table."""
    reason = clipped(reason)  # a long path loses its middle, never the fix at the end
    err = DecodeError(f"{shown(path)}: {reason}")  # one line even when the name holds a newline
    err.path, err.reason = path, reason  # type: ignore[attr-defined]
    return err


def probe_path(path: Path) -> None:
    """Cheap checks before any decoder: their messages are clearer than FFmpeg's.

    Every lack of permission, the file's or a folder's on its way (an unsearchable folder makes even the
    stat fail), is one "permission denied ... chmod ..." reason: `saga extract` retries such failures once fixed.
    """
    path = Path(path)
    try:
        size = _probe(path)
    except PermissionError:
        raise _fail(path, denied_reason(path)) from None
    except OSError as e:
        raise _fail(path, f"cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise _fail(path, "empty file (0 bytes)")


def _probe(path: Path) -> int:
    """The size of `path` once it is known to be a regular file that opens and reads; OSErrors escape."""
    if path.is_symlink() and not path.exists():
        raise _fail(path, f"broken link (target {os.readlink(path)} does not exist)")
    if not path.exists():
        raise _fail(path, "file not found")
    if path.is_dir():
        raise _fail(path, "is a directory, not a video file")
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO, socket or device: open() could block forever
        raise _fail(path, f"not a regular file ({_kind(st.st_mode)}); only video files are read")
    # O_NONBLOCK: even if the file was swapped for a FIFO since the stat, the open cannot hang
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        fh = open(fd, "rb")  # owns fd from here
    except BaseException:
        os.close(fd)
        raise
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise _fail(path, "not a regular file; only video files are read")
        fh.read(1)
    return st.st_size


def denied_reason(path: Path) -> str:
    """Why `path` could not be read for lack of permission, naming the folder on its way that cannot be
    searched (chmod a-x) when there is one, with the chmod that fixes it."""
    full = Path(os.path.abspath(path))
    folder = next((p for p in reversed(full.parents) if not os.access(p, os.X_OK)), None)
    if folder is None:
        return f"permission denied (file is not readable); chmod a+r {shown(full)} and rerun"
    return f"permission denied (folder {shown(folder)} cannot be searched); chmod a+rx {shown(folder)} and rerun"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null: decord's C++ LOG(ERROR) lines ignore its log level.

    Serialised by a lock; SAGA_DEBUG=1 keeps stderr so the native messages can be seen.
    """
    if _debug():
        yield
        return
    with _stderr_lock:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (embedded interpreter): nothing to silence
            yield
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def decode_video(path: Path, policy: SamplingPolicy, backend: str = "auto") -> Clip:
    """Decode the frames `policy` picks; "auto" tries decord and falls back to PyAV."""
    if backend not in BACKENDS:
        raise SagaError(f"decode backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = Path(path)
    probe_path(path)
    if backend == "decord" or backend == "auto" and decord_reads_right(path):
        try:
            return _decode_decord(path, policy)
        except Exception as e:  # decord raises RuntimeError/DECORDError/...: fall back
            if backend == "decord":
                raise _fail(path, f"decord: {_decord_reason(e)}") from e
    try:
        return _decode_pyav(path, policy)
    except DecodeError:
        raise
    except Exception as e:  # anything else FFmpeg/PyAV throws is still a bad file, not a crash
        raise _fail(path, f"pyav: {type(e).__name__}: {e}") from e


# What decord seeks to the right frame in: it returned other frames than asked, with no error, for
# H.264 in AVI and MPEG-TS, MPEG-2 (.mpg), MPEG-4 Part 2 with B-frames and HEVC (a keyframe among the
# picks), and converted 10-bit video to other pixels than FFmpeg. Anything else goes to PyAV.
# Bump DECODER_RULE when a backend is found to misread a format: `saga extract` then re-extracts the
# records decoded under the old rule (saga.pipeline.decoder_audit).
DECODER_RULE = 2
DECORD_CONTAINERS = ("mp4", "mov", "matroska", "webm")
DECORD_CODECS = frozenset({"h264", "vp8", "vp9", "av1", "mjpeg"})
INTRA_ONLY = frozenset({"mjpeg"})  # every frame a keyframe: nothing to seek wrong, in any container


def decord_reads_right(path: Path) -> bool:
    """Whether decord decodes the frames asked for in this file (an 8-bit stream of a safe codec and container)."""
    import av

    try:
        with _open_av(path) as container:
            ctx = container.streams.video[0].codec_context
            formats = set(container.format.name.split(","))
            bits = max((c.bits for c in av.VideoFormat(ctx.pix_fmt).components), default=8) if ctx.pix_fmt else 8
            safe = ctx.name in INTRA_ONLY or bool(formats & set(DECORD_CONTAINERS)) and ctx.name in DECORD_CODECS
            return safe and bits <= 8
    except Exception:  # not openable here: let PyAV say why, in its own words
        return False


def upright(frame: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded frame as RGB, turned as its display matrix says (a phone's portrait video), like decord does."""
    rgb = frame.to_ndarray(format="rgb24", **({"width": size[0], "height": size[1]} if size else {}))
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _decode_decord(path: Path, policy: SamplingPolicy) -> Clip:
    """decord: one batched decode of the unique indices, then fan out to the (W, T) grid."""
    import decord

    if not _debug() and hasattr(decord, "logging"):
        decord.logging.set_level(decord.logging.QUIET)
    with _quiet_stderr():  # only the open logs on its own; keep the silenced span short
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    idx, mask = policy.indices(n)
    uniq, inv = np.unique(idx, return_inverse=True)  # decode each needed frame once, in order
    batch = vr.get_batch(uniq.tolist())  # raises when the count overstates the data
    arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # any bridge
    fps = float(vr.get_avg_fps())
    fps = fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS
    try:
        ts = np.asarray(vr.get_frame_timestamp(uniq.tolist()), dtype=np.float64)[:, 0]
    except Exception:
        ts = uniq / fps
    del vr
    if arr.ndim != 4 or arr.shape[0] != len(uniq) or arr.shape[-1] != 3:
        raise RuntimeError(f"decord returned shape {arr.shape} for {len(uniq)} frames")
    if not (np.isfinite(ts).all() and ts.min(initial=0) >= -1e-3 and (np.diff(ts) > 0).all()):
        raise RuntimeError("decord's timestamps are not increasing from 0: its seeking is not to be trusted here")
    if ts.max(initial=0) > 1.5 * n / fps + 1.0:  # a one-frame MKV gave 9.2e15 s (one index: nothing to compare)
        raise RuntimeError("decord's timestamps lie beyond the video's duration: not to be trusted here")
    inv = inv.reshape(idx.shape)
    return Clip(frames=np.ascontiguousarray(arr[inv], dtype=np.uint8), mask=mask,
                timestamps=ts[inv].astype(np.float32), fps=fps, n_frames=n, backend="decord")


def _decord_reason(e: BaseException) -> str:
    """First line of a decord error without its '[12:00:00] /src/file.cc:61: ' prefix."""
    lines = str(e).strip().splitlines()
    return re.sub(r"^(\[[\d:]+\]\s*\S+:\d+:\s*)+", "", lines[0]) if lines else type(e).__name__


def _ffmpeg_reason(e: BaseException) -> str:
    """'Invalid data found when processing input (moov atom not found)' from a PyAV error."""
    text = getattr(e, "strerror", None) or str(e).split("\n")[0] or type(e).__name__
    detail = str(e).split("last error log:", 1)
    if len(detail) == 2:
        text = f"{text}: {detail[1].split(']', 1)[-1].strip()}"
    return text


def _open_av(path: Path) -> Any:
    import av

    if not _debug() and av.logging.get_level() is None:
        # PANIC: FFmpeg prints nothing, yet PyAV still records the "last error log" detail.
        av.logging.set_level(av.logging.PANIC)
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise _fail(path, f"not a video or truncated ({_ffmpeg_reason(e)})") from None
    except Exception as e:
        raise _fail(path, f"cannot open ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise _fail(path, "no video stream (audio-only or data file)")
    return container


def decoded_frames(container: Any, errors: list[str]) -> Iterator[Any]:
    """Decoded frames of the first video stream; corrupt packets are skipped, not fatal.

    A truncated file raises mid-stream; stopping there keeps the frames that did decode.
    """
    import av

    stream = container.streams.video[0]
    try:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except (av.FFmpegError, ValueError, OSError) as e:
                errors.append(_ffmpeg_reason(e))
                continue
            yield from decoded
    except (av.FFmpegError, ValueError, OSError) as e:  # demuxer hit the end of the data
        errors.append(_ffmpeg_reason(e))


def _scan(path: Path, wanted: set[int], fps: float, stop_early: bool
          ) -> tuple[int, dict[int, tuple[np.ndarray, float]], list[str]]:
    """One decoding pass: count frames, convert only `wanted` ones (never the whole video)."""
    kept: dict[int, tuple[np.ndarray, float]] = {}
    errors: list[str] = []
    last = max(wanted) if wanted else -1
    count = 0
    size: tuple[int, int] | None = None
    times: list[float] = []
    container = _open_av(path)
    with container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        for i, frame in enumerate(decoded_frames(container, errors)):
            count = i + 1
            times.append(math.nan if frame.time is None else float(frame.time) - start)  # from the stream's start
            if i in wanted:
                size = size or (frame.width, frame.height)  # guard against mid-stream resizes
                kept[i] = (upright(frame, size), times[i])
            if stop_early and i >= last:
                break
    if not (np.diff(times) > 0).all() or np.isnan(times).any():  # AVI with B-frames: decode-order times, or none
        kept = {i: (rgb, i / fps) for i, (rgb, _) in kept.items()}
    return count, kept, errors


def _decode_pyav(path: Path, policy: SamplingPolicy) -> Clip:
    """PyAV: trust stream.frames as a first guess, verify by counting, re-pick if it lied."""
    container = _open_av(path)
    with container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else DEFAULT_FPS
        claimed = int(stream.frames or 0)
    if claimed > 0:  # one full pass keeps the guessed picks and counts what really decodes
        idx, _ = policy.indices(claimed)
        count, kept, errors = _scan(path, set(idx.ravel().tolist()), fps, stop_early=False)
    else:  # no count in the header (webm, mkv, ...): a counting pass, no conversion
        count, kept, errors = _scan(path, set(), fps, stop_early=False)
    if count == 0:
        why = f" ({errors[0]})" if errors else ""
        raise _fail(path, f"truncated or corrupt: decoded 0 frames{why}")
    idx, mask = policy.indices(count)
    needed = set(idx.ravel().tolist())
    if not needed <= kept.keys():  # header count was wrong (e.g. truncated) or unknown
        _, kept, _ = _scan(path, needed, fps, stop_early=True)
        if not needed <= kept.keys():
            raise _fail(path, "decoding is not repeatable: second pass found fewer frames")
    frames = np.stack([kept[i][0] for i in idx.ravel()]).reshape(*idx.shape, *kept[int(idx[0, 0])][0].shape)
    ts = np.array([kept[i][1] for i in idx.ravel()], dtype=np.float32).reshape(idx.shape)
    return Clip(frames=frames, mask=mask, timestamps=ts, fps=fps, n_frames=count, backend="pyav")
