"""Nearest other-class search for hard-negative mining: per-class indexes, k = 1.

Why per class: one index over the whole pool returns the anchor's *own* class first
(with separated classes, the 64 nearest neighbours of most anchors are all same-class),
so a k-NN search needs a costly exact fallback. Searching every other class's index
for its single nearest item and keeping the minimum is exact by construction, needs no
fallback, and does the same arithmetic as one flat search over the pool.

Exact: one `IndexFlatIP` per class over [x, ‖x‖²] (BLAS, top-1), which also gives the
hardest (farthest) and easiest positives. Approximate: the pool is first projected onto
its principal directions holding `energy` of its variance (trained embeddings have few:
a flat search costs d per pair, so 40 of 256 dimensions is a 6× cheaper scan), then one
`IndexIVFFlat` per class (`nlist` lists, `nprobe` searched) is trained and filled in that
space, once per build, i.e. once per refresh; positives come from flat indexes in the same
space. The final choice among the per-class candidates is made on exact squared distances
in the full space, ties going to the lowest pool index, so the exact miner's answer does
not depend on the order in which classes are searched.

`brute_negatives` is the exact brute force for the semi-hard rule (nearest other-class
item farther than a floor), chunked over the pool so each pool block is read once per
block of anchors instead of the whole pool once per handful of anchors.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import faiss
import numpy as np

from saga.errors import SagaError

Search = Literal["auto", "exact", "approx"]
SEARCHES: tuple[str, ...] = get_args(Search)
# Pool size from which search="auto" tries the approximate index. Set from bench/mining.py
# (docs/performance.md, section 3; 2 cores, d = 256): a refresh mines every pool item, and on a
# pool of low intrinsic dimension the approximate refresh was 3.2× faster than the exact one at
# 100k and 7× at 1M (1.2× slower at 10k). On a pool without structure its recall check fails and
# auto falls back to exact, having spent the build (4 % of an exact refresh at 100k, 0.2 % at 1M).
APPROX_MIN_POOL = 100_000
_BRUTE_ELEMS = 1 << 24  # anchors × pool distances held at once by the brute force
_ANCHOR_BLOCK = 4096  # anchors per brute-force block (each block reads the pool once)
_PARALLEL_WORK = 1 << 26  # query × member scores below which a flat search runs on one thread
_QUERY_BLOCK = 65536  # anchors per per-class search (FAISS blocks queries by 4096 itself)
_EXPANSION_ULPS = 8  # ‖q‖² + ‖x‖² − 2q·x in float32 is within a few ulps of (‖q‖² + ‖x‖²) of the true distance


@dataclass(frozen=True)
class ApproxParams:
    """Per-class IVF-Flat parameters: `nlist` lists per class (None: √members), `nprobe` searched.

    √members keeps the build (k-means + assignment, redone at every refresh) cheap next to a search.
    search="auto" first checks the index on `check` seeded anchors against the exact search and
    keeps it only if it finds the true hardest negative for at least `min_recall` of them: on
    embeddings without low-dimensional structure no IVF setting is both fast and right.
    """

    nlist: int | None = None
    nprobe: int = 16
    kmeans_iters: int = 10
    seed: int = 0
    check: int = 64
    min_recall: float = 0.95
    energy: float | None = 0.999  # variance share the search space keeps (None: search in the full space)
    fit_sample: int = 20_000  # pool items the projection is fitted on (seeded)

    def lists_for(self, members: int) -> int:
        """Lists for a class: never more than members / 39 (FAISS's k-means floor), at least 1."""
        want = self.nlist if self.nlist is not None else round(math.sqrt(members))
        return max(1, min(want, members // 39))


def parse_search(search: str) -> Search:
    """Validate the miner's search option once, at the API boundary."""
    if search not in SEARCHES:
        raise SagaError(f"mining search must be one of {SEARCHES}, got {search!r}")
    return search  # type: ignore[return-value]


def resolve_search(search: Search, pool: int) -> Literal["exact", "approx"]:
    """`auto` → exact below APPROX_MIN_POOL items, approximate from there on."""
    if search == "auto":
        return "approx" if pool >= APPROX_MIN_POOL else "exact"
    return search


def _flat(xc: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatL2(xc.shape[1])
    index.add(xc)
    return index


def _augmented(x: np.ndarray, sq: np.ndarray, members: np.ndarray) -> faiss.Index:
    """IndexFlatIP over [x, ‖x‖²]: one index answers nearest and farthest, see `_queries`."""
    buf = np.empty((members.size, x.shape[1] + 1), np.float32)
    buf[:, :-1], buf[:, -1] = x[members], sq[members]
    index = faiss.IndexFlatIP(buf.shape[1])
    index.add(buf)
    return index


def _queries(q: np.ndarray, farthest: bool) -> np.ndarray:
    """[q, -1/2] scores q·x − ‖x‖²/2 (max = nearest); [-2q, 1] scores ‖x‖² − 2q·x (max = farthest)."""
    out = np.empty((q.shape[0], q.shape[1] + 1), np.float32)
    out[:, :-1], out[:, -1] = (-2.0 * q, 1.0) if farthest else (q, -0.5)
    return out


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run FAISS on one OpenMP thread: small k-means is barrier-bound (4-5× slower on 2 shared cores)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@contextmanager
def _flat_search(work: int) -> Iterator[None]:
    """Flat search settings: one thread for small calls, 1024 × 16384 BLAS blocks for all.

    Each block is one OpenMP region, and on shared cores every region can wait a time slice
    for a descheduled thread: a 4,750 × 250 search took 8 ms on one thread and 24-78 ms on
    two, and fewer, larger blocks searched a 50k-member class a third faster.
    """
    cv = faiss.cvar
    saved = cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs, faiss.omp_get_max_threads()
    cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = 1024, 16384
    if work < _PARALLEL_WORK:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = saved[:2]
        faiss.omp_set_num_threads(saved[2])


def search_space(x: np.ndarray, params: ApproxParams) -> np.ndarray:
    """x projected on the principal directions holding `params.energy` of its variance (x itself if that saves < 2×).

    Fitted on a seeded sample; dimensions rounded up to a multiple of 8 (SIMD width).
    """
    n, dim = x.shape
    if params.energy is None or n < 2:
        return x
    rng = np.random.default_rng(params.seed)
    sample = x[np.sort(rng.choice(n, min(n, params.fit_sample), replace=False))].astype(np.float64)
    mean = sample.mean(axis=0)
    var, vec = np.linalg.eigh(np.cov(sample - mean, rowvar=False))
    var, vec = np.clip(var[::-1], 0, None), vec[:, ::-1]
    share = np.cumsum(var) / max(var.sum(), 1e-30)
    keep = int(np.searchsorted(share, params.energy) + 1)
    keep = min(dim, -(-keep // 8) * 8)
    if 2 * keep > dim:
        return x
    proj = np.ascontiguousarray(vec[:, :keep], dtype=np.float32)
    out = x @ proj  # centring after projecting: one BLAS call, no centred copy of the pool
    out -= (mean @ vec[:, :keep]).astype(np.float32)
    return out


def _ivf(xc: np.ndarray, params: ApproxParams) -> faiss.Index:
    nlist = params.lists_for(xc.shape[0])
    if nlist == 1:  # tiny class: an IVF with one list is a flat index with overhead
        return _flat(xc)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(xc.shape[1]), xc.shape[1], nlist, faiss.METRIC_L2)
    index.cp.niter, index.cp.seed = params.kmeans_iters, params.seed
    index.cp.max_points_per_centroid = 64  # k-means on a seeded sample: the build is paid per refresh
    with _one_thread():
        index.train(xc)
        index.add(xc)
    index.nprobe = min(params.nprobe, nlist)
    return index


class ClassIndexes:
    """One index per class over the pool, built once (per refresh) and searched with k = 1 (or 2)."""

    def __init__(self, x: np.ndarray, cls: np.ndarray, approx: ApproxParams | None = None) -> None:
        """x: (N, d) float32 C-order pool; cls: (N,) classes 0..C-1; approx: None = exact negatives."""
        if approx is not None and approx.nprobe < 1:
            raise SagaError(f"mining nprobe must be >= 1, got {approx.nprobe}")
        self.x, self.cls, self.approx = x, cls, approx
        self.space = x if approx is None else search_space(x, approx)  # where candidates are searched
        sq = np.einsum("ij,ij->i", self.space, self.space)
        self.members = [np.flatnonzero(cls == c) for c in range(int(cls.max()) + 1 if cls.size else 0)]
        self.flat = [_augmented(self.space, sq, m) for m in self.members]  # positives (exact when approx is None)
        self.indexes = self.flat if approx is None else [
            _ivf(np.ascontiguousarray(self.space[m]), approx) for m in self.members]

    @property
    def dims(self) -> int:
        """Dimensions the candidates are searched in (< the pool's when the approximate index projects)."""
        return int(self.space.shape[1])

    def positives(self, anchors: np.ndarray, farthest: bool) -> np.ndarray:
        """Farthest (or nearest) same-class item other than the anchor; every anchor's class has >= 2 members."""
        out = np.empty(anchors.size, np.int64)
        for c in np.unique(self.cls[anchors]):
            sel = np.flatnonzero(self.cls[anchors] == c)
            for s in range(0, sel.size, _QUERY_BLOCK):
                rows = sel[s : s + _QUERY_BLOCK]
                # Two results: the anchor can only be one of them (it is the nearest, and never the farthest
                # unless all members coincide), so the first that is not the anchor is the answer.
                with _flat_search(rows.size * self.members[c].size):
                    _, idx = self.flat[c].search(_queries(self.space[anchors[rows]], farthest), 2)
                cand = self.members[c][idx]
                out[rows] = np.where(cand[:, 0] != anchors[rows], cand[:, 0], cand[:, 1])
        return out

    def exact_pairs(self, anchors: np.ndarray, farthest: bool) -> tuple[np.ndarray, np.ndarray]:
        """Exact positives and negatives at once (exact indexes only): one k = 2 search per class serves both.

        Own-class anchors ask a class for their farthest (or nearest) positive, the others for
        their nearest negative, in the same BLAS pass (a separate positive search of ~N/C queries
        per class is memory-bound and cost a third of the negatives' time at 1M).
        """
        pos, neg = np.empty(anchors.size, np.int64), np.full(anchors.size, -1, np.int64)
        for s in range(0, anchors.size, _QUERY_BLOCK):
            a = anchors[s : s + _QUERY_BLOCK]
            p, cand = self._pair_block(a, farthest)
            pos[s : s + _QUERY_BLOCK], neg[s : s + _QUERY_BLOCK] = p, _closest(self.x, a, cand)
        return pos, neg

    def _pair_block(self, a: np.ndarray, farthest: bool) -> tuple[np.ndarray, np.ndarray]:
        q, qc = self.x[a], self.cls[a]
        near, far = _queries(q, farthest=False), _queries(q, farthest)
        # A class's second result is a candidate only if it ties the first: ties come back in either order.
        pos, cand = np.empty(a.size, np.int64), np.full((a.size, 2 * len(self.members)), -1, np.int64)
        for c, (index, members) in enumerate(zip(self.flat, self.members)):
            other, own = np.flatnonzero(qc != c), np.flatnonzero(qc == c)
            with _flat_search(a.size * members.size):
                score, idx = index.search(np.concatenate([near[other], far[own]]), 2)
            got = np.where(idx[: other.size] >= 0, members[np.maximum(idx[: other.size], 0)], -1)
            got[score[: other.size, 1] != score[: other.size, 0], 1] = -1  # the second only if it ties
            cand[other, 2 * c : 2 * c + 2] = got
            mine = members[np.maximum(idx[other.size :], 0)]  # the anchor is one of its 2 results, see positives
            pos[own] = np.where(mine[:, 0] != a[own], mine[:, 0], mine[:, 1])
        return pos, cand

    def nearest_other(self, anchors: np.ndarray) -> np.ndarray:
        """Nearest item of another class for each anchor (pool indices); -1 where none exists.

        Approximate when built with `approx`; the candidates are always compared exactly, in x.
        """
        out = np.full(anchors.size, -1, np.int64)
        for s in range(0, anchors.size, _QUERY_BLOCK):  # bounds the query copies on a full-pool refresh
            a = anchors[s : s + _QUERY_BLOCK]
            out[s : s + _QUERY_BLOCK] = _closest(self.x, a, self._candidates(a))
        return out

    def approx_recall(self, anchors: np.ndarray) -> float:
        """Share of `check` seeded anchors whose approximate negative is a true hardest one (ties count)."""
        if self.approx is None:
            return 1.0
        rng = np.random.default_rng(self.approx.seed)
        probe = np.sort(rng.choice(anchors, min(anchors.size, self.approx.check), replace=False))
        got, want = self.nearest_other(probe), brute_negatives(self.x, self.cls, probe, None)
        d = [np.einsum("ij,ij->i", self.x[probe] - self.x[j], self.x[probe] - self.x[j]) for j in (got, want)]
        return float(np.mean((got >= 0) & np.isclose(d[0], d[1], rtol=1e-5, atol=1e-6))) if probe.size else 1.0

    def _candidates(self, anchors: np.ndarray) -> np.ndarray:
        """(anchors, C) nearest member of each class other than the anchor's own (-1: none)."""
        cand = np.full((anchors.size, len(self.members)), -1, np.int64)
        exact = self.approx is None
        q, qc = np.ascontiguousarray(self.space[anchors]), self.cls[anchors]
        if exact:
            q = _queries(q, farthest=False)
        for c, (index, members) in enumerate(zip(self.indexes, self.members)):
            rows = np.flatnonzero(qc != c)
            if rows.size == 0:
                continue
            with _flat_search(rows.size * members.size) if exact else contextlib.nullcontext():
                _, idx = index.search(q[rows], 1)
            found = idx[:, 0] >= 0
            cand[rows[found], c] = members[idx[found, 0]]
        return cand


def _closest(x: np.ndarray, anchors: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per row, the candidate at the smallest exact squared distance (ties: lowest index)."""
    rows, cols = np.nonzero(cand >= 0)
    d = np.full(cand.shape, np.inf, np.float32)
    for s in range(0, rows.size, _BRUTE_ELEMS // x.shape[1]):  # bounds the gathered differences
        r, c = rows[s : s + _BRUTE_ELEMS // x.shape[1]], cols[s : s + _BRUTE_ELEMS // x.shape[1]]
        diff = x[cand[r, c]] - x[anchors[r]]
        d[r, c] = np.einsum("ij,ij->i", diff, diff)
    best = d.min(1, keepdims=True)
    tie = np.where((d == best) & np.isfinite(d), cand, np.iinfo(np.int64).max).min(1)
    return np.where(np.isfinite(best[:, 0]), tie, -1)


def brute_negatives(
    x: np.ndarray, cls: np.ndarray, anchors: np.ndarray, floor: np.ndarray | None
) -> np.ndarray:
    """Exact nearest other-class item per anchor (with d > floor if given); -1 where none exists."""
    out = np.full(anchors.size, -1, np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    for s in range(0, anchors.size, _ANCHOR_BLOCK):
        a = anchors[s : s + _ANCHOR_BLOCK]
        f = None if floor is None else floor[s : s + _ANCHOR_BLOCK]
        out[s : s + _ANCHOR_BLOCK] = _brute_block(x, sq, cls, a, f)
    return out


def _brute_block(
    x: np.ndarray, sq: np.ndarray, cls: np.ndarray, a: np.ndarray, floor: np.ndarray | None
) -> np.ndarray:
    """One block of anchors against the pool, pool chunk by pool chunk, keeping a running minimum."""
    best = np.full(a.size, np.inf, np.float32)
    arg = np.full(a.size, -1, np.int64)
    q, qsq, qc = x[a], sq[a], cls[a]
    step = max(1, _BRUTE_ELEMS // max(1, a.size))
    for lo in range(0, x.shape[0], step):
        d = qsq[:, None] + sq[None, lo : lo + step] - 2.0 * (q @ x[lo : lo + step].T)
        d[qc[:, None] == cls[None, lo : lo + step]] = np.inf
        if floor is not None:  # the expanded form is a few ulps off: a tie with the floor must not pass for above it
            slack = _EXPANSION_ULPS * np.finfo(np.float32).eps * (qsq[:, None] + sq[None, lo : lo + step])
            d[d <= floor[:, None] + slack] = np.inf
        j = d.argmin(1)
        dj = d[np.arange(a.size), j]
        better = dj < best  # strict: on ties the earlier chunk (lower index) wins
        best, arg = np.where(better, dj, best), np.where(better, j + lo, arg)
    return arg
