"""Which frames of a video the encoder sees: a small, serialisable, deterministic policy.

Why consecutive by default: generators leave their traces *between neighbouring frames*
(duplicated frames, interpolation, flicker). Uniform sparse sampling with a stride > 1 can
alias those traces away entirely (see /work/shared/reference/method.md), so the default is
one window of T consecutive frames from the middle of the video. Sampling is deterministic
(no randomness), so re-extracting a video always yields the same frames and features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from saga.errors import DecodeError, SagaError

MODES = ("consecutive", "uniform")
MAX_SAMPLED = 1024  # frames x windows decoded per video: far above any use (saga samples 16); more is a typo or hostile


def _as_int(name: str, value: Any) -> int:
    """Accept Python/NumPy integers (not bools, not floats) so configs fail loudly on typos."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SagaError(f"sampling: {name} must be an integer, got {value!r}")
    return int(value)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """Round .5 up (np.rint rounds half to even, which makes grids look irregular)."""
    return np.floor(x + 0.5).astype(np.int64)


@dataclass(frozen=True)
class SamplingPolicy:
    """How to pick W windows of T frame indices from a video of n frames.

    - ``consecutive``: each window is T consecutive frames. Window w is centred in the w-th
      of W equal segments of the video (W=1: the centred window, start = (n - T) // 2),
      clipped to stay inside the video, so windows overlap when the video is short.
    - ``uniform``: T indices evenly spaced over the whole video; W=1 gives exactly
      round(linspace(0, n - 1, T)). With W > 1 window w is the same grid shifted by w/W of
      the stride, where the stride s = (n - 1) / (T - 1 + (W - 1) / W) is chosen so that the
      first window starts at frame 0 and the last one ends at frame n - 1 (grids interleave).
    - ``n < T`` (both modes): frames 0..n-1, then the last frame repeated (UNITE's padding);
      the mask marks the repeats False, so mask.sum() counts real frames. saga's transformer masks
      padded frames out of attention, pooling and its statistics, so what fills them does not
      matter to it (UNITE's "better than zeros" is about models that see the padding).
    """

    frames: int = 16
    mode: str = "consecutive"
    windows: int = 1

    def __post_init__(self) -> None:
        frames = _as_int("frames", self.frames)
        windows = _as_int("windows", self.windows)
        if frames < 1:
            raise SagaError(f"sampling: frames must be >= 1, got {frames}")
        if windows < 1:
            raise SagaError(f"sampling: windows must be >= 1, got {windows}")
        if frames * windows > MAX_SAMPLED:
            raise SagaError(f"sampling: frames x windows must be <= {MAX_SAMPLED} frames per video, got "
                            f"{frames} x {windows}")
        if self.mode not in MODES:
            raise SagaError(f"sampling: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        # Normalise NumPy ints to plain ints so to_dict() is JSON/TOML friendly.
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "windows", windows)

    def indices(self, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(W, T) int64 frame indices and (W, T) bool mask of real (non-padded) frames."""
        n = _as_int("n_frames", n_frames)
        if n < 1:
            raise DecodeError("no decodable frame")
        T, W = self.frames, self.windows
        if n < T:
            row = np.minimum(np.arange(T, dtype=np.int64), n - 1)
            idx = np.tile(row, (W, 1))
            mask = np.tile(np.arange(T) < n, (W, 1))
            return idx, mask
        if self.mode == "consecutive":
            idx = self._consecutive(n)
        else:
            idx = self._uniform(n)
        return idx, np.ones((W, T), dtype=bool)

    def _consecutive(self, n: int) -> np.ndarray:
        """Starts centred in W equal segments: floor(((2w+1)n - WT) / 2W), clipped to [0, n-T]."""
        T, W = self.frames, self.windows
        w = np.arange(W, dtype=np.int64)
        starts = np.clip(((2 * w + 1) * n - W * T) // (2 * W), 0, n - T)
        return starts[:, None] + np.arange(T, dtype=np.int64)[None, :]

    def _uniform(self, n: int) -> np.ndarray:
        """Interleaved uniform grids; with n >= T the stride is >= 1, so no real frame repeats."""
        T, W = self.frames, self.windows
        if n == T:  # only one distinct grid fits: every frame once
            return np.tile(np.arange(T, dtype=np.int64), (W, 1))
        span = (T - 1) + (W - 1) / W
        stride = (n - 1) / span if span > 0 else 0.0  # span == 0 only for T == W == 1
        t = np.arange(T, dtype=np.float64)[None, :]
        offset = (np.arange(W, dtype=np.float64) / W)[:, None]
        return np.clip(_round_half_up((t + offset) * stride), 0, n - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, stored next to cached features so a cache knows how it was sampled."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingPolicy:
        """Inverse of to_dict; unknown keys are an error (a typo would silently use a default)."""
        if not isinstance(data, dict):
            raise SagaError(f"sampling: expected a table/dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"frames", "mode", "windows"})
        if unknown:
            raise SagaError(f"sampling: unknown key(s) {', '.join(map(str, unknown))} "
                            "(expected frames, mode, windows)")
        return cls(**data)
