"""Hardest-negative mining: FAISS (exact flat, approximate HNSW) vs exact brute force in torch, side by side.

    python bench/mining.py [--sizes 10000 100000 1000000] [--anchors 2000] [--approx HNSW32]

Why: stage 2 mines, at every refresh, the nearest other-class item of each anchor over the whole
labelled pool (`saga.train.mining.mine_triplets`). This measures what that costs as the pool grows
and whether an approximate index (`index_factory`) is worth it, against the obvious alternative
(torch.cdist + class masking, chunked so memory stays bounded).

Pool: N simulated embeddings, d=256, C gaussian classes (random unit centres scaled by --sep,
isotropic noise of norm ~1), L2-normalised. The same fixed random subset of anchors is mined by
every method at every size (brute force over all 1M anchors would take hours), so times compare
like for like; each FAISS time includes what `mine_triplets` redoes on every call (normalising,
building the pool index over all N, hardest positives, the exact fallback). Ratios > 1 mean faster
than torch brute force. Recall = fraction of anchors whose mined negative is the true hardest one.
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


def simulate(n: int, dim: int, classes: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 L2-normalised gaussian clusters and their (n,) labels; generated in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, classes, n)
    x = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        block = centres[y[lo:hi]] + rng.standard_normal((hi - lo, dim), dtype=np.float32) / np.sqrt(dim)
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


def with_timers(record: dict[str, float]) -> Callable[[], None]:
    """Time mining's index build and exact fallback (module globals, looked up at call time); returns the undo."""
    originals = {name: getattr(mining, name) for name in ("_pool_index", "_brute_negatives")}

    def wrap(name: str) -> Callable[..., Any]:
        def timed_call(*a: Any) -> Any:
            out, seconds = timed(lambda: originals[name](*a))
            record[name] = record.get(name, 0.0) + seconds
            return out
        return timed_call

    def undo() -> None:
        for name, fn in originals.items():
            setattr(mining, name, fn)

    for name in originals:
        setattr(mining, name, wrap(name))
    return undo


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    (x, y), gen_s = timed(lambda: simulate(n, args.dim, args.classes, args.sep, args.seed))
    anchors = np.sort(np.random.default_rng(args.seed + 1).choice(n, min(args.anchors, n), replace=False))
    print(f"[mining] n={n}: simulated in {gen_s:.1f}s; torch brute force...", file=sys.stderr, flush=True)
    (true_neg, true_d, _), brute_s = timed(lambda: torch_brute(x, y, anchors, args.chunk_elems))
    out: dict[str, Any] = {"n": n, "anchors": int(anchors.size), "torch_brute_s": round(brute_s, 3)}
    for name, factory in (("faiss_flat", None), ("faiss_approx", args.approx)):
        print(f"[mining] n={n}: {name} ({factory or 'Flat'})...", file=sys.stderr, flush=True)
        parts: dict[str, float] = {}
        undo = with_timers(parts)
        try:
            mined, seconds = timed(lambda: mining.mine_triplets(x, y, k=args.k, anchors=anchors,
                                                                index_factory=factory))
        finally:
            undo()
        pos = np.searchsorted(anchors, mined.anchors)
        exact = np.isclose(mined.d_an, true_d[pos], rtol=1e-4, atol=1e-5)  # ties count as found
        out[name] = {"seconds": round(seconds, 3), "index_build_s": round(parts.get("_pool_index", 0.0), 3),
                     "exact_fallback_s": round(parts.get("_brute_negatives", 0.0), 3),
                     "speedup_vs_torch": round(brute_s / seconds, 2),
                     "recall_hardest_negative": round(float(exact.mean()), 4),
                     "exact_fallback_anchors": mined.n_fallback, "triplets": len(mined)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--anchors", type=int, default=2000, help="fixed anchor subset mined by every method")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--sep", type=float, default=0.4, help="centre norm (noise norm ~1): lower = more overlap")
    parser.add_argument("--k", type=int, default=64, help="mine_triplets k (neighbours before the fallback)")
    parser.add_argument("--approx", default="HNSW32", help="FAISS index_factory string of the approximate index")
    parser.add_argument("--chunk-elems", type=int, default=1 << 25, help="torch distance block (elements)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    results = [run_size(n, args) for n in args.sizes]
    print(json.dumps({
        "benchmark": "mining", "machine": f"{os.cpu_count()} cores, {args.threads} threads (torch and FAISS)",
        "dim": args.dim, "classes": args.classes, "sep": args.sep, "k": args.k, "approx": args.approx,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
