"""The readout's label-free parts measured side by side: the same trained θ, its discriminant four ways.

    python bench/readout.py --cache CACHE RUNS_DIR [RUNS_DIR ...] [--pool-sizes 25 100] [--out results.json]

Each RUNS_DIR is a `saga ablate` folder (or a folder of run folders). For every finished stage-2
run, θ is loaded once and its readout refitted exactly as stage 2 does (`saga.train.readout`):

- `plain`: one mean per class, the labelled videos alone;
- `self_trained`: the same, self-trained on the unlabelled train videos;
- `sources`: one mean per labelled generator, each class the mixture of its generators';
- `sources_self_trained`: both (the default readout).

All four score the test split. The comparison is paired (same θ, same labels, same test
videos), so a difference is the readout's alone. Where nothing is unlabelled (all labels, SD-L)
the self-trained variants equal their plain ones; where each class is one generator (GEN-L) the
source variants equal theirs. `--pool-sizes` also self-trains the default readout on seeded
subsamples of the unlabelled pool (3 per size, accuracy averaged): how much pool it needs.
Prints one line per run, the mean per cell over seeds with its 95 % t-interval and the paired
gain over `plain`, and writes JSON with `--out`.
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

from saga.ablate import half_text, interval95
from saga.cache.store import FeatureCache
from saga.model.inference import record_targets
from saga.runs import load_model
from saga.train.readout import (class_logits, embed, readout_embeddings, readout_rows, source_subclasses,
                                unlabelled_pool)

CPU = torch.device("cpu")
VARIANTS = ("plain", "self_trained", "sources", "sources_self_trained")


def run_folders(roots: list[Path]) -> list[Path]:
    return sorted(p.parent for root in roots for p in root.glob("*/done.json"))


def measure(run: Path, cache: FeatureCache, pool_sizes: tuple[int, ...] = ()) -> dict[str, object]:
    """Test accuracy of the run's θ under each readout variant."""
    model, info = load_model(run)
    labelled = json.loads((run / "labelled.json").read_text())["classes"]
    chosen = {p: info.classes.index(c) for c, paths in labelled.items() for p in paths}
    train = list(cache.ok_records("train"))
    seed = int(info.config["train"]["seed"])
    unlabelled, why_not = unlabelled_pool(train, set(chosen), info.level, cache.taxonomy, seed)
    lab = [r for r in train if r.path in chosen]
    emb, real_emb, unl = readout_embeddings(model, cache, lab, train, unlabelled, info.frames, 256, CPU, seed)
    test = list(cache.ok_records("test"))
    y_test = record_targets(test, info.level, info.classes)
    keep = y_test >= 0
    test_emb = embed(model, cache, test, info.frames, 256, CPU)[keep]
    y = np.array([chosen[r.path] for r in lab])
    n = len(info.classes)
    sub, groups, _ = source_subclasses(lab, y)

    def accuracy(pool: np.ndarray, sources: bool) -> float:
        w, b, subclass_of, _ = readout_rows(emb, y, n, pool, real_emb, (sub, groups) if sources else None)
        return float((class_logits(test_emb, w, b, subclass_of, n).argmax(axis=1) == y_test[keep]).mean())

    none = unl[:0]
    row: dict[str, object] = {"run": str(run), "level": info.level, "labelled": len(lab), "sources": len(groups),
                              "unlabelled": len(unl), "self_training": why_not or "on", "test": int(keep.sum())}
    row.update({v: accuracy(none if v in ("plain", "sources") else unl, v.startswith("sources")) for v in VARIANTS})
    by_size = {}
    for size in (k for k in pool_sizes if k < len(unl)):
        draws = (np.random.default_rng(rep).choice(len(unl), size, replace=False) for rep in range(3))
        by_size[str(size)] = statistics.fmean(accuracy(unl[d], True) for d in draws)
    row["default_on_subsample"] = by_size
    return row


def cell_of(run: Path) -> str:
    setting = re.sub(r"_seed\d+$", "", run.name)
    return f"{run.parent.name}/{setting}"


def summarise(rows: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    cells: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        cells[cell_of(Path(str(row["run"])))].append(row)
    out = {}
    for cell, members in sorted(cells.items()):
        summary: dict[str, float] = {"seeds": len(members)}
        plain = [100 * float(m["plain"]) for m in members]
        for v in VARIANTS:
            acc = [100 * float(m[v]) for m in members]
            gain = [a - p for a, p in zip(acc, plain)]
            summary.update({v: statistics.fmean(acc), f"{v}_ci95": interval95(acc),
                            f"{v}_gain": statistics.fmean(gain), f"{v}_gain_ci95": interval95(gain)})
        out[cell] = summary
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--pool-sizes", type=int, nargs="*", default=[],
                        help="also self-train the default readout on seeded subsamples of the unlabelled pool")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cache = FeatureCache.open(args.cache)
    rows = []
    for run in run_folders(args.runs):
        row = measure(run, cache, tuple(args.pool_sizes))
        rows.append(row)
        print(f"{cell_of(run)} {run.name[-5:]}: " + "  ".join(f"{v} {100 * float(row[v]):.1f}" for v in VARIANTS)
              + f"  ({row['test']} test videos)", flush=True)
    cells = summarise(rows)
    for cell, s in cells.items():
        print(f"{cell} ({s['seeds']} seeds): " + "  ".join(
            f"{v} {s[v]:.1f} ± {half_text(s[f'{v}_ci95'])}" + (f" ({s[f'{v}_gain']:+.1f} ± {half_text(s[f'{v}_gain_ci95'])})"
                                                       if v != "plain" else "") for v in VARIANTS))
    if args.out:
        args.out.write_text(json.dumps({"cache": str(args.cache), "runs": rows, "cells": cells}, indent=1) + "\n")


if __name__ == "__main__":
    main()
