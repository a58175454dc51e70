"""The ablation table as markdown: what `saga ablate` writes to ablation.md and `saga report` shows.

Here, not in saga.ablate, so the report (explain) can render a saved ablation.json without
importing the app layer that trains the cells.
"""

from __future__ import annotations

import statistics
from typing import Any


def to_markdown(summary: dict[str, Any], hardest: int = 5) -> str:
    """One row per cell: mean ± 95 % t-interval over seeds, the paper's figure, the hardest classes."""
    rows = summary["rows"]
    mean_per_class = {c: statistics.fmean(r["per_class"][c] for r in rows) for c in rows[0]["per_class"]
                      if all(c in r["per_class"] for r in rows)}
    worst = sorted(mean_per_class, key=mean_per_class.get)[:hardest]
    lines = ["| setting | loss | accuracy % (95 % CI) | macro acc % (95 % CI) | paper % | " + " | ".join(worst) + " |",
             "|---" * (5 + len(worst)) + "|"]
    for r in rows:
        paper = "–" if r["paper"] is None else f"{r['paper']:.2f}"
        cells = [f"{r['per_class'][c]:.1f}" for c in worst]
        lines.append(f"| {r['setting']} | {r['loss']} | {_pm(r['accuracy_mean'], r['accuracy_ci95'])} | "
                     f"{_pm(r['macro_mean'], r['macro_ci95'])} | {paper} | " + " | ".join(cells) + " |")
    counts = summary.get("test_videos_per_class") or {}
    size = (f", {min(counts.values())}–{max(counts.values())} test videos per class" if counts else "")
    head = (f"{summary['level']} ablation, {len(summary['seeds'])} seeds, labelled fraction {summary['fraction']} "
            f"(floor {summary.get('floor')}{_per_generator(summary)}){size}; ± is the 95 % t-interval over seeds; "
            f"per-class columns: the {hardest} hardest classes on average\n\n")
    return head + "\n".join(lines) + "\n"


def _pm(mean: float, half: float | None) -> str:
    return f"{mean:.1f} ± {half:.1f}" if half is not None else f"{mean:.1f} (1 seed: no interval)"


def _per_generator(summary: dict[str, Any]) -> str:
    m = summary.get("per_generator") or 0
    return f", {m} per generator" if m else ""
