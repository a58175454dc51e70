"""Phase 1, step 2: the frozen encoder, batched across videos.

Frames of several short videos share one encoder batch, so a GPU sees full batches
whatever the clip length. The encoder is any `frames -> features` callable: the
runner passes `FrameEncoder.encode`, tests pass a fake.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from saga.pipeline.reader import DecodedVideo

EncodeFn = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) pixels -> (N, D) features
Encoded = tuple[DecodedVideo, np.ndarray]  # a video and its (W, T, D) float16 features


class EncodeStep:
    """Queues decoded videos until `batch_size` frames are waiting, then encodes them in one go."""

    def __init__(self, encode: EncodeFn, batch_size: int, windows: int, frames: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.encode, self.batch_size, self.windows, self.frames = encode, batch_size, windows, frames
        self.queued: list[DecodedVideo] = []
        self.seconds = 0.0

    @property
    def frames_per_video(self) -> int:
        return self.windows * self.frames

    def push(self, video: DecodedVideo) -> list[Encoded]:
        """Queue `video`; return the videos encoded now (none until a batch is full)."""
        self.queued.append(video)
        if len(self.queued) * self.frames_per_video >= self.batch_size:
            return self.flush()
        return []

    def flush(self) -> list[Encoded]:
        """Encode whatever is queued (the end of the pass)."""
        if not self.queued:
            return []
        videos, self.queued = self.queued, []
        pixels = torch.cat([v.pixels for v in videos])
        start = time.perf_counter()
        feats = torch.cat([self.encode(chunk) for chunk in pixels.split(self.batch_size)])
        feats = feats.to(torch.float16).cpu().numpy()
        self.seconds += time.perf_counter() - start
        n = self.frames_per_video
        return [(v, feats[i * n:(i + 1) * n].reshape(self.windows, self.frames, -1)) for i, v in enumerate(videos)]
