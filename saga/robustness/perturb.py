"""Re-encoding perturbations as data, and the one PyAV pass that applies them to a video.

Real videos reach a detector after uploads, crops and re-compression, so attribution must be
measured (and can be trained) on such copies. A `Perturbation` is plain data (crop, scale, frame
stride, CRF), parsed from a short name (`crf28`, `downscale0.5`, `crop0.8`, `fps0.5`, `social`);
`apply` decodes the source frame by frame (bounded memory), transforms each frame in a fixed order
(centre crop -> downscale -> drop frames) and re-encodes once with H.264 at the perturbation's
CRF. Every perturbation re-encodes: the ones that are not about compression use CRF 18 (visually
lossless), so they measure the geometric or temporal change, not a second heavy compression.
The encoder runs single-threaded without x264's macroblock tree, so the output is byte-identical
from one run to the next; the write is atomic (`saga.fileio.atomic_path`), so a killed run never
leaves a half-written copy that a resumed run would reuse.
"""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from saga.errors import SagaError
from saga.fileio import atomic_path
from saga.pipeline.decode import decoded_frames, upright

LIGHT_CRF = 18  # re-encode of the perturbations that are not about compression
X264 = {"preset": "veryfast", "threads": "1", "x264-params": "no-mbtree=1"}
DEFAULT = ("crf23", "crf28", "crf35", "downscale0.5", "crop0.8", "fps0.5", "social")


@dataclass(frozen=True)
class Perturbation:
    """One re-encoding: centre crop (side fraction), then downscale, then keep every `stride`-th frame, then CRF."""

    name: str
    crf: int = LIGHT_CRF
    scale: float = 1.0
    crop: float = 1.0
    stride: int = 1

    @property
    def description(self) -> str:
        steps = []
        if self.crop < 1:
            steps.append(f"centre crop {self.crop:g} of each side (not resized back)")
        if self.scale < 1:
            steps.append(f"downscale x{self.scale:g} (area)")
        if self.stride > 1:
            steps.append(f"keep 1 frame in {self.stride} (1/{self.stride} the frame rate)")
        steps.append(f"H.264 CRF {self.crf} (x264 veryfast)")
        return ", then ".join(steps)


def parse(name: str) -> Perturbation:
    """`crfN` | `downscaleX` | `cropX` | `fpsX` (X in (0, 1), fps as 1/k) | `social`; a bad name is one line."""
    text = name.strip().lower()
    if text == "social":  # an upload: the platform crops, downsizes and compresses hard, in that order
        return Perturbation("social", crf=28, scale=0.75, crop=0.9)
    m = re.fullmatch(r"(crf|downscale|crop|fps)(\d+(?:\.\d+)?)", text)
    if not m:
        raise SagaError(f"unknown perturbation {name!r}; use crfN, downscaleX, cropX, fpsX (X < 1) or social, "
                        f"e.g. {','.join(DEFAULT)}")
    kind, value = m.group(1), float(m.group(2))
    if kind == "crf":
        if not 0 <= value <= 51 or value != int(value):
            raise SagaError(f"{name}: CRF must be an integer in 0..51")
        return Perturbation(text, crf=int(value))
    if not 0 < value < 1:
        raise SagaError(f"{name}: the factor must be in (0, 1), e.g. {kind}0.5")
    if kind == "downscale":
        return Perturbation(text, scale=value)
    if kind == "crop":
        return Perturbation(text, crop=value)
    stride = round(1 / value)
    if abs(stride * value - 1) > 1e-6:
        raise SagaError(f"{name}: the frame-rate factor must be 1/k (0.5, 0.25, ...)")
    return Perturbation(text, stride=stride)


def parse_list(text: str | None, option: str = "--perturb") -> list[Perturbation]:
    """A comma-separated list (None: `DEFAULT`); names must be unique and name different re-encodings.

    An empty list (`""`, `","`) is refused: it used to mean the default list, or to run the clean row
    alone and overwrite robustness.json."""
    if text is None:
        text = ",".join(DEFAULT)
    out = [parse(n) for n in text.split(",") if n.strip()]
    if not out:
        raise SagaError(f"{option} {text!r} names no perturbation; pass e.g. crf23,crf28, or leave it out for "
                        f"all of {','.join(DEFAULT)}")
    if len({p.name for p in out}) != len(out) or any(p.name == "clean" for p in out):
        raise SagaError(f"perturbations must be unique and not 'clean': {text!r}")
    seen: dict[tuple, str] = {}
    for p in out:
        same = seen.setdefault(astuple(p)[1:], p.name)
        if same != p.name:
            raise SagaError(f"{option}: {same} and {p.name} are the same perturbation; keep one of them")
    return out


def _even(x: float) -> int:
    return max(2, int(x) // 2 * 2)


def output_size(p: Perturbation, width: int, height: int) -> tuple[int, int, int, int]:
    """(crop_w, crop_h, out_w, out_h) for a source of width x height; even, as 4:2:0 needs.

    An odd side loses one pixel row or column to the (centre) crop even without `cropX`, so that
    with no downscale the output is the crop's size and nothing is resampled: resizing 853x481 to
    852x480 would blur exactly the pixel-level marks the perturbations are meant to test."""
    cw, ch = _even(width * p.crop), _even(height * p.crop)
    return cw, ch, _even(cw * p.scale), _even(ch * p.scale)


def apply(p: Perturbation, src: Path, dst: Path) -> Path:
    """Write `p` applied to video `src` as H.264 MP4 at `dst` (atomic); any decode/encode failure is a SagaError."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(src)) as source:
            if not source.streams.video:
                raise SagaError(f"{src}: no video stream (audio-only or data file); leave it out of the videos")
            stream = source.streams.video[0]
            rate = Fraction(stream.average_rate or stream.guessed_rate or 25).limit_denominator(1001)
            with atomic_path(dst) as tmp:
                written = _reencode(p, source, tmp, rate / p.stride)
        if written == 0:
            dst.unlink(missing_ok=True)
            raise SagaError(f"{src}: no decodable frame")
    except SagaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise SagaError(f"{src}: cannot re-encode ({type(exc).__name__}: {exc})") from None
    return dst


def _reencode(p: Perturbation, source: av.container.InputContainer, tmp: Path, rate: Fraction) -> int:
    with av.open(str(tmp), mode="w", format="mp4", container_options={"fflags": "+bitexact"}) as out:
        video = None
        written = 0
        for i, frame in enumerate(decoded_frames(source, [])):  # a truncated video: the frames that decode, as extract does
            if i % p.stride:
                continue
            img = upright(frame)  # the copy is written upright, without the display matrix it would lose
            cw, ch, ow, oh = output_size(p, img.shape[1], img.shape[0])
            top, left = (img.shape[0] - ch) // 2, (img.shape[1] - cw) // 2
            img = np.ascontiguousarray(img[top:top + ch, left:left + cw])
            if video is None:
                video = out.add_stream("libx264", rate=rate, options={"crf": str(p.crf), **X264})
                video.width, video.height, video.pix_fmt = ow, oh, "yuv420p"
                video.codec_context.thread_count = 1
            new = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
                width=video.width, height=video.height, format="yuv420p", interpolation="AREA")
            new.pts = written
            out.mux(video.encode(new))
            written += 1
        if video is not None:
            out.mux(video.encode(None))
    return written
