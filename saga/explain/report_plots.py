"""The report's open-world figures, drawn from the data the open-world tools store (never recomputed).

- `reliability_png`: reliability diagrams (accuracy against confidence per bin, the gap to the
  diagonal shaded, videos per bin below) before and after temperature scaling;
- `curves`: the ROC (unseen videos detected against known videos wrongly called unknown) and the
  OSCR curve (known videos accepted *and* correctly classified against unseen videos accepted)
  from the compact per-video scores of `saga.openworld.openset.score_lists`: three sorted groups
  (known correct, known wrong, unknown), each possibly a set of evenly spaced quantiles standing
  for `n[group]` videos; a stored value of group g weighs n[g] / len(list) videos;
- `openset_png` / `logo_png`: one run's curves and score distribution; every fold's curves of a
  leave-one-generator-out experiment with their vertical mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from saga.explain.report_html import png

GROUPS = ("known_correct", "known_wrong", "unknown")


def _group(scores: dict[str, Any], name: str) -> tuple[np.ndarray, float]:
    """(sorted values, videos per value) of one group of `score_lists`."""
    v = np.sort(np.asarray(scores.get(name) or [], np.float64))
    n = (scores.get("n") or {}).get(name, len(v))
    return v, (n / len(v) if len(v) else 0.0)


def curves(scores: dict[str, Any]) -> dict[str, Any] | None:
    """ROC and OSCR points, with their areas, from stored scores; None without known or unknown videos.

    A video is called unknown when its score is above θ; θ sweeps every stored value (ties move
    together), so with unsubsampled scores the areas equal the stored AUROC (Mann–Whitney, ties ½)
    and OSCR exactly.
    """
    (kc, wc), (kw, ww), (un, wu) = (_group(scores, g) for g in GROUPS)
    n_known, n_unknown = wc * len(kc) + ww * len(kw), wu * len(un)
    if n_known <= 0 or n_unknown <= 0:
        return None
    theta = np.unique(np.concatenate([kc, kw, un]))
    le = lambda v, w: np.searchsorted(v, theta, side="right") * w  # noqa: E731  videos with score <= θ
    acc_known = (le(kc, wc) + le(kw, ww)) / n_known
    acc_correct, acc_unknown = le(kc, wc) / n_known, le(un, wu) / n_unknown
    # ROC: x = known called unknown (1 - accepted), y = unknown detected; from (0, 0) to (1, 1)
    fpr = np.concatenate([[0.0], (1.0 - acc_known)[::-1], [1.0]])
    tpr = np.concatenate([[0.0], (1.0 - acc_unknown)[::-1], [1.0]])
    # OSCR: x = unknown accepted, y = known accepted and correct; from (0, 0) to (1, closed-set accuracy)
    ofpr, occr = np.concatenate([[0.0], acc_unknown]), np.concatenate([[0.0], acc_correct])
    area = lambda x, y: float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))  # noqa: E731
    return {"fpr": fpr, "tpr": tpr, "auroc": area(fpr, tpr), "oscr_fpr": ofpr, "ccr": occr,
            "oscr": area(ofpr, occr), "n_known": n_known, "n_unknown": n_unknown,
            "closed_accuracy": wc * len(kc) / n_known}


def _style(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _roc_axes(ax_roc: Any, ax_oscr: Any) -> None:
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    _style(ax_roc, "ROC: known vs unseen", "known videos called unknown (FPR)", "unseen videos detected (TPR)")
    _style(ax_oscr, "OSCR curve", "unseen videos accepted", "known accepted and correct (CCR)")


def openset_png(scores: dict[str, Any], threshold: float | None, title: str) -> bytes:
    """One run: ROC + OSCR curves when it has unseen videos, and the score distribution per group."""
    c = curves(scores)
    fig = Figure(figsize=(11 if c else 4.6, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3 if c else 1)
    axes = list(np.atleast_1d(axes))
    if c:
        _roc_axes(axes[0], axes[1])
        axes[0].plot(c["fpr"], c["tpr"], color="#2563eb", lw=1.6, label=f"AUROC {c['auroc']:.3f}")
        axes[1].plot(c["oscr_fpr"], c["ccr"], color="#2563eb", lw=1.6, label=f"OSCR {c['oscr']:.3f}")
        axes[1].axhline(c["closed_accuracy"], color="grey", lw=0.8, ls=":", label="closed-set accuracy")
        for ax in axes[:2]:
            ax.legend(fontsize=7, loc="lower right")
    ax = axes[-1]
    colours = {"known_correct": "#16a34a", "known_wrong": "#f59e0b", "unknown": "#dc2626"}
    labels = {"known_correct": "known, correct", "known_wrong": "known, misclassified", "unknown": "unseen"}
    allv = np.concatenate([_group(scores, g)[0] for g in GROUPS])
    bins = np.linspace(allv.min(), allv.max() + 1e-9, 31) if len(allv) else 10
    for g in GROUPS:
        v, w = _group(scores, g)
        if len(v):
            ax.hist(v, bins=bins, weights=np.full(len(v), w), histtype="step", lw=1.4, color=colours[g],
                    label=f"{labels[g]} ({round(w * len(v))})")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=1, ls="--", label=f"threshold {threshold:.3f}")
    ax.set_title("score (higher = more unknown)", fontsize=9)
    ax.set_xlabel("score", fontsize=8)
    ax.set_ylabel("videos", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return png(fig)


def logo_png(folds: dict[str, dict[str, dict[str, Any]]], level: str = "GEN-L") -> bytes | None:
    """Per score kind (rows): every fold's ROC and OSCR curve (thin) and their vertical mean (bold).

    `folds`: kind -> held-out generator -> stored scores (`score_lists`). None when no fold has scores.
    """
    kinds = {k: {g: c for g, s in v.items() if (c := curves(s))} for k, v in folds.items()}
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        return None
    fig = Figure(figsize=(9, 3.6 * len(kinds)), dpi=100, layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(kinds), 2, squeeze=False))
    grid = np.linspace(0, 1, 201)
    for (kind, per_fold), (ax_roc, ax_oscr) in zip(kinds.items(), axes):
        _roc_axes(ax_roc, ax_oscr)
        rocs, oscrs = [], []
        for c in per_fold.values():
            ax_roc.plot(c["fpr"], c["tpr"], color="#94a3b8", lw=0.7, alpha=0.8)
            ax_oscr.plot(c["oscr_fpr"], c["ccr"], color="#94a3b8", lw=0.7, alpha=0.8)
            rocs.append(np.interp(grid, c["fpr"], c["tpr"]))
            oscrs.append(np.interp(grid, c["oscr_fpr"], c["ccr"]))
        worst = min(per_fold, key=lambda g: per_fold[g]["auroc"])
        w = per_fold[worst]
        ax_roc.plot(w["fpr"], w["tpr"], color="#dc2626", lw=1, label=f"lowest: {worst} ({w['auroc']:.3f})")
        mean_auroc = np.mean([c["auroc"] for c in per_fold.values()])
        mean_oscr = np.mean([c["oscr"] for c in per_fold.values()])
        ax_roc.plot(grid, np.mean(rocs, 0), color="#2563eb", lw=2,
                    label=f"mean of {len(per_fold)} folds (AUROC {mean_auroc:.3f})")
        ax_oscr.plot(grid, np.mean(oscrs, 0), color="#2563eb", lw=2, label=f"mean (OSCR {mean_oscr:.3f})")
        ax_roc.set_title(f"{level} ROC, {kind} score", fontsize=9)
        ax_oscr.set_title(f"{level} OSCR curve, {kind} score", fontsize=9)
        for ax in (ax_roc, ax_oscr):
            ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def reliability_png(before: dict[str, Any], after: dict[str, Any] | None, title: str,
                    temperature: float | None = None) -> bytes:
    """Reliability diagrams side by side (before / after calibration): accuracy bars per confidence bin,
    the gap to the mean confidence shaded, the diagonal, and the videos per bin underneath."""
    panels = [("before", before)] + ([(f"after (T = {temperature:.2f})" if temperature else "after", after)]
                                     if after else [])
    fig = Figure(figsize=(4.2 * len(panels), 4.4), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, gridspec_kw={"height_ratios": [3, 1]})
    for col, (name, d) in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        edges = np.asarray(d.get("edges") or np.linspace(0, 1, len(d.get("count", [])) + 1), np.float64)
        lo, width = edges[:-1], np.diff(edges)
        acc = np.array([np.nan if a is None else a for a in d.get("accuracy", [])], np.float64)
        conf = np.array([np.nan if c is None else c for c in d.get("confidence", [])], np.float64)
        count = np.asarray(d.get("count", []), np.float64)
        has = count > 0
        top.bar(lo[has], acc[has], width[has], align="edge", color="#3e7bfa", edgecolor="#1e3a8a", lw=0.5,
                label="accuracy")
        gap_lo, gap_hi = np.minimum(acc, conf)[has], np.abs(acc - conf)[has]
        top.bar(lo[has], gap_hi, width[has], bottom=gap_lo, align="edge", color="#dc2626", alpha=0.3,
                edgecolor="#dc2626", lw=0.5, label="gap to confidence")
        top.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(f"{name}: ECE {100 * d.get('ece', float('nan')):.1f} % (n = {d.get('n', '?')})", fontsize=9)
        top.set_ylabel("accuracy", fontsize=8)
        top.tick_params(labelsize=7)
        top.legend(fontsize=7, loc="upper left")
        bottom.bar(lo, count, width, align="edge", color="#94a3b8")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel("confidence", fontsize=8)
        bottom.set_ylabel("videos", fontsize=8)
        bottom.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return png(fig)
