"""Accuracy of a run at its level and every coarser level its predictions imply, with 95 % intervals.

A GEN-L prediction determines team, SD backbone, task and real/fake, so one run answers for
every coarser level by summing probabilities over the classes that map to each coarser class
(`saga.openworld.levels`). The metrics themselves are `saga.explain.scores.compute_metrics`,
the same as `saga evaluate` (Wilson interval for accuracy, stratified bootstrap for macro).
Every level is scored on the same videos: those with a class at the run's level (the runner
selects only those; `n` is what each level scored).

A perturbation scores only the videos whose copy could be made and extracted, so its change is paired
(`paired_levels`): its accuracy minus the clean accuracy of exactly those videos, with the paired bootstrap
interval `saga evaluate` gives the transformer against the probe. Subtracting the clean row (all videos)
compared two video sets whenever a copy failed, and the videos that fail to re-encode are not random.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from saga.cache.manifest import VideoRecord
from saga.explain.intervals import paired_difference
from saga.explain.metrics import HELDOUT_KEY, split_label
from saga.explain.scores import compute_metrics
from saga.explain.seen import SEEN_KEY
from saga.model.inference import Inference
from saga.openworld.levels import aggregate, coarser_levels, label_at, parents
from saga.runs import RunInfo
from saga.taxonomy import Taxonomy


def reported_levels(info: RunInfo, taxonomy: Taxonomy) -> list[str]:
    """The run's level and every coarser level its classes determine unambiguously, finest first."""
    return [lv for lv in coarser_levels(info.level) if parents(taxonomy, info.level, info.classes, lv) is not None]


def at_level(inf: Inference, records: Sequence[VideoRecord], info: RunInfo, taxonomy: Taxonomy,
             level: str) -> tuple[list[str], Inference] | None:
    """The run's inference summed up to `level` (targets -1 where a video has no class of the run's level)."""
    parent = parents(taxonomy, info.level, info.classes, level)
    if parent is None:
        return None
    names, probs = aggregate(inf.probs, parent)
    index = {c: i for i, c in enumerate(names)}
    targets = np.array([index.get(label_at(r.labels, level), -1) for r in records], np.int64)
    targets[inf.targets < 0] = -1
    return names, replace(inf, probs=probs, logits=probs, targets=targets)


def level_metrics(inf: Inference, records: Sequence[VideoRecord], info: RunInfo, taxonomy: Taxonomy,
                  levels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{level: {accuracy, ci, n, macro_accuracy}} over the records with a class at the run's level."""
    out: dict[str, dict[str, Any]] = {}
    for level in levels:
        scored = at_level(inf, records, info, taxonomy, level)
        if scored is None:
            continue
        m = compute_metrics(scored[1], scored[0], level)
        out[level] = {"accuracy": m["accuracy"], "ci": list(m["accuracy_ci"]) if m["accuracy_ci"] else None,
                      "n": m["n"], "macro_accuracy": m["macro_accuracy"]}
    return out


def paired_levels(clean: tuple[Inference, Sequence[VideoRecord]], perturbed: tuple[Inference, Sequence[VideoRecord]],
                  originals: Sequence[int], info: RunInfo, taxonomy: Taxonomy,
                  levels: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """{level: paired change} of the perturbed videos against the clean features of the same videos.

    `originals[i]`: the index in the clean records of perturbed video i. Each value: `difference`
    (perturbed minus clean accuracy), its paired 95 % `ci`, `n` (videos scored both ways) and
    `clean_accuracy` (of those n videos); None when no video has a class at that level."""
    out: dict[str, dict[str, Any] | None] = {}
    pick = np.asarray(originals, np.int64)
    for level in levels:
        c, p = at_level(*clean, info, taxonomy, level), at_level(*perturbed, info, taxonomy, level)
        if c is None or p is None:
            continue
        ct, pt = c[1].targets[pick], p[1].targets
        both = (ct >= 0) & (pt >= 0)
        right_clean = (c[1].preds[pick] == ct)[both]
        paired = paired_difference(p[1].preds[both] == pt[both], right_clean)
        out[level] = None if paired is None else {**paired, "clean_accuracy": float(right_clean.mean())}
    return out


def markdown(result: dict[str, Any]) -> str:
    """robustness.md: one row per perturbation, accuracy [95 % CI] per level, the videos scored and failures."""
    levels = result["levels"]
    scored = result["perturbations"][0]["n"]  # clean: every selected video with a class at the run's level
    held = (f" (a held-out cache, {str(result.get('cache_id'))[:12]}: not the run's training cache)"
            if result.get(HELDOUT_KEY) else "")
    seen = result.get(SEEN_KEY)
    left = f" ({seen['n']} more left out: the run was trained or validated on them)" if seen else ""
    lines = [f"# Robustness of {result['run']}", "",
             f"Cache {result['cache']}{held}, split {split_label(result)}, {result['n_videos']} videos selected{left}, "
             f"{scored} of them with a class at {levels[0]} (accuracy in %, 95 % Wilson interval in brackets; n = "
             "videos scored, per level where the levels differ; failed = could not be re-encoded or extracted).", "",
             "| perturbation | " + " | ".join(levels) + " | n | failed | description |",
             "|---|" + "---|" * len(levels) + "---|---|---|"]
    for p in result["perturbations"]:
        cells = [_accuracy_cell(p["levels"].get(level)) for level in levels]
        lines.append(f"| {p['name']} | " + " | ".join(cells) +
                     f" | {_scored_cell(p, levels)} | {p['failed']} | {p['description']} |")
    return "\n".join(lines + _paired_table(result)) + "\n"


def _paired_table(result: dict[str, Any]) -> list[str]:
    """The change of each perturbation against the clean accuracy of the very videos it scored."""
    levels, rows = result["levels"], [p for p in result["perturbations"] if "paired" in p]
    if not rows:
        return []
    lines = ["", "Change against the clean videos, paired: each perturbation's accuracy minus the clean accuracy "
             "of the same videos (points, paired bootstrap 95 % interval; clean = that accuracy, n = the videos "
             "scored both ways; the failed videos are in neither).", "",
             "| change | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for p in rows:
        cells = [_paired_cell(p["paired"].get(lv)) for lv in levels]
        lines.append(f"| {p['name']} − clean | " + " | ".join(cells) + " |")
    return lines


def _paired_cell(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    lo, hi = (100 * x for x in d["ci"])
    return f"{100 * d['difference']:+.1f} [{lo:+.1f}, {hi:+.1f}] (clean {100 * d['clean_accuracy']:.1f}, n {d['n']})"


def _accuracy_cell(m: dict[str, Any] | None) -> str:
    if not m or m["accuracy"] is None:
        return "n/a"
    return f"{100 * m['accuracy']:.1f} [{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]"


def _scored_cell(p: dict[str, Any], levels: Sequence[str]) -> str:
    """The videos each level scored: one number when the levels agree, else `LEVEL n` for each."""
    per_level = {lv: p["levels"][lv]["n"] for lv in levels if p["levels"].get(lv)}
    if len(set(per_level.values())) <= 1:
        return str(next(iter(per_level.values()), 0))
    return ", ".join(f"{lv} {n}" for lv, n in per_level.items())
