"""Hard-negative mining for L_HNM with FAISS over the whole labelled pool.

SAGA's triplet term uses, for every anchor, the *hardest* negative: the nearest
item of another class anywhere in the labelled pool, not just in the batch (with
0.5 % of the data in stage 2 a batch rarely holds the confusable generator).
Mining runs without gradients on detached embeddings and returns index triplets
(as pytorch-metric-learning's miners do); the loss re-embeds those items.

Space: embeddings are L2-normalised here by default (`normalize=True`), because
`triplet_loss` measures distances on L2-normalised φ and the mined "hardest"
must be hardest in that same space. Normalising twice is harmless.

Negatives: an exact `faiss.IndexFlatL2` (or `index_factory`, approximate) is
searched for k neighbours; the first with a different label wins. Anchors whose
k neighbours are all of their own class fall back to an exact brute-force search
over the other classes, so with the flat index the result is always the true
nearest other-class item.

Semi-hard (FaceNet, the paper's "semi-HNM" ablation): the negative is *mined*,
not filtered from the hardest one: among other-class items with d_an > d_ap we
take the nearest, and keep the triplet only if d_an < d_ap + margin.

Positives: "hardest" (farthest same-class item, the default), "easiest"
(nearest) or "random". The anchor itself is never its positive; anchors of a
class with a single member, or with no item of another class, are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from saga.errors import SagaError

_MODES = ("hard", "semihard")
_POSITIVES = ("hardest", "easiest", "random")
_BRUTE_ELEMS = 1 << 24  # anchors × pool distances held at once by the brute-force fallback
_SEARCH_CHUNK = 16384  # anchors per FAISS search (bounds the k-NN result arrays)


@dataclass
class Mined:
    """Index triplets into the pool, with their squared L2 distances (in the mined space)."""

    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    d_ap: np.ndarray
    d_an: np.ndarray
    n_fallback: int = 0  # anchors that needed the exact fallback (k was too small for them)

    def __len__(self) -> int:
        return int(self.anchors.shape[0])


def _sq_dist(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact squared L2 between rows x[a] and x[b] (differences, not the ‖a‖²+‖b‖²−2ab expansion)."""
    diff = x[a] - x[b]
    return np.einsum("ij,ij->i", diff, diff).astype(np.float32)


def _positives(
    x: np.ndarray, cls: np.ndarray, anchors: np.ndarray, how: str, rng: np.random.Generator
) -> np.ndarray:
    """One same-class positive per anchor (all anchors' classes have >= 2 members)."""
    pos = np.empty(anchors.shape[0], dtype=np.int64)
    for c in np.unique(cls[anchors]):
        members = np.flatnonzero(cls == c)
        sel = np.flatnonzero(cls[anchors] == c)
        a = anchors[sel]
        if how == "random":
            # Draw from the n-1 other members: shift draws at or past the anchor's own slot.
            slot = np.searchsorted(members, a)
            r = rng.integers(0, members.size - 1, size=a.size)
            pos[sel] = members[r + (r >= slot)]
            continue
        xm = x[members]
        if how == "hardest":
            # max_p ‖a−p‖² = ‖a‖² + max_p (‖p‖² − 2a·p): a max inner product of augmented vectors.
            index = faiss.IndexFlatIP(x.shape[1] + 1)
            index.add(np.ascontiguousarray(np.hstack([xm, (xm * xm).sum(1, keepdims=True)])))
            q = np.hstack([-2.0 * x[a], np.ones((a.size, 1), np.float32)])
        else:
            index = faiss.IndexFlatL2(x.shape[1])
            index.add(np.ascontiguousarray(xm))
            q = x[a]
        # Two results: the anchor itself can only be one of them (it is the nearest / never the
        # farthest unless all members coincide), so the first that is not the anchor is the answer.
        _, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), 2)
        cand = members[idx]
        pos[sel] = np.where(cand[:, 0] != a, cand[:, 0], cand[:, 1])
    return pos


def _brute_negatives(
    x: np.ndarray, cls: np.ndarray, anchors: np.ndarray, floor: np.ndarray | None
) -> np.ndarray:
    """Exact nearest other-class item per anchor (with d > floor if given); -1 where none exists."""
    sq = (x * x).sum(1)
    out = np.full(anchors.shape[0], -1, dtype=np.int64)
    step = max(1, _BRUTE_ELEMS // x.shape[0])
    for s in range(0, anchors.shape[0], step):
        a = anchors[s : s + step]
        d = sq[a, None] + sq[None, :] - 2.0 * (x[a] @ x.T)
        d[cls[a][:, None] == cls[None, :]] = np.inf
        if floor is not None:
            d[d <= floor[s : s + step, None]] = np.inf
        j = d.argmin(1)
        ok = np.isfinite(d[np.arange(a.size), j])
        out[s : s + step] = np.where(ok, j, -1)
    return out


def _pool_index(x: np.ndarray, index_factory: str | None) -> faiss.Index:
    if index_factory is None:
        index = faiss.IndexFlatL2(x.shape[1])
    else:
        try:
            index = faiss.index_factory(x.shape[1], index_factory, faiss.METRIC_L2)
        except RuntimeError as e:
            raise SagaError(f"bad FAISS index_factory {index_factory!r}: {e}") from None
        if not index.is_trained:
            index.train(x)
    index.add(x)
    return index


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
    index_factory: str | None = None,
    seed: int = 0,
) -> Mined:
    """Mine one (anchor, positive, negative) triplet per usable anchor over the whole pool.

    Args:
        embeddings: (N, d) pool embeddings (detached); copied to float32 C order for FAISS.
        labels: (N,) integer class of each pool item, at the level being trained.
        mode: "hard" (nearest other-class item) or "semihard" (see the module docstring).
        margin: α; only used by "semihard" to bound d_an < d_ap + α.
        k: neighbours fetched per anchor before falling back to the exact search.
        positive: "hardest" | "easiest" | "random" same-class item.
        anchors: pool indices to mine for (e.g. the current batch); None = every item.
        normalize: L2-normalise rows first (the loss's space).
        index_factory: FAISS factory string (e.g. "HNSW32") for an approximate pool index on
            very large pools; then the negative is approximate unless the fallback runs.
        seed: for positive="random".

    Returns:
        Mined triplets sorted by anchor index; distances are exact squared L2 in the mined space.
    """
    if mode not in _MODES:
        raise SagaError(f"mining mode must be one of {_MODES}, got {mode!r}")
    if positive not in _POSITIVES:
        raise SagaError(f"positive must be one of {_POSITIVES}, got {positive!r}")
    if k < 1:
        raise SagaError(f"mining k must be >= 1, got {k}")
    x = np.ascontiguousarray(np.asarray(embeddings), dtype=np.float32)
    lab = np.asarray(labels)
    if x.ndim != 2 or lab.ndim != 1 or lab.shape[0] != x.shape[0]:
        raise SagaError(f"embeddings (N, d) and labels (N,) do not match: {x.shape} vs {lab.shape}")
    if not np.isfinite(x).all():
        raise SagaError("embeddings contain NaN or inf: the model diverged (lower the learning rate)")
    if normalize:
        x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    n = x.shape[0]
    _, cls = np.unique(lab, return_inverse=True)
    cls = cls.astype(np.int64)
    counts = np.bincount(cls) if n else np.zeros(0, np.int64)
    a = np.arange(n, dtype=np.int64) if anchors is None else np.unique(np.asarray(anchors, np.int64))
    if a.size and (a.min() < 0 or a.max() >= n):
        raise SagaError(f"anchor indices must lie in [0, {n})")
    empty = np.zeros(0, np.int64)
    if counts.size < 2:  # no other class: no negative exists for anyone
        return Mined(empty, empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32))
    a = a[counts[cls[a]] >= 2]
    pos = _positives(x, cls, a, positive, np.random.default_rng(seed))
    d_ap = _sq_dist(x, a, pos)
    floor = d_ap if mode == "semihard" else None

    index = _pool_index(x, index_factory)
    kk = min(k, n)
    neg = np.full(a.size, -1, dtype=np.int64)
    need = np.zeros(a.size, dtype=bool)
    for s in range(0, a.size, _SEARCH_CHUNK):
        sl = slice(s, s + _SEARCH_CHUNK)
        dist, idx = index.search(x[a[sl]], kk)
        valid = idx >= 0
        ok = valid & (cls[np.where(valid, idx, 0)] != cls[a[sl]][:, None])
        if floor is not None:
            ok &= dist > floor[sl, None]
        found = ok.any(1)
        first = ok.argmax(1)
        neg[sl] = np.where(found, idx[np.arange(idx.shape[0]), first], -1)
        # Unfound but provably empty: the search covered the pool, or (semi-hard) it already went
        # past d_ap + margin, so any qualifying negative would have been in the sorted list.
        covered = valid.all(1) & (kk == n)
        if floor is not None:
            reach = np.where(valid, dist, -np.inf).max(1)
            covered |= reach >= floor[sl] + margin
        need[sl] = ~found & ~covered
    n_fallback = int(need.sum())
    if n_fallback:
        neg[need] = _brute_negatives(x, cls, a[need], None if floor is None else floor[need])

    keep = neg >= 0
    a, pos, neg, d_ap = a[keep], pos[keep], neg[keep], d_ap[keep]
    d_an = _sq_dist(x, a, neg)
    if mode == "semihard":
        sh = (d_an > d_ap) & (d_an < d_ap + margin)
        a, pos, neg, d_ap, d_an = a[sh], pos[sh], neg[sh], d_ap[sh], d_an[sh]
    return Mined(a, pos, neg, d_ap, d_an, n_fallback)
