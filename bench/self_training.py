"""Self-training of the readout, measured side by side: the same trained θ, its discriminant with and without it.

    python bench/self_training.py --cache CACHE RUNS_DIR [RUNS_DIR ...] [--pool-sizes 25 100] [--out results.json]

Each RUNS_DIR is a `saga ablate` folder (or a folder of run folders). For every finished stage-2
run that left train videos unlabelled, θ is loaded once and its readout refitted twice, exactly as
stage 2 does (`saga.train.readout`): the labelled videos' discriminant alone, and self-trained on
the unlabelled pool. Both score the test split. The comparison is paired (same θ, same labels,
same test videos), so the difference is the readout's alone. `--pool-sizes` also self-trains on
seeded subsamples of the unlabelled pool (3 per size, accuracy averaged): how much pool it needs.
Prints one line per run, the mean per cell over seeds with its 95 % t-interval, and writes JSON
with `--out`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from saga.ablate import interval95
from saga.cache.store import FeatureCache
from saga.model.inference import record_targets
from saga.runs import load_model
from saga.train.readout import discriminant, embed, readout_embeddings, self_train, unlabelled_pool

CPU = torch.device("cpu")


def run_folders(roots: list[Path]) -> list[Path]:
    return sorted(p.parent for root in roots for p in root.glob("*/done.json"))


def measure(run: Path, cache: FeatureCache, pool_sizes: tuple[int, ...] = ()) -> dict[str, object] | None:
    """Test accuracy of the run's θ with the plain and the self-trained discriminant (None: nothing unlabelled)."""
    model, info = load_model(run)
    labelled = json.loads((run / "labelled.json").read_text())["classes"]
    chosen = {p: info.classes.index(c) for c, paths in labelled.items() for p in paths}
    train = list(cache.ok_records("train"))
    seed = int(info.config["train"]["seed"])
    unlabelled, why_not = unlabelled_pool(train, set(chosen), info.level, cache.taxonomy, seed)
    if why_not:
        return None
    lab = [r for r in train if r.path in chosen]
    emb, real_emb, unl = readout_embeddings(model, cache, lab, train, unlabelled, info.frames, 256, CPU, seed)
    test = list(cache.ok_records("test"))
    y_test = record_targets(test, info.level, info.classes)
    keep = y_test >= 0
    test_emb = embed(model, cache, test, info.frames, 256, CPU)
    y = np.array([chosen[r.path] for r in lab])
    n = len(info.classes)

    def accuracy(weights: np.ndarray, bias: np.ndarray) -> float:
        return float(((test_emb[keep] @ weights.T + bias).argmax(axis=1) == y_test[keep]).mean())

    w, b, picked = self_train(emb, y, n, unl, real_emb)
    by_size = {}
    for size in (k for k in pool_sizes if k < len(unl)):
        draws = (np.random.default_rng(rep).choice(len(unl), size, replace=False) for rep in range(3))
        by_size[str(size)] = statistics.fmean(accuracy(*self_train(emb, y, n, unl[d], real_emb)[:2]) for d in draws)
    return {"run": str(run), "level": info.level, "labelled": len(lab), "unlabelled": len(unlabelled),
            "test": int(keep.sum()), "plain": accuracy(*discriminant(emb, y, n, real_emb)),
            "self_trained": accuracy(w, b), "pseudo_labelled": picked, "self_trained_on_subsample": by_size}


def cell_of(run: Path) -> str:
    setting = re.sub(r"_seed\d+$", "", run.name)
    return f"{run.parent.name}/{setting}"


def summarise(rows: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    cells: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        cells[cell_of(Path(str(row["run"])))].append(row)
    out = {}
    for cell, members in sorted(cells.items()):
        plain = [100 * float(m["plain"]) for m in members]
        trained = [100 * float(m["self_trained"]) for m in members]
        gain = [t - p for t, p in zip(trained, plain)]
        out[cell] = {"seeds": len(members), "plain": statistics.fmean(plain), "plain_ci95": interval95(plain),
                     "self_trained": statistics.fmean(trained), "self_trained_ci95": interval95(trained),
                     "gain": statistics.fmean(gain), "gain_ci95": interval95(gain)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--pool-sizes", type=int, nargs="*", default=[],
                        help="also self-train on seeded subsamples of the unlabelled pool of these sizes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cache = FeatureCache.open(args.cache)
    rows = []
    for run in run_folders(args.runs):
        row = measure(run, cache, tuple(args.pool_sizes))
        if row is not None:
            rows.append(row)
            print(f"{cell_of(run)} {run.name[-5:]}: plain {100 * row['plain']:.1f} %  "
                  f"self-trained {100 * row['self_trained']:.1f} %  ({row['test']} test videos)", flush=True)
    cells = summarise(rows)
    for cell, s in cells.items():
        print(f"{cell}: plain {s['plain']:.1f} ± {s['plain_ci95']:.1f}  self-trained {s['self_trained']:.1f} ± "
              f"{s['self_trained_ci95']:.1f}  gain {s['gain']:+.1f} ± {s['gain_ci95']:.1f}  ({s['seeds']} seeds)")
    if args.out:
        args.out.write_text(json.dumps({"cache": str(args.cache), "runs": rows, "cells": cells}, indent=1) + "\n")


if __name__ == "__main__":
    main()
