"""Reading the feature cache for training: in memory for small sets, streamed shard by shard for big ones.

Both sources yield the same `Batch` (features, frame mask, target, record index)
through `batches(...)`, and give random access to any records through `take`
(stage 2 re-embeds mined positives and negatives). The mask always travels with
the features: padded and dropped frames are False and the model ignores them.

Views (T' <= T frames of a cached (W, T) sample), see `select`:
- evaluation: window 0, the T' frames centred on the window's real frames (the
  same rule as `saga evaluate`, `saga.model.inference.subwindow_starts`);
- training: a random window among W, a random T'-frame start among those that
  stay on real frames, then optional jitter (shift the start by up to ±j frames;
  frames pushed off the window become padding) and frame drop (each real frame
  masked off with probability p, at least one kept).

Determinism: every random draw comes from a numpy Generator seeded with
(seed, epoch, purpose), so an epoch's order and augmentation depend on nothing
else, which is what lets a resumed run reproduce an uninterrupted one.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from saga.cache.index import lazy
from saga.cache.manifest import VideoRecord
from saga.cache.reader import advise
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.model.inference import subwindow_starts
from saga.train.options import check_view

ORDER, AUGMENT = 0x0DE5, 0xA4C  # rng purposes
READ_AHEAD = 4  # shards the kernel is asked to read ahead of the one being read


@dataclass(frozen=True)
class View:
    """How a cached (W, T, D) sample becomes the model's (T', D) input."""

    frames: int
    train: bool = False
    jitter: int = 0
    frame_drop: float = 0.0

    def __post_init__(self) -> None:
        check_view(self.frames, self.jitter, self.frame_drop)


@dataclass
class Batch:
    """x (B, T', D) float32, mask (B, T') bool, y (B,) int64, index (B,) int64 into the source's records."""

    x: Tensor
    mask: Tensor
    y: Tensor
    index: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.x.to(device), self.mask.to(device), self.y.to(device), self.index)


def epoch_rng(seed: int, epoch: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(purpose)])


# -- frame selection ----------------------------------------------------------------------------
def _real_span(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last real frame per row of mask (B, T); a row without any: (0, T - 1)."""
    t = mask.shape[1]
    real = mask.any(1)
    first = np.where(real, mask.argmax(1), 0)
    last = np.where(real, t - 1 - mask[:, ::-1].argmax(1), t - 1)
    return first, last


def _train_starts(mask: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform start among those whose T' frames stay on the real frames (inside [0, T - T'])."""
    t = mask.shape[1]
    first, last = _real_span(mask)
    lo = np.clip(first, 0, t - frames)
    hi = np.clip(np.maximum(first, last - frames + 1), lo, t - frames)
    return rng.integers(lo, hi + 1).astype(np.int64)


def _gather_mask(mask: np.ndarray, start: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Clipped frame indices (B, T') and their mask: frames outside [0, T) are padding."""
    idx = start[:, None] + np.arange(frames)
    inside = (idx >= 0) & (idx < mask.shape[1])
    gi = np.clip(idx, 0, mask.shape[1] - 1)
    return gi, np.take_along_axis(mask, gi, 1) & inside


def _drop_frames(keep: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Mask each real frame off with probability p; a row that loses all keeps one random real frame."""
    dropped = keep & (rng.random(keep.shape) >= p)
    pick = np.where(keep, rng.random(keep.shape), -1.0).argmax(1)
    lost = ~dropped.any(1) & keep.any(1)
    dropped[np.flatnonzero(lost), pick[lost]] = True
    return dropped


def select(features: Tensor, mask: np.ndarray, view: View,
           rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor]:
    """features (B, W, T, D) (any float dtype), mask (B, W, T) -> x (B, T', D) float32, mask (B, T') bool."""
    b, w, t, _ = features.shape
    if view.frames > t:
        raise SagaError(f"{view.frames} frames asked but the cache holds {t} per window; "
                        "use fewer frames or a cache extracted with more")
    train = view.train and rng is not None
    win = rng.integers(0, w, size=b) if train and w > 1 else np.zeros(b, dtype=np.int64)
    m = mask[np.arange(b), win]
    if train:
        start = _train_starts(m, view.frames, rng)
        gi, keep = _gather_mask(m, start, view.frames)
        if view.jitter:
            shifted = start + rng.integers(-view.jitter, view.jitter + 1, size=b)
            gj, kj = _gather_mask(m, shifted, view.frames)
            ok = kj.any(1) | ~keep.any(1)  # never jitter a row onto padding only
            gi, keep = np.where(ok[:, None], gj, gi), np.where(ok[:, None], kj, keep)
        if view.frame_drop > 0:
            keep = _drop_frames(keep, view.frame_drop, rng)
    else:
        gi, keep = _gather_mask(m, subwindow_starts(m, view.frames), view.frames)
    win = np.asarray(win, np.int64)
    if b and (win == win[0]).all() and (gi == gi[0]).all() and (np.diff(gi[0]) == 1).all():
        lo = int(gi[0, 0])  # the common case (same window, same frames for every row): a slice, no gather
        x = features[:, int(win[0]), lo:lo + view.frames]
    else:
        rows = torch.from_numpy(np.arange(b))[:, None]
        x = features[rows, torch.from_numpy(win)[:, None], torch.from_numpy(gi)]
    return x.float(), torch.from_numpy(np.ascontiguousarray(keep))


def make_batch(features: Tensor, mask: np.ndarray, labels: np.ndarray, index: np.ndarray, view: View,
                rng: np.random.Generator | None) -> Batch:
    """One training/evaluation batch from (N, W, T, D) features: `view`'s sub-window and augmentation."""
    x, m = select(features, mask, view, rng)
    return Batch(x, m, torch.from_numpy(np.asarray(labels, np.int64)), torch.from_numpy(np.asarray(index, np.int64)))


# -- class balance --------------------------------------------------------------------------------
def class_rates(labels: np.ndarray) -> np.ndarray:
    """Per-class sampling rate r_c = (N / C) / n_c over the C classes present (0 for absent ones)."""
    counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
    present = counts > 0
    rates = np.zeros(counts.shape, np.float64)
    rates[present] = labels.size / present.sum() / counts[present]
    return rates


def balanced_epoch(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exactly balanced indices: each present class gets round(N / C) draws (cycling a fresh permutation)."""
    counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
    present = np.flatnonzero(counts)
    if not present.size:
        return np.zeros(0, np.int64)
    target = int(np.floor(labels.size / present.size + 0.5))
    out = []
    for c in present:
        members = np.flatnonzero(labels == c)
        reps = -(-target // members.size)
        out.append(np.concatenate([rng.permutation(members) for _ in range(reps)])[:target])
    return rng.permutation(np.concatenate(out))


def _copies(labels: np.ndarray, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic copies per sample: floor(r_c), plus one with probability frac(r_c) (expectation r_c)."""
    r = rates[labels]
    return (np.floor(r) + (rng.random(r.shape) < r - np.floor(r))).astype(np.int64)


def check_labels(labels: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    """Labels as an (n,) int64 array (zeros when None), or a one-line error when the count is wrong."""
    y = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64)
    if y.shape != (n,):
        raise SagaError(f"{y.shape[0]} labels for {n} records")
    if n and y.min() < 0:
        raise SagaError("records without a class at this level (label -1) must be filtered out first")
    return y


# -- sources --------------------------------------------------------------------------------------
class InMemoryFeatures:
    """A split (or stage-2 subset) read once into float32 tensors; for sets that fit in memory.

    Args:
        cache: the feature cache.
        records: the videos (ok records), in the order `index` refers to.
        level_labels: target class index per record (>= 0); None = all 0 (e.g. for embedding only).
    """

    def __init__(self, cache: FeatureCache, records: Sequence[VideoRecord],
                 level_labels: Sequence[int] | np.ndarray | None = None, chunk: int = 1024) -> None:
        self.records = _keep(records)
        self.labels = check_labels(level_labels, len(self.records))
        n, w, t, d = len(self.records), cache.windows, cache.frames, cache.dim
        self.features = torch.empty((n, w, t, d), dtype=torch.float32)
        self.mask = torch.empty((n, w, t), dtype=torch.bool)
        for lo in range(0, n, chunk):  # chunked: peak memory is the float32 copy, not float16 + float32
            data = cache.read(self.records[lo:lo + chunk])
            self.features[lo:lo + chunk] = torch.from_numpy(data["features"])
            self.mask[lo:lo + chunk] = torch.from_numpy(data["mask"])

    def __len__(self) -> int:
        return len(self.records)

    def take(self, index: np.ndarray, view: View, rng: np.random.Generator | None = None) -> Batch:
        index = np.asarray(index, np.int64)
        t = torch.from_numpy(index)
        return make_batch(self.features[t], self.mask[t].numpy(), self.labels[index], index, view, rng)

    def batches(self, batch_size: int, view: View, *, seed: int = 0, epoch: int = 0, shuffle: bool = False,
                balance: bool = False) -> Iterator[Batch]:
        """One epoch: all records once (shuffled if asked), or an exactly class-balanced draw."""
        rng = epoch_rng(seed, epoch, ORDER)
        aug = epoch_rng(seed, epoch, AUGMENT) if view.train else None
        if balance:
            order = balanced_epoch(self.labels, rng)
        else:
            order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        for lo in range(0, order.size, batch_size):
            yield self.take(order[lo:lo + batch_size], view, aug)

    def epoch_size(self, balance: bool = False) -> int:
        if not balance:
            return len(self)
        present = np.count_nonzero(np.bincount(self.labels)) if len(self) else 0
        return present * int(np.floor(len(self) / max(present, 1) + 0.5))


class StreamingFeatures(IterableDataset):
    """A split streamed shard by shard, for caches far larger than memory (GenVideo: ~59 GB of float16).

    An epoch visits the stored shards in a seeded random order, `buffer_shards` at a time:
    their rows are pooled with the previous buffer's leftover (< one batch), shuffled, and cut
    into batches. At most buffer_shards shards + one batch of rows are held, whatever the
    cache size; every record is read exactly once per epoch.

    Class balance (stage 1's real vs fake) cannot oversample from a stream, so it is done by
    per-class acceptance: each record is emitted floor(r_c) times plus once more with
    probability frac(r_c), r_c = (N / C) / n_c. Rare classes repeat (with fresh augmentation),
    common ones are thinned; classes appear equally in expectation and an epoch holds ~N samples.

    Used as an IterableDataset it yields the batches of (seed, epoch) given at construction
    (`set_epoch` moves on); the training loop calls `batches` directly.
    """

    def __init__(self, cache: FeatureCache, records: Sequence[VideoRecord],
                 level_labels: Sequence[int] | np.ndarray | None = None, *, view: View | None = None,
                 batch_size: int = 64, buffer_shards: int = 4, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, balance: bool = False) -> None:
        if buffer_shards < 1 or batch_size < 1:
            raise SagaError(f"buffer_shards and batch_size must be >= 1, got {buffer_shards}, {batch_size}")
        self.cache = cache
        self.records = _keep(records)
        self.labels = check_labels(level_labels, len(self.records))
        self.view = view or View(cache.frames)
        self.batch_size, self.buffer_shards = batch_size, buffer_shards
        self.seed, self.epoch, self.shuffle, self.balance = seed, epoch, shuffle, balance
        self.shard_refs = cache.shards(self.records)
        self.shard_index = [ref.positions for ref in self.shard_refs]  # positions in self.records
        self.stats = {"shards_read": 0, "max_rows_buffered": 0}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise SagaError("StreamingFeatures yields whole batches in one process: use DataLoader(ds, "
                            "batch_size=None, num_workers<=1)")
        return self.batches(self.batch_size, self.view, seed=self.seed, epoch=self.epoch,
                            shuffle=self.shuffle, balance=self.balance)

    def epoch_size(self, balance: bool = False) -> int:
        return len(self)  # the expectation under balancing

    def take(self, index: np.ndarray, view: View, rng: np.random.Generator | None = None) -> Batch:
        """Random access (mined positives/negatives): reads just these records from the cache."""
        index = np.asarray(index, np.int64)
        uniq, inverse = np.unique(index, return_inverse=True)
        data = self.cache.read(_subset(self.records, uniq))
        feats = torch.from_numpy(data["features"])[torch.from_numpy(inverse)]
        return make_batch(feats, data["mask"][inverse], self.labels[index], index, view, rng)

    def batches(self, batch_size: int, view: View, *, seed: int = 0, epoch: int = 0, shuffle: bool = False,
                balance: bool = False) -> Iterator[Batch]:
        rng = epoch_rng(seed, epoch, ORDER)
        aug = epoch_rng(seed, epoch, AUGMENT) if view.train else None
        rates = class_rates(self.labels) if balance else None
        self.stats = {"shards_read": 0, "max_rows_buffered": 0}  # of the latest epoch
        order = rng.permutation(len(self.shard_refs)) if shuffle else np.arange(len(self.shard_refs))
        groups = [order[g:g + self.buffer_shards] for g in range(0, order.size, self.buffer_shards)]
        pool = ThreadPoolExecutor(1, thread_name_prefix="saga-prefetch")
        try:
            yield from self._epoch(groups, pool, rng, aug, rates, batch_size, view, shuffle)
        finally:  # an epoch abandoned early (a stop, an error) does not wait for the read ahead
            pool.shutdown(wait=False, cancel_futures=True)

    def _epoch(self, groups: list[np.ndarray], pool: ThreadPoolExecutor, rng: np.random.Generator,
               aug: np.random.Generator | None, rates: np.ndarray | None, batch_size: int, view: View,
               shuffle: bool) -> Iterator[Batch]:
        """The batches of one epoch; the next buffer's shards are read in the background meanwhile."""
        carry: dict[str, np.ndarray] | None = None
        ahead: Future | None = pool.submit(self._read_shards, groups[0]) if groups else None
        for g in range(len(groups)):
            parts = ahead.result()
            ahead = pool.submit(self._read_shards, groups[g + 1]) if g + 1 < len(groups) else None
            buf = self._pool_rows(parts, carry, len(groups[g]))
            rows = np.arange(buf["index"].size)
            if rates is not None:  # carried rows were already drawn: one copy each
                fresh = rows[buf["carried"]:]
                rows = np.concatenate([rows[:buf["carried"]],
                                       np.repeat(fresh, _copies(buf["y"][fresh], rates, rng))])
            if shuffle:
                rows = rng.permutation(rows)
            last = g + 1 == len(groups)
            cut = rows.size if last else rows.size - rows.size % batch_size
            feats = torch.from_numpy(buf["features"])
            for lo in range(0, cut, batch_size):
                r = rows[lo:min(lo + batch_size, cut)]
                yield make_batch(feats[torch.from_numpy(r)], buf["mask"][r], buf["y"][r], buf["index"][r],
                                  view, aug)
            tail = rows[cut:]
            carry = {k: buf[k][tail] for k in ("features", "mask", "y", "index")}

    def _read_shards(self, shards: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The shards' rows with their labels (runs in the prefetch thread: file reads and blake2b
        release the GIL, so reading overlaps the model's step)."""
        parts = []
        for j, s in enumerate(shards):
            for nxt in shards[j + 1:j + 1 + READ_AHEAD] if j == 0 else shards[j + READ_AHEAD:j + READ_AHEAD + 1]:
                advise(self.cache, self.shard_refs[nxt])  # the disk reads ahead while this shard is hashed
            data = self.cache.read_shard(self.shard_refs[s])
            idx = self.shard_index[s]
            parts.append({"features": data["features"], "mask": data["mask"], "y": self.labels[idx], "index": idx})
        return parts

    def _pool_rows(self, parts: list[dict[str, np.ndarray]], carry: dict[str, np.ndarray] | None,
                   n_shards: int) -> dict[str, np.ndarray]:
        parts = parts if carry is None else [carry, *parts]
        self.stats["shards_read"] += n_shards
        buf = {k: np.concatenate([p[k] for p in parts]) for k in ("features", "mask", "y", "index")}
        buf["carried"] = 0 if carry is None else carry["index"].size
        self.stats["max_rows_buffered"] = max(self.stats["max_rows_buffered"], int(buf["index"].size))
        return buf


def _keep(records: Sequence[VideoRecord]) -> Sequence[VideoRecord]:
    """The records as given when they are a lazy view of the cache's index (no objects), else a list."""
    return records if lazy(records) else list(records)


def _subset(records: Sequence[VideoRecord], index: np.ndarray) -> Sequence[VideoRecord]:
    return records.take(index) if lazy(records) else [records[i] for i in index.tolist()]


def memory_bytes(cache: FeatureCache, n_records: int) -> int:
    """float32 bytes an in-memory copy of n records would take."""
    return n_records * cache.windows * cache.frames * cache.dim * 4


def open_features(cache: FeatureCache, records: Sequence[VideoRecord], labels: np.ndarray, stream: bool | str,
                  memory_budget_gb: float, buffer_shards: int) -> InMemoryFeatures | StreamingFeatures:
    """In memory when it fits the budget (or stream=False), else streamed ("auto"), or streamed (True)."""
    if stream not in (True, False, "auto"):
        raise SagaError(f"stream must be true, false or 'auto', got {stream!r}")
    if stream == "auto":
        stream = memory_bytes(cache, len(records)) > memory_budget_gb * 2**30
    if stream:
        return StreamingFeatures(cache, records, labels, buffer_shards=buffer_shards)
    return InMemoryFeatures(cache, records, labels)
