"""The probe's input: per video, the mean frame feature plus pooled, shift-invariant temporal statistics.

For the cosine distance between frames t and t+lag, and for the norm of x[t+lag] - x[t]:
for lag 1..4 the mean, std, min and max over t; the autocorrelation of the lag-1 sequence
at shifts 1..4; its 10 / 50 / 90 % quantiles. Only pairs of real frames count, so padding
and dropped frames change nothing; a periodic artefact gives the same statistics whatever
its phase (up to the clip's ends).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.model.inference import take_subwindow
from saga.model.temporal import sequence_statistics

LAGS = (1, 2, 3, 4)
SHIFTS = (1, 2, 3, 4)
QUANTILES = (0.1, 0.5, 0.9)
READ_BATCH = 256
FEATURE_VERSION = 1


def _sequence_names(name: str) -> list[str]:
    out = [f"{name}_lag{l}_{s}" for l in LAGS for s in ("mean", "std", "min", "max")]
    out += [f"{name}_lag1_acf{s}" for s in SHIFTS]
    out += [f"{name}_lag1_q{int(100 * q)}" for q in QUANTILES]
    return out


STAT_NAMES: tuple[str, ...] = (*_sequence_names("cosdist"), *_sequence_names("diffnorm"))


def feature_spec(frames: int | None, dim: int) -> dict[str, Any]:
    """What the probe's input is, recorded in config.json and the weights' metadata."""
    return {"version": FEATURE_VERSION, "window": 0, "frames": frames, "dim": dim, "mean_feature": dim,
            "lags": list(LAGS), "acf_shifts": list(SHIFTS), "quantiles": list(QUANTILES),
            "statistics": list(STAT_NAMES), "size": dim + len(STAT_NAMES)}


# -- features ------------------------------------------------------------------------------------
def _quantiles(seq: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros((seq.shape[0], len(QUANTILES)))
    for i in range(seq.shape[0]):
        vals = seq[i][valid[i]]
        if vals.size:
            out[i] = np.quantile(vals, QUANTILES)
    return out


def _lag1_quantiles(x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QUANTILES of the lag-1 cosine distance and difference norm over pairs of real frames."""
    n = x.shape[0]
    if x.shape[1] < 2:
        return np.zeros((n, len(QUANTILES))), np.zeros((n, len(QUANTILES)))
    a, b = x[:, :-1], x[:, 1:]
    valid = m[:, :-1] & m[:, 1:]
    cos = 1.0 - (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return _quantiles(np.maximum(cos, 0.0), valid), _quantiles(np.linalg.norm(b - a, axis=-1), valid)


def temporal_statistics(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift-invariant, mask-aware temporal statistics (len(STAT_NAMES) values) of one or many videos.

    features (T, D) or (n, T, D), mask (T,) or (n, T) bool (True = real frame); returns
    (S,) or (n, S) float32 in the order of STAT_NAMES.
    """
    x = np.asarray(features, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    single = x.ndim == 2
    if single:
        x, m = x[None], m[None]
    if x.ndim != 3 or m.shape != x.shape[:2]:
        raise SagaError(f"features (n, T, D) and mask (n, T) expected, got {x.shape} and {m.shape}")
    # θ's window statistics (the same code) + the lag-1 quantiles, per measure in STAT_NAMES order
    moments = sequence_statistics(torch.from_numpy(x), torch.from_numpy(m), len(LAGS)).numpy()
    per = moments.shape[1] // 2
    q_cos, q_norm = _lag1_quantiles(x, m)
    out = np.concatenate([moments[:, :per], q_cos, moments[:, per:], q_norm], axis=1).astype(np.float32)
    return out[0] if single else out


def mean_feature(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over real frames, (n, T, D) -> (n, D); a video without a real frame gets zeros."""
    x = np.asarray(features, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    cnt = np.maximum(m.sum(axis=-1, keepdims=True), 1)
    return ((x * m[..., None]).sum(axis=-2) / cnt).astype(np.float32)


def video_features(features: np.ndarray, mask: np.ndarray, frames: int | None = None) -> np.ndarray:
    """The probe's input from cached (n, W, T, D) features and (n, W, T) mask: window 0, [mean | statistics]."""
    x, m = np.asarray(features)[:, 0], np.asarray(mask)[:, 0]
    if frames is not None and frames < x.shape[1]:
        x, m = take_subwindow(x, m, frames)
    return np.concatenate([mean_feature(x, m), temporal_statistics(x, m)], axis=1)


def cache_features(cache: FeatureCache, records: Sequence[VideoRecord], frames: int | None = None,
                   batch: int = READ_BATCH) -> np.ndarray:
    """video_features of `records`, read `batch` videos at a time (memory bounded by the batch)."""
    size = cache.dim + len(STAT_NAMES)
    chunks = [np.zeros((0, size), np.float32)]
    for lo in range(0, len(records), batch):
        data = cache.read(records[lo:lo + batch])
        chunks.append(video_features(data["features"], data["mask"], frames))
    return np.concatenate(chunks)
