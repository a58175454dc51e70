"""Phase 1, step 1: decode and preprocess videos in DataLoader worker processes.

A video that cannot be decoded becomes a `DecodedVideo` with an error, never an exception,
so one bad file never stops the pass (the runner records it as failed and goes on).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from saga.errors import DecodeError, SagaError
from saga.pipeline.decode import decode_video
from saga.pipeline.encoders import preprocess_frames
from saga.pipeline.inputs import VideoInput
from saga.pipeline.sampling import SamplingPolicy


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

    @property
    def ok(self) -> bool:
        return not self.error


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def decode_one(path: Path, policy: SamplingPolicy, preprocess: Callable, index: int = 0) -> DecodedVideo:
    """Decode `path` with `policy` and preprocess its frames; any failure is returned, not raised."""
    start = time.perf_counter()
    out = DecodedVideo(index=index)
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
    out.seconds = time.perf_counter() - start
    return out


class VideoDataset(Dataset):
    """The todo list as a map-style dataset, so worker processes decode in parallel."""

    def __init__(self, items: list[VideoInput], root: Path, policy: SamplingPolicy, preprocess: Callable) -> None:
        self.items, self.root, self.policy, self.preprocess = items, root, policy, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> DecodedVideo:
        return decode_one(self.items[index].absolute(self.root), self.policy, self.preprocess, index)


def _identity(batch: DecodedVideo) -> DecodedVideo:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one decoding thread per worker: the workers are the parallelism


def decode_workers(requested: int | None) -> int:
    """Decoding processes: `requested`, or (None) this process's cores minus one, shared among torchrun ranks.

    Decoding is the bottleneck of extraction on a GPU (docs/performance.md: ~7 cores of decord
    per 1,000 encoder frames/s), so every core but the one driving the encoder decodes.
    """
    if requested is not None:
        return max(0, requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // ranks - 1)


def read_videos(items: list[VideoInput], root: Path, policy: SamplingPolicy, preprocess: Callable,
                workers: int, pin_memory: bool = False) -> Iterator[DecodedVideo]:
    """Decoded videos in todo order, `workers` processes ahead of the encoder (0: in this process)."""
    loader = DataLoader(VideoDataset(items, root, policy, preprocess), batch_size=None, shuffle=False,
                        num_workers=workers, collate_fn=_identity, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, pin_memory=pin_memory)
    done = 0
    try:
        for video in loader:
            yield video
            done += 1
    except RuntimeError as exc:  # a worker killed (the OOM killer on a huge video): one line, work kept
        if "DataLoader worker" not in str(exc):
            raise
        near = items[min(done, len(items) - 1)].rel
        raise SagaError(f"{root}: a decoding worker process died ({str(exc).splitlines()[0]}) at or after {near}; "
                        "the videos written so far are kept: rerun to resume, with fewer --workers if memory is "
                        "short") from None
