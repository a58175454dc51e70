"""The ablation table as markdown: what `saga ablate` writes to ablation.md and `saga report` shows.

Here, not in saga.ablate, so the report (explain) can render a saved ablation.json without
importing the app layer that trains the cells.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

CEILING = "all labels"
LABELLED_ONLY = "labelled only"  # the paper's 1-stage: the few labelled videos and nothing else of the pool
PAPER_FRACTION = 0.005  # the paper's labelled share (0.5 %): its few-label figures compare only there


def to_markdown(summary: dict[str, Any], hardest: int = 5) -> str:
    """One row per cell: mean ± 95 % t-interval over seeds, the paper's figure, the hardest classes."""
    rows = summary["rows"]
    scored = [r for r in rows if _finished(r)]
    mean_per_class = {c: statistics.fmean(r["per_class"][c] for r in scored) for c in
                      (scored[0]["per_class"] if scored else {}) if all(c in r["per_class"] for r in scored)}
    worst = sorted(mean_per_class, key=mean_per_class.get)[:hardest]
    lines = ["| setting | loss | accuracy % (95 % CI) | macro acc % (95 % CI) | paper % | " + " | ".join(worst) + " |",
             "|---" * (5 + len(worst)) + "|"]
    n_seeds = len(summary["seeds"])
    for r in rows:
        shown = r.get("paper") is not None and paper_applies(r["setting"], summary["fraction"])
        paper = f"{r['paper']:.2f}" if shown else "–"
        if not _finished(r):
            lines.append(f"| {r['setting']} | {r['loss']} | {_failed(r, n_seeds)} | failed | {paper} | "
                         + " | ".join("–" for _ in worst) + " |")
            continue
        cells = [f"{r['per_class'][c]:.1f}" if c in r["per_class"] else "–" for c in worst]
        runs = _runs(r, n_seeds)
        lines.append(f"| {r['setting']} | {r['loss']} | {_pm(r['accuracy_mean'], r['accuracy_ci95'], runs, n_seeds)}"
                     f"{_lost(r)} | {_pm(r['macro_mean'], r['macro_ci95'], runs, n_seeds)} | {paper} | "
                     + " | ".join(cells) + " |")
    head = (f"{summary['level']} ablation, {n_seeds} seed{'' if n_seeds == 1 else 's'}, "
            f"labelled fraction {summary['fraction']} "
            f"(floor {summary.get('floor')}{_per_generator(summary)}){_test_sizes(summary)}; ± is the 95 % "
            f"t-interval over seeds; per-class columns: the {hardest} hardest classes on average; "
            f"{_paper_note(summary)}\n\n{_setup(summary)}")
    return head + "\n".join(lines) + "\n" + _failures(summary)


def _finished(row: dict[str, Any]) -> bool:
    """A row with figures: a cell whose every seed failed (`saga ablate` went on with the others) has none."""
    return "accuracy_mean" in row


def _failed(row: dict[str, Any], n_seeds: int) -> str:
    lost = row.get("failed_seeds") or []
    return f"failed ({len(lost)} of {n_seeds} seeds)" if lost else "failed"


def _lost(row: dict[str, Any]) -> str:
    """' (seed 1 failed)' beside the mean of a cell that lost some seeds: the mean is of the others."""
    lost = row.get("failed_seeds") or []
    return f" (seed{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} failed)" if lost else ""


def _failures(summary: dict[str, Any]) -> str:
    """The failed cells and why, under the table: a rerun of the same command trains only these again."""
    failed = [f for f in summary.get("failed") or [] if isinstance(f, dict)]
    if not failed:
        return ""
    lines = [f"- {f.get('run')}: {f.get('error')}" for f in failed]
    return (f"\n{len(failed)} cell run(s) failed, left out of the figures above; rerun the same command to train "
            "only these again (finished cells are kept):\n\n" + "\n".join(lines) + "\n")


def paper_applies(setting: str, fraction: float) -> bool:
    """The paper's figure compares with a row trained on its own labelled share: 0.5 %, or all labels
    (the ceiling); beside a grid at another --fraction it would read as a measurement of the same thing."""
    return setting.endswith(CEILING) or _at_paper_share(fraction)


def _at_paper_share(fraction: float) -> bool:
    return math.isclose(float(fraction), PAPER_FRACTION)


def _paper_note(summary: dict[str, Any]) -> str:
    if _at_paper_share(summary["fraction"]):
        return "paper %: the paper's GenVideo figures at 0.5 % labels (the all-labels row: all labels)"
    return (f"paper %: the all-labels row's only (the paper's other figures are at 0.5 % labels, this grid's at "
            f"fraction {summary['fraction']})")


def _test_sizes(summary: dict[str, Any]) -> str:
    """The test videos scored, in all (what a reader judges the intervals by) and per scored class; a class
    without test videos is in no figure, so it is counted apart."""
    counts = summary.get("test_videos_per_class") or {}
    scored = [n for n in counts.values() if n > 0]
    total = next((n for n in [summary.get("n_test"), *(r.get("n_test") for r in summary["rows"])]
                  if isinstance(n, int) and not isinstance(n, bool) and n > 0), sum(scored))
    text = f", n = {total} test videos scored" if total else ""
    text += f" ({min(scored)}–{max(scored)} per class)" if scored else ""
    if missing := len(counts) - len(scored):
        text += f" ({missing} class{'es' if missing > 1 else ''} without test videos, in no figure)"
    return text


def _setup(summary: dict[str, Any]) -> str:
    """What every cell shares: the stage-1 run (the 2-stage cells' θ), T′, the epochs and θ's options."""
    if "from" not in summary:  # written before ablate recorded it
        return ""
    model = ", ".join(f"{k} {v}" for k, v in (summary.get("model") or {}).items())
    epochs = summary.get("epochs")
    return (f"Every cell: T′ = {summary.get('frames')} frames, {epochs} epoch{'' if epochs == 1 else 's'} (at least "
            f"{summary.get('min_steps')} steps), θ: {model}; the 2-stage cells adapt the stage-1 run "
            f"{summary['from']}.{_triplet(summary)}{_changed(summary)}{_other_code(summary)}\n\n")


def _triplet(summary: dict[str, Any]) -> str:
    """The triplet term's options (the ce+semihnm and ce+hnm cells'); absent from tables of an older saga."""
    hnm = summary.get("hnm")
    if not isinstance(hnm, dict):
        return ""
    every = hnm.get("mine_every")
    when = "every epoch" if every == "epoch" else f"every {every} steps"
    return (f" The ce+semihnm and ce+hnm cells: λ = {hnm.get('lam')} (λ·CE + (1 − λ)·triplet), margin "
            f"{hnm.get('margin')}, negatives mined {when}, {hnm.get('positive')} positives.")


def _changed(summary: dict[str, Any]) -> str:
    cells = summary.get("cells_on_changed_cache") or []
    if not cells:
        return ""
    return (f" {len(cells)} run(s) began before the cache changed and were kept or continued by --resume "
            f"({', '.join(cells)}): trained wholly or partly on its earlier records.")

def _other_code(summary: dict[str, Any]) -> str:
    cells = summary.get("cells_by_other_code") or []
    if not cells:
        return ""
    return (f" {len(cells)} run(s) were reused from folders that other saga code trained (an upgrade or an edit "
            f"since; or a saga that did not record its code) ({', '.join(cells)}): delete those folders and rerun "
            "to have every cell from this code.")


def _runs(row: dict[str, Any], n_seeds: int) -> int:
    """The seeds a row averages: fewer than the grid's for a probe row whose probe was skipped on some seeds
    (a table written before rows recorded `runs` is taken as all of them)."""
    runs = row.get("runs")
    return runs if isinstance(runs, int) and not isinstance(runs, bool) and 0 < runs < n_seeds else n_seeds


def _pm(mean: float, half: float | None, runs: int = 1, n_seeds: int = 1) -> str:
    """'71.0 ± 3.0'; a row over fewer seeds than the header's says how many: '71.0 ± 3.0 (2 of 3 seeds)'."""
    of = f"{runs} of {n_seeds} seeds" if runs < n_seeds else f"{runs} seed{'' if runs == 1 else 's'}"
    if half is None:
        return f"{mean:.1f} ({of}: no interval)"
    return f"{mean:.1f} ± {half:.1f}" + (f" ({of})" if runs < n_seeds else "")


def _per_generator(summary: dict[str, Any]) -> str:
    m = summary.get("per_generator") or 0
    return f", {m} per generator" if m else ""
