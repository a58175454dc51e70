"""The scaling figure of docs/performance.md, drawn from saved benchmark JSON (no benchmark is rerun).

    python bench/mining.py > bench/results/mining.json
    python bench/stage1_memory.py > bench/results/stage1_memory.json
    python bench/plot_scaling.py [--results bench/results] [--out docs/img/scaling.png]

Left: mining time for a fixed anchor subset vs pool size, per method (log-log).
Right: stage-1 streaming peak RSS vs cache size, next to the size of the features it streams,
the RSS growth of the training phase alone and the columnar record index; a simulated point
(bench/stage1_memory.py --simulate) is circled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def short_method(description: str) -> str:
    """The legend's name of the approximate search: its first clause ("IVF-Flat per class"), not the whole recipe,
    so the legend does not cover the curves."""
    return description.split(",")[0].strip()


def plot_mining(ax: plt.Axes, mining: dict) -> None:
    """Mining time vs pool size per method, the isotropic pool and (when measured) the low-rank one."""
    rows = mining["results"]
    approx = short_method(mining["approx"])
    n = [r["n"] for r in rows]
    ax.plot(n, [r["torch_brute_s"] for r in rows], "o-", label="torch brute force (exact)")
    ax.plot(n, [r["faiss_flat"]["seconds"] for r in rows], "s-", label="FAISS flat (exact)")
    ax.plot(n, [r["faiss_approx"]["seconds"] for r in rows], "^-", label=f"FAISS {approx}")
    ax.plot(n, [r["faiss_approx"]["index_build_s"] for r in rows], "^:", color="C2", alpha=0.6,
            label="  its index build")
    if "exact_fallback_s" in rows[0]["faiss_flat"]:
        ax.plot(n, [r["faiss_flat"]["exact_fallback_s"] for r in rows], "s:", color="C1", alpha=0.6,
                label="  flat's exact fallback")
    annotate_recall(ax, rows, "C2", (6, 4))
    low = (mining.get("low_rank") or {}).get("results")
    if low:
        rank = mining["low_rank"]["rank"]
        ax.plot([r["n"] for r in low], [r["faiss_approx"]["seconds"] for r in low], "v--", color="C4",
                label=f"FAISS {approx}, rank-{rank} pool")
        annotate_recall(ax, low, "C4", (6, -12))
    ax.set(xscale="log", yscale="log", xlabel="pool size N (d=256)", ylabel="seconds",
           title=f"Hardest-negative mining, {rows[0]['anchors']} anchors")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def annotate_recall(ax: plt.Axes, rows: list[dict], color: str, offset: tuple[int, int]) -> None:
    for r in rows:
        recall = r["faiss_approx"]["recall_hardest_negative"]
        ax.annotate(f"recall {recall:.2f}", (r["n"], r["faiss_approx"]["seconds"]),
                    textcoords="offset points", xytext=offset, fontsize=7, color=color)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--results", type=Path, default=root / "bench" / "results")
    parser.add_argument("--out", type=Path, default=root / "docs" / "img" / "scaling.png")
    args = parser.parse_args()
    mining = json.loads((args.results / "mining.json").read_text())
    memory = json.loads((args.results / "stage1_memory.json").read_text())

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_mining(left, mining)

    rows = [r for r in memory["results"] if "error" not in r]  # a size whose measuring process failed
    v = [r["videos"] for r in rows]
    right.plot(v, [r["peak_rss_mb"] / 1024 for r in rows], "o-", label="peak RSS (ru_maxrss)")
    right.plot(v, [r["rss_at_start_mb"] / 1024 for r in rows], "s--", label="RSS when training starts")
    right.plot(v, [r["features_gb"] * 1e9 / 2**30 for r in rows], ":", color="gray", label="features on disk")
    if "train_growth_mb" in rows[0]:
        right.plot(v, [r["train_growth_mb"] / 1024 for r in rows], "^-", label="growth while training (the stream)")
    if "index_mb" in rows[0]:
        right.plot(v, [r["index_mb"] / 1024 for r in rows], "d-", label="columnar record index")
    sim = [r for r in rows if r.get("simulated")]
    if sim:
        right.scatter([r["videos"] for r in sim], [r["peak_rss_mb"] / 1024 for r in sim], s=90, facecolors="none",
                      edgecolors="black", zorder=5, label="simulated (synthetic index, no features)")
    right.axhline(4, color="red", alpha=0.4, label="4 GiB budget")
    right.set(xscale="log", yscale="log", xlabel="videos in the cache", ylabel="GiB",
              title=f"Stage 1 streamed, {memory['steps']} steps (T={memory['frames']}, D={memory['dim']})")
    right.grid(True, which="both", alpha=0.3)
    right.set_ylim(top=300)  # room for the legend above the curves
    right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
