"""Hard-negative mining for L_HNM with FAISS over the whole labelled pool.

SAGA's triplet term uses, for every anchor, the *hardest* negative: the nearest
item of another class anywhere in the labelled pool, not just in the batch (with
0.5 % of the data in stage 2 a batch rarely holds the confusable generator).
Mining runs without gradients on detached embeddings and returns index triplets
(as pytorch-metric-learning's miners do); the loss re-embeds those items.

Space: embeddings are L2-normalised here by default (`normalize=True`), because
`triplet_loss` measures distances on L2-normalised φ and the mined "hardest"
must be hardest in that same space. Normalising twice is harmless.

Negatives (hard): every other class's index is searched for its single nearest item
and the closest of those wins (`saga.train.mining_index.ClassIndexes`): exact with flat
indexes, approximate with per-class IVF in the pool's principal subspace (`search="approx"`,
parameters in `ApproxParams`; positives then come from that subspace too), `search="auto"`
choosing by pool size. The indexes are built once per
call, i.e. once per refresh of stage 2.

Semi-hard (FaceNet, the paper's "semi-HNM" ablation): the negative is *mined*,
not filtered from the hardest one: among other-class items with d_an > d_ap we
take the nearest, and keep the triplet only if d_an < d_ap + margin. Found exactly by a
pool-chunked brute force (`brute_negatives`), whatever `search` says.

Positives: "hardest" (farthest same-class item, the default), "easiest"
(nearest) or "random". The anchor itself is never its positive; anchors of a
class with a single member, or with no item of another class, are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saga.errors import SagaError
from saga.train.configs import POSITIVES
from saga.train.mining_index import ApproxParams, ClassIndexes, Search, brute_negatives, parse_search, resolve_search

__all__ = ["POSITIVES", "ApproxParams", "Mined", "Search", "mine_triplets"]

_MODES = ("hard", "semihard")


@dataclass
class Mined:
    """Index triplets into the pool, with their squared L2 distances (in the mined space)."""

    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    d_ap: np.ndarray
    d_an: np.ndarray
    search: str = "exact"  # the search actually used: "exact" or "approx"

    def __len__(self) -> int:
        return int(self.anchors.shape[0])


def _sq_dist(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact squared L2 between rows x[a] and x[b] (differences, not the ‖a‖²+‖b‖²−2ab expansion)."""
    diff = x[a] - x[b]
    return np.einsum("ij,ij->i", diff, diff).astype(np.float32)


def _positives(
    indexes: ClassIndexes, anchors: np.ndarray, how: str, rng: np.random.Generator
) -> np.ndarray:
    """One same-class positive per anchor (all anchors' classes have >= 2 members)."""
    if how != "random":
        return indexes.positives(anchors, farthest=how == "hardest")
    pos = np.empty(anchors.size, dtype=np.int64)
    for c in np.unique(indexes.cls[anchors]):
        members = indexes.members[c]
        sel = np.flatnonzero(indexes.cls[anchors] == c)
        # Draw from the n-1 other members: shift draws at or past the anchor's own slot.
        slot = np.searchsorted(members, anchors[sel])
        r = rng.integers(0, members.size - 1, size=sel.size)
        pos[sel] = members[r + (r >= slot)]
    return pos


def mine_triplets(
    embeddings: np.ndarray,
    labels: np.ndarray,
    mode: str = "hard",
    margin: float = 0.2,
    k: int = 64,
    positive: str = "hardest",
    *,
    anchors: np.ndarray | None = None,
    normalize: bool = True,
    search: Search = "auto",
    approx: ApproxParams | None = None,
    seed: int = 0,
) -> Mined:
    """Mine one (anchor, positive, negative) triplet per usable anchor over the whole pool.

    Args:
        embeddings: (N, d) pool embeddings (detached); copied to float32 C order for FAISS.
        labels: (N,) integer class of each pool item, at the level being trained.
        mode: "hard" (nearest other-class item) or "semihard" (see the module docstring).
        margin: α; only used by "semihard" to bound d_an < d_ap + α.
        k: kept for compatibility (must be >= 1); the per-class search needs only k = 1.
        positive: "hardest" | "easiest" | "random" same-class item.
        anchors: pool indices to mine for (e.g. the current batch); None = every item.
        normalize: L2-normalise rows first (the loss's space).
        search: "exact", "approx" (per-class IVF, hard mode only) or "auto": exact below
            APPROX_MIN_POOL items, else approximate if it passes its recall check (`ApproxParams`).
        approx: projection and IVF parameters for search="approx" (None: `ApproxParams()` defaults).
        seed: for positive="random".

    Returns:
        Mined triplets sorted by anchor index; distances are exact squared L2 in the mined space.
    """
    if mode not in _MODES:
        raise SagaError(f"mining mode must be one of {_MODES}, got {mode!r}")
    if positive not in POSITIVES:
        raise SagaError(f"positive must be one of {POSITIVES}, got {positive!r}")
    if k < 1:
        raise SagaError(f"mining k must be >= 1, got {k}")
    how = parse_search(search)
    x, cls = _prepare(embeddings, labels, normalize)
    n = x.shape[0]
    counts = np.bincount(cls) if n else np.zeros(0, np.int64)
    a = np.arange(n, dtype=np.int64) if anchors is None else np.unique(np.asarray(anchors, np.int64))
    if a.size and (a.min() < 0 or a.max() >= n):
        raise SagaError(f"anchor indices must lie in [0, {n})")
    used = "exact" if mode == "semihard" else resolve_search(how, n)
    if counts.size < 2:  # no other class: no negative exists for anyone
        empty = np.zeros(0, np.int64)
        return Mined(empty, empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32), search=used)
    a = a[counts[cls[a]] >= 2]
    params = approx or ApproxParams()
    indexes = ClassIndexes(x, cls, params if used == "approx" else None)
    if mode == "hard" and how == "auto" and used == "approx" and indexes.approx_recall(a) < params.min_recall:
        used = "exact"  # this pool has no structure the IVF can use: its negatives would be wrong
        indexes = ClassIndexes(x, cls, None)
    rng = np.random.default_rng(seed)
    if mode == "hard" and used == "exact" and positive != "random":
        pos, neg = indexes.exact_pairs(a, farthest=positive == "hardest")
        d_ap = _sq_dist(x, a, pos)
    else:
        pos = _positives(indexes, a, positive, rng)
        d_ap = _sq_dist(x, a, pos)
        neg = brute_negatives(x, cls, a, d_ap) if mode == "semihard" else indexes.nearest_other(a)
    keep = neg >= 0
    a, pos, neg, d_ap = a[keep], pos[keep], neg[keep], d_ap[keep]
    d_an = _sq_dist(x, a, neg)
    if mode == "semihard":
        sh = (d_an > d_ap) & (d_an < d_ap + margin)  # re-checked on the exact distances
        a, pos, neg, d_ap, d_an = a[sh], pos[sh], neg[sh], d_ap[sh], d_an[sh]
    return Mined(a, pos, neg, d_ap, d_an, search=used)


def _prepare(embeddings: np.ndarray, labels: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Checked float32 C-order pool (L2-normalised if asked) and its classes as 0..C-1."""
    x = np.ascontiguousarray(np.asarray(embeddings), dtype=np.float32)
    lab = np.asarray(labels)
    if x.ndim != 2 or lab.ndim != 1 or lab.shape[0] != x.shape[0]:
        raise SagaError(f"embeddings (N, d) and labels (N,) do not match: {x.shape} vs {lab.shape}")
    if not np.isfinite(x).all():
        raise SagaError("embeddings contain NaN or inf: the model diverged (lower the learning rate)")
    if normalize:
        x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    _, cls = np.unique(lab, return_inverse=True)
    return x, cls.astype(np.int64).reshape(-1)
