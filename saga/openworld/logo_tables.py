"""The leave-one-generator-out results as markdown (results.md), and the bootstrap interval they use.

Every number goes through `fmt`: a measurement that could not be made (None, NaN: e.g. a pooled
accuracy over no video) prints "n/a" rather than crashing the whole write-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saga.explain.intervals import wilson
from saga.explain.seen import folds_seen_text

LEVELS_OPEN = ("GEN-L", "TEAM-L", "SD-L", "TASK-L")
METHODS = ("before", "gate", "ncm", "retrain", "retrain-balanced")


def boot_ci(fn, groups: list[np.ndarray], reps: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile 95 % interval of fn(*groups) with each group resampled with replacement (stratified)."""
    if any(len(g) == 0 for g in groups):
        return None
    rng = np.random.default_rng(seed)
    vals = [fn(*[g[rng.integers(0, len(g), len(g))] for g in groups]) for _ in range(reps)]
    vals = [v for v in vals if np.isfinite(v)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else None


def fmt(x: Any, spec: str = ".3f") -> str:
    """`x` formatted, "n/a" when it is not a finite number (not measured)."""
    return format(x, spec) if isinstance(x, (int, float)) and np.isfinite(x) else "n/a"


def interval(ci: Sequence[Any] | None, spec: str = ".3f") -> str:
    return f"[{fmt(ci[0], spec)}, {fmt(ci[1], spec)}]" if ci else "[n/a]"


def mean_ci(values: list[float]) -> str:
    v = np.array([x for x in values if isinstance(x, (int, float)) and np.isfinite(x)])
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f} {interval(boot_ci(np.mean, [v]))} (n={len(v)})"


def pooled(rows: list[dict], side: str) -> tuple[int, int]:
    """(correct, videos) of `side` ("new" / "old") summed over folds."""
    return sum(x[f"{side}_correct"] for x in rows), sum(x[f"{side}_n"] for x in rows)


def share(c: int, n: int) -> float | None:
    return c / n if n else None


def to_markdown(r: dict) -> str:
    stale = r.get("not_withheld") or []
    lines = ([f"**Not unseen-generator figures:** {len(stale)} run(s) were trained by an older saga that read their "
              f"held-out generator's videos ({', '.join(stale)}); delete them and train them again.", ""] if stale
             else []) + seen_lines(r) + openset_lines(r) + enroll_lines(r) + shots_lines(r) + calibration_lines(r)
    return "\n".join(lines) + "\n"


def seen_lines(r: dict) -> list[str]:
    text = folds_seen_text(r)
    return [text, ""] if text else []


def openset_lines(r: dict) -> list[str]:
    lines = ["## Open set, leave-one-generator-out (test split; threshold = 95th pct of known val)", "",
             "| held out | GEN-L AUROC proto [95% CI] | OSCR proto | AUROC kNN | OSCR kNN | detected@thr | false-unknown@thr |",
             "|---|---|---|---|---|---|---|"]
    for g, f in r["openset"].items():
        p, q = f["GEN-L"]["prototype"], f["GEN-L"]["knn"]
        lines.append(f"| {g} | {fmt(p['auroc'])} {interval(p.get('auroc_ci'), '.2f')} | {fmt(p['oscr'])} | "
                     f"{fmt(q['auroc'])} | {fmt(q['oscr'])} | {fmt(p['unknown_detected'], '.2f')} | "
                     f"{fmt(p['false_unknown'])} |")
    lines += ["", "| level | kind | mean AUROC [95% CI over folds] | mean OSCR | folds with an unseen class |",
              "|---|---|---|---|---|"]
    for level in LEVELS_OPEN:
        for kind in ("prototype", "knn"):
            folds = [f[level][kind] for f in r["openset"].values() if f[level]["unseen_class"] is not None]
            lines.append(f"| {level} | {kind} | {mean_ci([x['auroc'] for x in folds])} | "
                         f"{mean_ci([x['oscr'] for x in folds])} | {len(folds)} |")
    return lines


def enroll_lines(r: dict) -> list[str]:
    lines = ["", "## Enrollment (k=%d train videos) vs retraining with the same videos (test split)" % r["k"], "",
             "| level | method | new-class acc (pooled, Wilson 95%) | old-class acc (pooled) |", "|---|---|---|---|"]
    for level in LEVELS_OPEN:
        for m in METHODS:
            rows = [f["levels"][level][m] for f in r["enroll"].values() if m in f["levels"][level]]
            if not rows:
                continue
            (nc, nn), (oc, on) = pooled(rows, "new"), pooled(rows, "old")
            lines.append(f"| {level} | {m} | {fmt(share(nc, nn))} {interval(wilson(nc, nn))} ({nn}) | "
                         f"{fmt(share(oc, on))} {interval(wilson(oc, on))} ({on}) |")
    gen = {m: [f["levels"]["GEN-L"][m] for f in r["enroll"].values() if m in f["levels"]["GEN-L"]] for m in METHODS}
    if len(gen["retrain-balanced"]) != len(gen["retrain"]):
        gen.pop("retrain-balanced")  # only compare on the same folds
    if not gen["gate"]:
        return lines
    acc = {m: (share(*pooled(v, "new")), share(*pooled(v, "old"))) for m, v in gen.items() if v}
    for m in ("gate", "ncm"):
        for b in [x for x in ("retrain", "retrain-balanced") if x in acc]:
            ratio = acc[m][0] / acc[b][0] if acc[m][0] is not None and acc[b][0] else None
            lines.append(f"\nGEN-L {m} vs {b}: new-class accuracy = {fmt(ratio, '.2f')} × {b}'s; old classes "
                         f"{points(acc[m][1], acc['before'][1])} points vs the run before enrollment, "
                         f"{points(acc[m][1], acc[b][1])} vs {b}.")
    lines += ["", "| held out | new: gate | new: ncm | new: retrain | old: before | old: gate | old: retrain |",
              "|---|---|---|---|---|---|---|"]
    for g, f in r["enroll"].items():
        x = f["levels"]["GEN-L"]
        get = lambda m, side: x[m][side] if m in x else None  # noqa: E731
        lines.append(f"| {g} | {fmt(get('gate', 'new'), '.2f')} | {fmt(get('ncm', 'new'), '.2f')} | "
                     f"{fmt(get('retrain', 'new'), '.2f')} | {fmt(get('before', 'old'))} | "
                     f"{fmt(get('gate', 'old'))} | {fmt(get('retrain', 'old'))} |")
    return lines


def points(a: float | None, b: float | None) -> str:
    return fmt(100 * (a - b), "+.1f") if a is not None and b is not None else "n/a"


def shots_lines(r: dict) -> list[str]:
    if not r.get("shots"):
        return []
    lines = ["", "## Enrollment alone at k shots (GEN-L, pooled over folds and 5 draws of the k videos)", "",
             "| rule | k | new-class acc | old-class acc | folds |", "|---|---|---|---|---|"]
    keys = sorted({key for f in r["shots"].values() for key in f}, key=lambda x: (x.split("-")[0], int(x.split("-")[1])))
    for key in keys:
        rows = [x for f in r["shots"].values() for x in f.get(key, [])]
        (nc, nn), (oc, on) = pooled(rows, "new"), pooled(rows, "old")
        rule, k = key.split("-")
        lines.append(f"| {rule} | {k} | {fmt(share(nc, nn))} ({nn}) | {fmt(share(oc, on))} ({on}) | "
                     f"{len(r['shots'])} |")
    return lines


def calibration_lines(r: dict) -> list[str]:
    lines = ["", "## Calibration (T fitted on val; ECE 15 bins on test, bootstrap 95% CI)", "",
             "| run | T | accuracy | ECE before | ECE after |", "|---|---|---|---|---|"]
    for c in r["calibration"]:
        lines.append(f"| {Path(c['run']).name} | {fmt(c['temperature'])} | {fmt(c['test_accuracy'])} | "
                     f"{fmt(c['test_ece_before'], '.4f')} {interval(c['test_ece_before_ci'])} | "
                     f"{fmt(c['test_ece_after'], '.4f')} {interval(c['test_ece_after_ci'])} |")
    return lines


def acc_pair(correct: np.ndarray, new: np.ndarray) -> dict:
    """Accuracy on the new and the old classes' videos (None where there is no video: not measured)."""
    mean = lambda c: float(c.mean()) if len(c) else None  # noqa: E731
    return {"new": mean(correct[new]), "new_n": int(new.sum()), "new_correct": int(correct[new].sum()),
            "old": mean(correct[~new]), "old_n": int((~new).sum()), "old_correct": int(correct[~new].sum())}
