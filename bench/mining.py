"""Hardest-negative mining: exact per-class FAISS, approximate per-class IVF and torch brute force, side by side.

    python bench/mining.py [--sizes 10000 100000 1000000] [--anchors 2000] [--nprobe 16]
                           [--sweep 2 4 8 16 32] [--low-rank 16]

Why: stage 2 mines, at every refresh, the nearest other-class item of each anchor over the whole
labelled pool (`saga.train.mining.mine_triplets`). This measures what that costs as the pool grows,
for `search="exact"` (one flat index per class, k = 1) and `search="approx"` (one IVF-Flat per class,
`--nlist` / `--nprobe`, in the pool's principal subspace holding `--energy` of its variance),
against the obvious alternative (torch.cdist + class masking, pool-chunked).

Pool: N simulated embeddings, d=256, C gaussian classes (random unit centres scaled by --sep,
isotropic noise of norm ~1), L2-normalised. The same fixed random subset of anchors is mined by
every method at every size (brute force over all 1M anchors would take hours), so times compare
like for like; each saga time is a whole `mine_triplets` call (normalising, building the per-class
indexes over all N, hardest positives, the search). Ratios > 1 mean faster than torch brute force.
Recall = fraction of anchors whose mined negative is the true hardest one (ties count as found);
mean_excess_distance = mean of (mined distance / true hardest distance - 1) over all anchors (the found
ones add ~0), mean_excess_distance_misses = the same over the anchors not found only (null if none).
index_build_s sums every index the call built (index_builds: 2 when auto's recall check failed and it
rebuilt exact indexes).

A refresh in training mines every pool item, not 2,000: `full_refresh_*` projects one from the
measured parts (build and normalising once + (negative search + positives) × N / anchors; torch
× N / anchors). The `sweep` is the
approximate index's recall / search-time curve over nprobe, on one build; its speed-up divides torch
brute force (hardest negatives and positives in one pass) by the negative search plus the approximate
run's positives (positives_s: they do not depend on nprobe), so both sides find the same things.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import saga.train.mining as mining  # noqa: E402
from saga.train.mining_index import APPROX_MIN_POOL, ApproxParams, ClassIndexes  # noqa: E402


def simulate(n: int, dim: int, classes: int, sep: float, seed: int, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 L2-normalised gaussian clusters and their (n,) labels; generated in blocks.

    rank 0: isotropic noise in all dim directions (no structure an index can exploit, the worst case);
    rank r: noise in a shared random r-dim subspace (embeddings of low intrinsic dimension).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32) if rank else None
    y = rng.integers(0, classes, n)
    x = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        if basis is None:
            noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) / np.sqrt(dim)
        else:
            noise = rng.standard_normal((hi - lo, rank), dtype=np.float32) @ basis / np.sqrt(rank)
        block = centres[y[lo:hi]] + noise
        x[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, y


def torch_brute(x: np.ndarray, y: np.ndarray, anchors: np.ndarray, chunk_elems: int) -> tuple[np.ndarray, ...]:
    """Exact hardest negative (nearest other class) and hardest positive (farthest same class, not itself).

    Pool chunks of chunk_elems // n_anchors rows keep the distance block bounded (~4 * chunk_elems bytes).
    """
    pool = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)  # mine_triplets normalises too
    lab = torch.from_numpy(y)
    a = torch.from_numpy(anchors)
    q, qy = pool[a], lab[a]
    best_n = torch.full((a.numel(),), float("inf"))
    arg_n = torch.full((a.numel(),), -1, dtype=torch.long)
    best_p = torch.full((a.numel(),), -1.0)
    arg_p = torch.full((a.numel(),), -1, dtype=torch.long)
    step = max(1, chunk_elems // max(1, a.numel()))
    for lo in range(0, pool.shape[0], step):
        block = pool[lo:lo + step]
        d = torch.cdist(q, block).square_()  # squared L2, the space mine_triplets reports
        same = qy[:, None] == lab[lo:lo + step][None, :]
        dn = d.masked_fill(same, float("inf")).min(1)
        own = a[:, None] == torch.arange(lo, lo + block.shape[0])[None, :]
        dp = d.masked_fill(~same | own, -1.0).max(1)
        better_n, better_p = dn.values < best_n, dp.values > best_p
        best_n, arg_n = torch.where(better_n, dn.values, best_n), torch.where(better_n, dn.indices + lo, arg_n)
        best_p, arg_p = torch.where(better_p, dp.values, best_p), torch.where(better_p, dp.indices + lo, arg_p)
    return arg_n.numpy(), best_n.numpy(), arg_p.numpy()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class TimedIndexes(ClassIndexes):
    """ClassIndexes that records its build and search seconds (patched into saga.train.mining)."""

    record: dict[str, float] = {}
    last: "TimedIndexes | None" = None

    def __init__(self, *a: Any) -> None:
        _, seconds = timed(lambda: super(TimedIndexes, self).__init__(*a))
        # every build of the call: auto whose recall check fails builds the IVF, then exact indexes
        TimedIndexes.record.setdefault("builds_s", []).append(seconds)
        TimedIndexes.last = self

    def nearest_other(self, anchors: np.ndarray) -> np.ndarray:
        out, seconds = timed(lambda: super(TimedIndexes, self).nearest_other(anchors))
        TimedIndexes.record["search_s"] = seconds
        return out

    def exact_pairs(self, anchors: np.ndarray, farthest: bool) -> tuple[np.ndarray, np.ndarray]:
        out, seconds = timed(lambda: super(TimedIndexes, self).exact_pairs(anchors, farthest))
        TimedIndexes.record.update(search_s=seconds, positives_s=0.0)  # one pass finds both
        return out

    def approx_recall(self, anchors: np.ndarray) -> float:
        out, seconds = timed(lambda: super(TimedIndexes, self).approx_recall(anchors))
        TimedIndexes.record.update(check_s=seconds, check_recall=out)
        return out

    def positives(self, anchors: np.ndarray, farthest: bool) -> np.ndarray:
        out, seconds = timed(lambda: super(TimedIndexes, self).positives(anchors, farthest))
        TimedIndexes.record["positives_s"] = seconds
        return out


def recall(x: np.ndarray, anchors: np.ndarray, neg: np.ndarray, true_d: np.ndarray) -> dict[str, Any]:
    """Share of anchors given a true hardest negative; the mean relative excess distance over all anchors and
    over the misses alone (the first is diluted by the found ones' zeros; None without misses)."""
    d = np.einsum("ij,ij->i", x[anchors] - x[neg], x[anchors] - x[neg])
    found = np.isclose(d, true_d, rtol=1e-4, atol=1e-5)
    excess = d / true_d - 1.0
    return {"recall_hardest_negative": round(float(found.mean()), 4),
            "mean_excess_distance": round(float(np.mean(excess)), 5),
            "mean_excess_distance_misses": round(float(np.mean(excess[~found])), 5) if (~found).any() else None}


def run_method(x: np.ndarray, y: np.ndarray, anchors: np.ndarray, true_d: np.ndarray, brute_s: float,
               search: str, params: ApproxParams | None) -> dict[str, Any]:
    TimedIndexes.record = {}
    original, mining.ClassIndexes = mining.ClassIndexes, TimedIndexes
    try:
        mined, seconds = timed(lambda: mining.mine_triplets(x, y, anchors=anchors, search=search, approx=params))
    finally:
        mining.ClassIndexes = original
    pos = np.searchsorted(anchors, mined.anchors)
    quality = recall(x, mined.anchors, mined.negatives, true_d[pos])
    parts = TimedIndexes.record
    extra = {k: round(parts[k], 3) for k in ("check_s", "check_recall") if k in parts}
    extra["search_dims"] = TimedIndexes.last.dims if TimedIndexes.last is not None else x.shape[1]
    n, m = x.shape[0], anchors.size
    per_anchor = parts["search_s"] + parts["positives_s"]  # the rest (build, normalising) is paid once
    refresh = seconds - per_anchor + per_anchor * n / m
    builds = parts["builds_s"]
    return {"seconds": round(seconds, 3), "index_build_s": round(sum(builds), 3), "index_builds": len(builds),
            "search_s": round(parts["search_s"], 3), "positives_s": round(parts["positives_s"], 3),
            "speedup_vs_torch": round(brute_s / seconds, 2),
            **quality, "triplets": len(mined),
            "search": mined.search, "full_refresh_s": round(refresh, 1),
            "full_refresh_speedup_vs_torch": round(brute_s * n / m / refresh, 2), **extra}


def sweep(x: np.ndarray, anchors: np.ndarray, true_d: np.ndarray, brute_s: float, positives_s: float,
          nprobes: list[int]) -> list[dict[str, Any]]:
    """Recall and search time over nprobe on the index the approximate run just built (build excluded).

    Torch's pass finds the hardest positives too, so its time is set against search + positives_s."""
    index = TimedIndexes.last
    out = []
    for nprobe in nprobes:
        for ivf in index.indexes:
            if ivf is not None and hasattr(ivf, "nprobe"):
                ivf.nprobe = min(nprobe, ivf.nlist)
        neg, seconds = timed(lambda: index.nearest_other(anchors))
        quality = recall(x, anchors, neg, true_d)
        out.append({"nprobe": nprobe, "search_s": round(seconds, 3), "positives_s": round(positives_s, 3),
                    "search_speedup_vs_torch": round(brute_s / (seconds + positives_s), 2), **quality})
        print(f"[mining]   sweep nprobe={nprobe}: {seconds:.2f}s recall {quality['recall_hardest_negative']}",
              file=sys.stderr, flush=True)
    return out


def run_size(n: int, args: argparse.Namespace, rank: int) -> dict[str, Any]:
    (x, y), gen_s = timed(lambda: simulate(n, args.dim, args.classes, args.sep, args.seed, rank))
    anchors = np.sort(np.random.default_rng(args.seed + 1).choice(n, min(args.anchors, n), replace=False))
    print(f"[mining] n={n}: simulated in {gen_s:.1f}s; torch brute force...", file=sys.stderr, flush=True)
    (_, true_d, _), brute_s = timed(lambda: torch_brute(x, y, anchors, args.chunk_elems))
    out: dict[str, Any] = {"n": n, "anchors": int(anchors.size), "torch_brute_s": round(brute_s, 3)}
    params = ApproxParams(nlist=args.nlist, nprobe=args.nprobe, seed=args.seed,
                          energy=None if args.energy <= 0 else args.energy)
    for name, search in (("faiss_flat", "exact"), ("faiss_approx", "approx")):
        print(f"[mining] n={n}: {name}...", file=sys.stderr, flush=True)
        out[name] = run_method(x, y, anchors, true_d, brute_s, search, params)
        print(f"[mining]   {out[name]}", file=sys.stderr, flush=True)
    out["faiss_approx"]["nlist_per_class"] = params.lists_for(int(np.bincount(y).min()))
    out["sweep"] = sweep(x, anchors, true_d, brute_s, out["faiss_approx"]["positives_s"], args.sweep)
    print(f"[mining] n={n}: auto...", file=sys.stderr, flush=True)
    out["auto"] = run_method(x, y, anchors, true_d, brute_s, "auto", params)
    print(f"[mining]   {out['auto']}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--anchors", type=int, default=2000, help="fixed anchor subset mined by every method")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--sep", type=float, default=0.4, help="centre norm (noise norm ~1): lower = more overlap")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists per class (default: sqrt(members))")
    parser.add_argument("--nprobe", type=int, default=ApproxParams().nprobe, help="IVF lists searched per class")
    parser.add_argument("--energy", type=float, default=ApproxParams().energy,
                        help="variance share of the approximate search space (0: the full space)")
    parser.add_argument("--sweep", type=int, nargs="*", default=[2, 4, 8, 16, 32],
                        help="nprobe values for the recall / time curve")
    parser.add_argument("--chunk-elems", type=int, default=1 << 25, help="torch distance block (elements)")
    parser.add_argument("--rank", type=int, default=0, help="noise rank of the main run (0: isotropic)")
    parser.add_argument("--low-rank", type=int, default=16, help="noise rank of a second, structured run (0: skip)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch and FAISS threads (default: the cores this process may use)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    results = [run_size(n, args, args.rank) for n in args.sizes]
    low = [run_size(n, args, args.low_rank) for n in args.sizes] if args.low_rank else []
    print(json.dumps({
        "benchmark": "mining", "machine": f"{os.cpu_count()} cores, {args.threads} threads (torch and FAISS)",
        "dim": args.dim, "classes": args.classes, "sep": args.sep,
        "approx": f"IVF-Flat per class, nlist {args.nlist or 'sqrt(members)'}, nprobe {args.nprobe}, "
                  f"in the principal subspace holding {args.energy} of the variance (0: full space)",
        "auto_approx_min_pool": APPROX_MIN_POOL, "rank": args.rank, "results": results,
        "low_rank": {"rank": args.low_rank, "results": low},
    }, indent=2))


if __name__ == "__main__":
    main()
