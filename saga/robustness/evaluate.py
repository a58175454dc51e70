"""Accuracy of a run at its level and every coarser level its predictions imply, with 95 % intervals.

A GEN-L prediction determines team, SD backbone, task and real/fake, so one run answers for
every coarser level by summing probabilities over the classes that map to each coarser class
(`saga.openworld.levels`). The metrics themselves are `saga.explain.scores.compute_metrics`,
the same as `saga evaluate` (Wilson interval for accuracy, stratified bootstrap for macro).
Every level is scored on the same videos: those with a class at the run's level.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from saga.cache.manifest import VideoRecord
from saga.explain.scores import compute_metrics
from saga.model.inference import Inference
from saga.openworld.levels import aggregate, coarser_levels, label_at, parents
from saga.runs import RunInfo
from saga.taxonomy import Taxonomy


def reported_levels(info: RunInfo, taxonomy: Taxonomy) -> list[str]:
    """The run's level and every coarser level its classes determine unambiguously, finest first."""
    return [lv for lv in coarser_levels(info.level) if parents(taxonomy, info.level, info.classes, lv) is not None]


def level_metrics(inf: Inference, records: Sequence[VideoRecord], info: RunInfo, taxonomy: Taxonomy,
                  levels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{level: {accuracy, ci, n, macro_accuracy}} over the records with a class at the run's level."""
    keep = inf.targets >= 0
    out: dict[str, dict[str, Any]] = {}
    for level in levels:
        parent = parents(taxonomy, info.level, info.classes, level)
        if parent is None:
            continue
        names, probs = aggregate(inf.probs, parent)
        index = {c: i for i, c in enumerate(names)}
        targets = np.array([index.get(label_at(r.labels, level), -1) for r in records], np.int64)
        targets[~keep] = -1
        m = compute_metrics(replace(inf, probs=probs, logits=probs, targets=targets), names, level)
        out[level] = {"accuracy": m["accuracy"], "ci": list(m["accuracy_ci"]) if m["accuracy_ci"] else None,
                      "n": m["n"], "macro_accuracy": m["macro_accuracy"]}
    return out


def markdown(result: dict[str, Any]) -> str:
    """robustness.md: one row per perturbation, accuracy [95 % CI] per level, n and failures."""
    levels = result["levels"]
    lines = [f"# Robustness of {result['run']}", "",
             f"Cache {result['cache']}, split {result['split']}, {result['n_videos']} videos "
             "(accuracy in %, 95 % Wilson interval in brackets; n = videos scored; failed = could not be "
             "re-encoded or extracted).", "",
             "| perturbation | " + " | ".join(levels) + " | n | failed | description |",
             "|---|" + "---|" * len(levels) + "---|---|---|"]
    for p in result["perturbations"]:
        cells = []
        for level in levels:
            m = p["levels"].get(level)
            cells.append("n/a" if not m or m["accuracy"] is None else
                         f"{100 * m['accuracy']:.1f} [{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]")
        lines.append(f"| {p['name']} | " + " | ".join(cells) + f" | {p['n']} | {p['failed']} | {p['description']} |")
    return "\n".join(lines) + "\n"
