"""Decoding backends side by side: speed per core, scaling with worker processes, identical frames.

    python bench/decode.py [--size 1024x576] [--frames 120] [--sample 16] [--repeats 5] [--workers 1 2]

Why: extraction feeds the encoder from DataLoader worker processes that decode one video each
(`saga.pipeline.decode.decode_video`: decord first, PyAV fallback). On a GPU the question is how
many cores keep it fed; on any machine, which backend is fastest *and* gives the same pixels.

Clip: a synthetic GenVideo-sized H.264 clip (default 1024x576, 120 frames at 24 fps, x264 defaults
of saga.benchmark.videoio), textured and moving so the codec does real work. Each backend decodes
the frames `SamplingPolicy(frames=--sample)` picks (what extraction does: 16 consecutive frames from
the middle), and separately the whole clip. Scaling: N processes decode the clip concurrently,
each --repeats times; frames/s counts sampled frames delivered per second of wall time (TIMING:
process start and each worker's untimed warm-up decode excluded, every worker's clock starts together).
Frames: the sampled frames of each backend are compared with PyAV's (max |difference|, 0 = identical).
torchcodec is tried if it is importable (it needs the system's FFmpeg libraries).
Prints one JSON document; ratios > 1 mean faster than PyAV.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saga.benchmark.videoio import write_video  # noqa: E402
from saga.pipeline.decode import decode_video  # noqa: E402
from saga.pipeline.sampling import SamplingPolicy  # noqa: E402


def make_clip(path: Path, width: int, height: int, frames: int, seed: int = 0) -> Path:
    """Textured frames panning 3 px per frame: enough motion and detail for realistic decode cost."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (height // 8 + 1, (width + 3 * frames) // 8 + 1, 3), np.uint8)
    big = np.repeat(np.repeat(tex, 8, axis=0), 8, axis=1)
    smooth = (big.astype(np.int16) + np.roll(big, 4, axis=1)) // 2
    clip = np.stack([smooth[:height, 3 * t:3 * t + width] for t in range(frames)]).astype(np.uint8)
    return write_video(path, clip, fps=24.0)


def torchcodec_decode(path: Path, policy: SamplingPolicy) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder  # type: ignore[import-not-found]

    dec = VideoDecoder(str(path), dimension_order="NHWC")
    idx, _ = policy.indices(dec.metadata.num_frames)
    return dec.get_frames_at(indices=np.unique(idx).tolist()).data.numpy()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a batch job's share), not the host's
    os.cpu_count(): more decoding workers than cores would time them queueing for the same cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def backends() -> dict[str, Callable[[Path, SamplingPolicy], np.ndarray]]:
    found: dict[str, Callable[[Path, SamplingPolicy], np.ndarray]] = {
        "pyav": lambda p, pol: decode_video(p, pol, "pyav").frames[0],
    }
    try:
        importlib.import_module("decord")  # installed and importable
        found["decord"] = lambda p, pol: decode_video(p, pol, "decord").frames[0]
    except ImportError:
        pass
    try:
        importlib.import_module("torchcodec")
        found["torchcodec"] = torchcodec_decode
    except Exception:  # not installed, or its FFmpeg libraries are missing
        pass
    return found


TIMING = ("each worker process decodes once untimed (imports, first open), waits at a barrier with the "
          "others, then times its repeated decodes; frames/s = all workers' sampled frames / the slowest "
          "worker's timed loop (process start and warm-up excluded)")
_BARRIER: Any = None  # set in each scaling() worker: the timed loops of N workers start together
CLOCK: Callable[[], float] = time.perf_counter  # the workers' clock (a test swaps in a fake one: no timed asserts)


def _set_barrier(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def _timed(name: str, path: str, frames: int, repeats: int) -> float:
    """Seconds for `repeats` decodes (run in a worker process: one thread, like extraction's workers)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    fn = backends()[name]
    policy = SamplingPolicy(frames=frames)
    fn(Path(path), policy)  # warm: imports, first open
    if _BARRIER is not None:
        _BARRIER.wait(timeout=600)
    start = CLOCK()
    for _ in range(repeats):
        fn(Path(path), policy)
    return CLOCK() - start


def scaling(name: str, path: Path, frames: int, repeats: int, workers: list[int]) -> dict[str, Any]:
    """Sampled frames/s of n concurrent workers, from their own timed loops (see TIMING)."""
    out = {}
    for n in workers:
        barrier = multiprocessing.Barrier(n)
        with multiprocessing.Pool(n, initializer=_set_barrier, initargs=(barrier,)) as pool:  # all n start now
            seconds = pool.starmap(_timed, [(name, str(path), frames, repeats)] * n, chunksize=1)
        out[str(n)] = round(n * repeats * frames / max(seconds), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1024x576")
    ap.add_argument("--frames", type=int, default=120, help="frames in the synthetic clip")
    ap.add_argument("--sample", type=int, default=16, help="frames extraction samples (T)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, usable_cores()])
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", width, height, args.frames)
        names = backends()
        policy = SamplingPolicy(frames=args.sample)
        reference = names["pyav"](clip, policy)
        result: dict[str, Any] = {
            "benchmark": "decode", "machine": f"{usable_cores()} cores, {platform.processor() or platform.machine()}",
            "clip": {"size": args.size, "frames": args.frames, "codec": "h264", "bytes": clip.stat().st_size},
            "sampled_frames": args.sample, "timing": TIMING, "backends": {},
            "missing": sorted({"decord", "torchcodec"} - set(names)),
        }
        for name in names:
            per_core = scaling(name, clip, args.sample, args.repeats, [1])["1"]
            full = _timed(name, str(clip), args.frames, 1)
            frames = names[name](clip, policy)
            result["backends"][name] = {
                "sampled_fps_one_core": per_core,
                "ms_per_video_one_core": round(1000 * args.sample / per_core, 1),
                "whole_clip_fps_one_core": round(args.frames / full, 1),
                "fps_by_workers": scaling(name, clip, args.sample, args.repeats, args.workers),
                "max_abs_diff_vs_pyav": int(np.abs(frames.astype(np.int16) - reference.astype(np.int16)).max())
                if frames.shape == reference.shape else f"shape {frames.shape} vs {reference.shape}",
            }
        base = result["backends"]["pyav"]["sampled_fps_one_core"]
        for name, row in result["backends"].items():
            row["speed_vs_pyav"] = round(row["sampled_fps_one_core"] / base, 2)
        # encoder frames/s a GPU can take (SigLIP-So400m/14-384 on an H100/H200, bf16: ~1,000 frames/s)
        result["cores_to_feed_1000_fps"] = {n: round(1000 / r["sampled_fps_one_core"], 1)
                                            for n, r in result["backends"].items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
