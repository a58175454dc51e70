"""Writing small videos with PyAV: the synthetic benchmark and the tests' odd inputs.

Writes are atomic (temp file in the same folder + os.replace) so an interrupted
run never leaves a half-written video that a later extraction would trip over,
and encoders run single-threaded with no state that depends on uninitialised memory (x264's
macroblock tree is off), so the same frames give byte-identical files.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from saga.errors import SagaError
from saga.fileio import atomic_path

# codec -> (PyAV encoder, pixel format, default container, encoder options)
CODECS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    # x264's macroblock-tree rate control reads uninitialised lookahead memory at the end of short
    # clips: with it the same frames encode to different bytes from one call to the next.
    "h264": ("libx264", "yuv420p", "mp4",
             {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "no-mbtree=1"}),
    "mjpeg": ("mjpeg", "yuvj420p", "avi", {"q:v": "3", "threads": "1"}),
    "gif": ("gif", "rgb8", "gif", {"threads": "1"}),
    "vp9": ("libvpx-vp9", "yuv420p", "webm",
            {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}),
}
SUFFIX_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska",
                  ".webm": "webm", ".gif": "gif"}


def write_video(path: str | Path, frames: np.ndarray, fps: float, codec: str = "h264",
                options: dict[str, str] | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to `path` atomically; returns the path.

    The container comes from the suffix (else the codec's default). 4:2:0 codecs
    need even sizes, so odd frames are padded by repeating the last row/column.
    `options` override the encoder options (e.g. {"crf": "30"}).
    """
    path = Path(path)
    frames = _check_frames(frames)
    if codec not in CODECS:
        raise SagaError(f"unknown codec {codec!r}; use one of {', '.join(CODECS)}")
    enc, pix_fmt, default_fmt, opts = CODECS[codec]
    if pix_fmt.endswith("420p"):
        frames = _pad_even(frames)
    fmt = SUFFIX_FORMATS.get(path.suffix.lower(), default_fmt)
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise SagaError(f"{path}: fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _encode(tmp, fmt, frames, enc, pix_fmt, rate, {**opts, **(options or {})})
    return path


def _encode(tmp: Path, fmt: str, frames: np.ndarray, enc: str, pix_fmt: str,
            rate: Fraction, opts: dict[str, str]) -> None:
    with av.open(str(tmp), mode="w", format=fmt, container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(enc, rate=rate, options=opts)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.codec_context.thread_count = 1
        # numpy is ~20x faster than swscale's default path; PyAV's yuv420p arrays need height % 4 == 0
        planes = rgb_to_yuv420p(frames) if pix_fmt == "yuv420p" and frames.shape[1] % 4 == 0 else None
        for i, img in enumerate(frames):
            if planes is not None:
                frame = av.VideoFrame.from_ndarray(planes[i], format="yuv420p")
            else:
                frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB (H % 4 == 0, even W) -> (T, 3H/2, W) planar BT.601 limited-range YUV 4:2:0.

    BT.601 is what decoders assume for untagged SD video, so decoding gives the RGB back.
    """
    t, h, w, _ = frames.shape
    r, g, b = (frames[..., c].astype(np.float32) for c in range(3))
    out = np.empty((t, h * 3 // 2, w), np.uint8)
    out[:, :h] = np.clip(16.5 + (65.481 * r + 128.553 * g + 24.966 * b) / 255, 0, 255)
    r, g, b = ((x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4 for x in (r, g, b))
    u = np.clip(128.5 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255, 0, 255).astype(np.uint8)
    v = np.clip(128.5 + (112.0 * r - 93.786 * g - 18.214 * b) / 255, 0, 255).astype(np.uint8)
    out[:, h:h + h // 4] = u.reshape(t, h // 4, w)
    out[:, h + h // 4:] = v.reshape(t, h // 4, w)
    return out


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise SagaError(f"frames must have shape (T, H, W, 3) with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise SagaError(f"frames must be uint8, got {frames.dtype}")
    return np.ascontiguousarray(frames)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
