"""What θ fits on the train pool before training: the content basis and the window statistics' scale.

With 2–5 labelled videos per class, 1,000+ content dimensions let θ memorise which clip each
labelled video was cut from; the generator's static marks (colour cast, decoder pattern) live in
a few directions. So before training, a k-dimensional basis is fitted on the *whole* train pool
(never on the test split) and stored with the weights; θ then learns from k numbers per frame.

- "pca": the top-k principal directions of the videos' mean features, each scaled to unit
  variance. Needs no labels at all, so the 1-stage baseline may use it too.
- "gev": the directions in which fakes vary most relative to real videos (generalised
  eigenvectors of the fakes' against the reals' covariance). Real videos carry only content
  variation, fakes also the generators' marks; needs the abundant real/fake labels only.

The window statistics (ModelConfig.video_stats) are standardised with their mean and standard
deviation over the same pool, so that distances of any encoder's features arrive at one scale.

Measured on the built-in benchmark in docs/ablation.md.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.model import VideoTransformer
from saga.model.inference import take_subwindow
from saga.model.temporal import sequence_statistics, stats_dim
from saga.taxonomy import REAL

METHODS = ("pca", "gev")
MAX_VIDEOS = 20_000  # a seeded sample of the pool beyond this: the covariance of 20k videos is stable
READ_BATCH = 256
RIDGE = 1e-2  # of the reals' mean variance: keeps the generalised eigenproblem well posed


def pool_summaries(cache: FeatureCache, records: Sequence[VideoRecord], frames: int,
                   lags: int) -> tuple[np.ndarray, np.ndarray]:
    """One read of `records`: each video's mean feature over its real frames (all windows), (n, D), and
    the raw window statistics of its evaluation sub-window (window 0, centred T'), (n, S); float64."""
    means, stats = [np.zeros((0, cache.dim))], [np.zeros((0, stats_dim(lags)))]
    for lo in range(0, len(records), READ_BATCH):
        data = cache.read(records[lo:lo + READ_BATCH])
        x = data["features"].astype(np.float64)  # (n, W, T, D)
        m = data["mask"].astype(np.float64)[..., None]
        means.append((x * m).sum(axis=(1, 2)) / np.maximum(m.sum(axis=(1, 2)), 1.0))
        if lags:
            sub, sub_mask = take_subwindow(data["features"][:, 0], data["mask"][:, 0], frames)
            stats.append(sequence_statistics(torch.from_numpy(sub.astype(np.float32)), torch.from_numpy(sub_mask),
                                             lags).numpy().astype(np.float64))
    return np.concatenate(means), np.concatenate(stats)


def video_means(cache: FeatureCache, records: Sequence[VideoRecord]) -> np.ndarray:
    """(n, D) float64: each video's mean feature over its real frames (all windows)."""
    return pool_summaries(cache, records, 1, 0)[0]


def _pca(means: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    centre = means.mean(axis=0)
    _, sing, vt = np.linalg.svd(means - centre, full_matrices=False)
    scale = np.maximum(sing[:k] / np.sqrt(max(len(means) - 1, 1)), 1e-8)
    return centre, vt[:k].T / scale


def _gev(means: np.ndarray, real: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import scipy.linalg

    if real.sum() < 2 or (~real).sum() < 2:
        raise SagaError("content basis 'gev' needs at least 2 real and 2 fake train videos; use 'pca'")
    reals, fakes = means[real], means[~real]
    s_real = np.cov(reals, rowvar=False)
    s_real += RIDGE * np.trace(s_real) / len(s_real) * np.eye(len(s_real))
    values, vectors = scipy.linalg.eigh(np.cov(fakes, rowvar=False), s_real)
    top = vectors[:, np.argsort(values)[::-1][:k]]
    proj = (fakes - fakes.mean(axis=0)) @ top
    scale = np.maximum(proj.std(axis=0), 1e-8)
    return means.mean(axis=0), top / scale


def fit_basis(means: np.ndarray, real: np.ndarray, k: int, method: str = "pca") -> tuple[np.ndarray, np.ndarray]:
    """centre (D,) and basis (D, k), float32; each basis coordinate has unit variance on the pool."""
    if method not in METHODS:
        raise SagaError(f"content basis method must be one of {METHODS}, got {method!r}")
    n, dim = means.shape
    if not 1 <= k <= min(dim, n - 1):
        raise SagaError(f"content basis of {k} directions needs at least {k + 1} train videos and dim >= {k} "
                        f"(have {n} videos, dim {dim}); lower content_basis")
    centre, basis = _pca(means, k) if method == "pca" else _gev(means, np.asarray(real, bool), k)
    return centre.astype(np.float32), basis.astype(np.float32)


def needs_pool_fit(model: VideoTransformer) -> bool:
    """Whether θ takes something fitted on the pool: a content basis (content in its input) or window statistics."""
    c = model.config
    return bool(c.content_basis and c.inputs != "temporal") or bool(c.video_stats)


def fit_to_pool(model: VideoTransformer, cache: FeatureCache, records: Sequence[VideoRecord], method: str,
                seed: int, frames: int) -> None:
    """Fit what `model` needs from the pool (`records`, a seeded sample of at most MAX_VIDEOS) and install it."""
    c = model.config
    if not needs_pool_fit(model):
        return
    if len(records) > MAX_VIDEOS:
        keep = np.sort(np.random.default_rng(seed).choice(len(records), MAX_VIDEOS, replace=False))
        records = records.take(keep) if hasattr(records, "take") else [records[i] for i in keep]
    records = list(records)
    means, stats = pool_summaries(cache, records, frames, c.video_stats)
    if c.content_basis and c.inputs != "temporal":
        real = np.array([r.labels.get("BIN-L") == REAL for r in records])
        centre, basis = fit_basis(means, real, c.content_basis, method)
        model.set_basis(torch.from_numpy(centre), torch.from_numpy(basis))
    if c.video_stats:
        model.set_stats_norm(torch.from_numpy(stats.mean(axis=0)).float(), torch.from_numpy(stats.std(axis=0)).float())
