"""Batched inference of a trained run over cached features, with the evaluation convention.

Evaluation convention (the same for `saga evaluate`, T-Sigs, t-SNE and training's
validation; docs/run-folder.md):

- the model sees T' consecutive frames of each cached T-frame window: the centred
  sub-window of the window's *real* frames, clipped to the window, i.e.
  start = (T - T') // 2 when all T frames are real (short, padded videos keep their
  real frames instead of a window of padding), with its frame mask;
- logits and probabilities are averaged over the W cached windows (probabilities are
  the mean of the per-window softmax, so the prediction is argmax of the mean
  probability); windows whose sub-window holds no real frame are left out;
- the embedding φ (L2-normalised) and the attention map come from window 0, so one
  video has one point in the t-SNE and one T-Sig.

Features are read from the cache `batch_size` videos at a time, so memory stays
bounded by the batch, not by the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from saga.cache.index import lazy
from saga.distributed import resolve_device
from saga.errors import SagaError

if TYPE_CHECKING:  # annotations only: the model layer reads features through any object with `read`
    from saga.cache.manifest import VideoRecord
    from saga.cache.store import FeatureCache


class Readout(Protocol):
    """What `infer` needs to know about a model's outputs (a `RunInfo`, or an `EvalSpec`)."""

    level: str
    classes: list[str]
    frames: int


@dataclass(frozen=True)
class EvalSpec:
    """The level, class list (index = model output) and T' of a model not (yet) saved as a run."""

    level: str
    classes: list[str]
    frames: int


@dataclass
class Inference:
    """Per-video outputs, aligned with the `records` given to `infer`."""

    logits: np.ndarray  # (n, C) float32, mean over windows
    probs: np.ndarray  # (n, C) float32, mean of per-window softmax
    embeddings: np.ndarray  # (n, d) float32, L2-normalised φ of window 0
    targets: np.ndarray  # (n,) int64: class index at the run's level, -1 = no class
    paths: list[str]
    mask: np.ndarray  # (n, T') bool, real frames of window 0's sub-window
    attn: np.ndarray | None = None  # (n, T', T') float32, penultimate block, mean over heads
    row_probs: np.ndarray | None = None  # (n, head rows): softmax over a subclass head's rows, mean over windows

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def __len__(self) -> int:
        return len(self.paths)


def subwindow_starts(mask: np.ndarray, frames: int) -> np.ndarray:
    """Start of the T'-frame sub-window per cached window: centred on its real frames.

    mask (..., T) bool. With all T frames real this is (T - T') // 2; a window with
    k < T real frames is centred on them, clipped to [0, T - T'], so a short video is
    not represented by a window of padding.
    """
    t = mask.shape[-1]
    if frames > t:
        raise SagaError(f"the run uses {frames} frames but the cache has only {t} per window; "
                        "evaluate on a cache extracted with at least as many frames")
    real = mask.any(axis=-1)
    first = np.where(real, np.argmax(mask, axis=-1), 0)
    last = np.where(real, t - 1 - np.argmax(mask[..., ::-1], axis=-1), t - 1)
    span = last - first + 1
    start = first + (span - frames) // 2
    return np.clip(start, 0, t - frames).astype(np.int64)


def take_subwindow(features: np.ndarray, mask: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """features (..., T, D), mask (..., T) -> the (..., T', D) and (..., T') evaluation sub-window."""
    start = subwindow_starts(mask, frames)
    offs = start[..., None] + np.arange(frames)  # (..., T')
    feats = np.take_along_axis(features, offs[..., None], axis=-2)
    return feats, np.take_along_axis(mask, offs, axis=-1)


def record_targets(records: Sequence["VideoRecord"], level: str, classes: Sequence[str]) -> np.ndarray:
    """Class index of each record at `level` (-1: no class there, e.g. SD-L for a no-SD generator).

    A cache's own record list answers from its index columns, without building a record per video.
    """
    if lazy(records):
        return records.targets(level, classes)  # type: ignore[attr-defined]
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(str(r.labels.get(level)), -1) if r.labels.get(level) is not None else -1
                     for r in records], dtype=np.int64)


def _penultimate(attn: list[torch.Tensor]) -> torch.Tensor:
    """The penultimate block's map (the last one for a one-block model), mean over heads."""
    block = attn[-2] if len(attn) >= 2 else attn[-1]
    return block.mean(dim=1)


@torch.no_grad()
def run_batch(model: Any, feats: np.ndarray, mask: np.ndarray, device: torch.device,
               attention: bool) -> dict[str, np.ndarray]:
    """One batch of (b, W, T', D) sub-windows through the model, reduced per video."""
    b, w, t, d = feats.shape
    x = torch.from_numpy(feats.reshape(b * w, t, d)).to(device=device, dtype=torch.float32)
    m = torch.from_numpy(mask.reshape(b * w, t)).to(device)
    out = model(x, m, return_attn=attention)
    logits = out.logits.float().view(b, w, -1)
    valid = m.view(b, w, t).any(dim=2)
    valid[:, 0] |= ~valid.any(dim=1)  # a video with no real frame anywhere: keep window 0
    weight = valid.float()[..., None] / valid.float().sum(dim=1)[:, None, None]
    res = {
        "logits": (logits * weight).sum(dim=1),
        "probs": (F.softmax(logits, dim=-1) * weight).sum(dim=1),
        "embeddings": F.normalize(out.embedding.float().view(b, w, -1)[:, 0], dim=-1),
    }
    if attention:
        res["attn"] = _penultimate(out.attn).float().view(b, w, t, t)[:, 0]
    if out.rows is not None and getattr(model, "subclass_mask", None) is not None:  # rows are sources, not classes
        res["row_probs"] = (F.softmax(out.rows.float().view(b, w, -1), dim=-1) * weight).sum(dim=1)
    return {k: v.cpu().numpy() for k, v in res.items()}


def infer(model: Any, info: Readout, cache: FeatureCache, records: Sequence[VideoRecord], batch_size: int = 256,
          device: str | torch.device = "cpu", attention: bool = False) -> Inference:
    """Run `model` (from `load_model`) over `records` of `cache` with the evaluation convention."""
    if batch_size < 1:
        raise SagaError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    frames = int(info.frames)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in ("logits", "probs", "embeddings", "attn", "mask",
                                                           "row_probs")}
    for lo in range(0, len(records), batch_size):
        data = cache.read(records[lo:lo + batch_size])
        feats, mask = take_subwindow(data["features"], data["mask"], frames)
        res = run_batch(model, feats, mask, dev, attention)
        for key, val in res.items():
            chunks[key].append(val)
        chunks["mask"].append(mask[:, 0])
    n_cls, d = len(info.classes), int(model.config.d_model)

    def cat(key: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return np.concatenate(chunks[key]) if chunks[key] else np.zeros((0, *shape), dtype)

    return Inference(
        logits=cat("logits", (n_cls,)),
        probs=cat("probs", (n_cls,)),
        embeddings=cat("embeddings", (d,)),
        targets=record_targets(records, info.level, info.classes),
        paths=[r.path for r in records],
        mask=cat("mask", (frames,), bool),
        attn=cat("attn", (frames, frames)) if attention else None,
        row_probs=np.concatenate(chunks["row_probs"]) if chunks["row_probs"] else None,
    )
