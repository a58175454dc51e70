"""The report's section on a leave-one-generator-out experiment (`saga openset logo --out EXP`).

Read from EXP/results.json as data (saga.openworld.logo writes it): open set per held-out
generator and per level (AUROC with its bootstrap interval, OSCR, the rates at the threshold),
the ROC and OSCR curves of every fold from the stored per-video scores, few-shot enrollment
against retraining with the same videos (pooled over folds, Wilson intervals), enrollment alone
at several k, and the calibration rows with their reliability plots (EXP/calibration/*.png).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from saga.explain.intervals import format_ci, wilson
from saga.explain.report_html import esc, figure, guarded, num, pct, read_json_file, table
from saga.explain.report_plots import logo_png
from saga.explain.seen import folds_seen_text
from saga.runs.files import CONFIG, LOGO_CALIBRATION, LOGO_RESULTS, LOGO_RESULTS_MD, LOGO_RUNS, reliability_file

LEVELS_OPEN = ("GEN-L", "TEAM-L", "SD-L", "TASK-L")
KINDS = ("knn", "prototype")
METHODS = {"before": "leave-one-out run, no enrollment", "gate": "enrolled, gate (default)", "ncm": "enrolled, ncm",
           "retrain": "retrained with the same videos", "retrain-balanced": "retrained, class-balanced"}


def is_experiment(folder: Path) -> bool:
    """A `saga openset logo` output folder: results.json, and not a run folder."""
    return (folder / LOGO_RESULTS).is_file() and not (folder / CONFIG).is_file()


def find_experiments(dirs: list[Path]) -> list[Path]:
    """Experiments among `dirs`, and the experiment a fold run (EXP/logo/<g>, EXP/retrain<k>/<g>) belongs to."""
    found = []
    for d in dirs:
        d = Path(d).resolve()
        if is_experiment(d):
            found.append(d)
        elif (d.parent.name == LOGO_RUNS or d.parent.name.startswith("retrain")) and is_experiment(d.parent.parent):
            found.append(d.parent.parent)
    return list(dict.fromkeys(found))


def experiment_file(path: Path) -> Path:
    """EXP or EXP/results.json -> the results.json."""
    path = Path(path)
    return path / LOGO_RESULTS if path.is_dir() else path


def logo_section(path: Path, anchor: str = "openworld") -> str:
    """The whole experiment as one section."""
    file = experiment_file(path)
    r = read_json_file(file)
    title = f"Leave-one-generator-out: {escape(file.parent.name)}"
    if not isinstance(r, dict) or not isinstance(r.get("openset"), dict):
        return (f'<section id="{anchor}"><h2>{title}</h2><p class="meta">{escape(str(file))}: not a results file '
                "of <code>saga openset logo</code></p></section>")
    parts = [f'<section id="{anchor}"><h2>{title}</h2>',
             f'<p class="meta">{escape(str(file))} · cache {esc(r.get("cache", "?"))} · seed {esc(r.get("seed"))}'
             f" · {len(r['openset'])} folds · k = {esc(r.get('k'))} enrollment videos · also: {LOGO_RESULTS_MD}</p>",
             guarded("not_withheld", "rerun <code>saga openset logo</code> on the same folder", stale_note, r),
             guarded("seen_in_training", "rerun <code>saga openset logo</code> on the same folder", seen_note, r)]
    for fn in (openset_part, enroll_part, shots_part, calibration_part):
        parts.append(guarded(fn.__name__, "rerun <code>saga openset logo</code> on the same folder", fn, r,
                             file.parent))
    return "".join(parts) + "</section>"


def stale_runs(r: dict[str, Any]) -> dict[str, list[str]]:
    """Held-out generator -> the kinds of its runs ("logo", "retrain5", ...) that results.json lists under
    `not_withheld`: trained by a saga that read the generator's videos (before saga.train.withhold)."""
    out: dict[str, list[str]] = {}
    for run in r.get("not_withheld") or []:
        path = Path(str(run))
        out.setdefault(path.name, []).append(path.parent.name)
    return out


def stale_note(r: dict[str, Any]) -> str:
    """A visible line above the figures: a fold whose run read its held-out generator is no unseen-generator
    figure, and results.md says so; the report must too."""
    stale = stale_runs(r)
    if not stale:
        return ""
    which = "; ".join(f"{g} ({', '.join(kinds)})" for g, kinds in stale.items())
    return (f'<p class="bad"><b>Not unseen-generator figures:</b> {len(stale)} fold(s) were trained by an older saga '
            f"that read their held-out generator's videos: {escape(which)} (marked ⚠ below). Delete those run "
            "folders and rerun <code>saga openset logo</code> to train them again.</p>")


def seen_note(r: dict[str, Any]) -> str:
    """The line results.md has on videos left out of the folds' fits and figures (the n shown are of the others)."""
    text = folds_seen_text(r)
    return f'<p class="meta">{escape(text)}</p>' if text else ""


def _fold(g: str, stale: dict[str, list[str]]) -> str:
    """A fold's name in a table, marked when one of its runs was trained without withholding the generator."""
    return f"{g} ⚠ not withheld ({', '.join(stale[g])})" if g in stale else g


def _mean(xs: list[Any]) -> float | None:
    v = [x for x in xs if isinstance(x, (int, float)) and x == x]
    return float(np.mean(v)) if v else None


def openset_part(r: dict[str, Any], exp: Path) -> str:
    folds = r["openset"]
    if not folds:
        return '<p class="meta">No finished fold yet.</p>'
    out = ["<h3>Open set: known vs the held-out generator (test split)</h3>",
           '<p class="meta">Per fold, known = test videos of the classes the run was trained on, unseen = test videos '
           "of the held-out generator; threshold = 95th percentile of the known validation videos' score. "
           "At a coarser level a fold counts only when the generator's class there is unseen.</p>"]
    rows = []
    for level in LEVELS_OPEN:
        for kind in KINDS:
            per = {g: f[level][kind] for g, f in folds.items() if level in f and f[level].get("unseen_class") is not None
                   and isinstance(f[level].get(kind), dict)}
            if not per:
                continue
            au = {g: x.get("auroc") for g, x in per.items() if isinstance(x.get("auroc"), (int, float))}
            worst = min(au, key=au.get) if au else None
            rows.append([level, kind, len(per), num(_mean(list(au.values()))), num(np.median(list(au.values()))
                                                                                    if au else None),
                         f"{num(au[worst])} ({worst})" if worst else "–",
                         sum(1 for v in au.values() if v >= 0.85), num(_mean([x.get("oscr") for x in per.values()])),
                         pct(_mean([x.get("unknown_detected") for x in per.values()])),
                         pct(_mean([x.get("false_unknown") for x in per.values()])),
                         pct(_mean([x.get("closed_accuracy") for x in per.values()]))])
    out.append(table(["level", "score", "folds", "AUROC mean", "median", "lowest (fold)", "folds ≥ 0.85", "OSCR mean",
                      "unseen detected %", "false-unknown %", "closed-set acc %"], rows, left=2))
    scores = {kind: {g: f["GEN-L"][kind]["scores"] for g, f in folds.items()
                     if isinstance(f.get("GEN-L", {}).get(kind, {}).get("scores"), dict)} for kind in KINDS}
    fig = logo_png(scores)
    if fig:
        out.append("<div class=figs>" + figure(fig, "GEN-L: every fold's ROC and OSCR curve (grey), their mean "
                                                    "(blue) and the lowest-AUROC fold (red)", wide=True) + "</div>")
    else:
        out.append('<p class="meta">No per-video scores stored (results from an older saga): rerun '
                   "<code>saga openset logo</code> on the same folder to add the curves (finished runs are reused).</p>")
    rows, stale = [], stale_runs(r)
    for g, f in folds.items():
        gen = f.get("GEN-L", {})
        p, q = gen.get("prototype", {}), gen.get("knn", {})
        rows.append([_fold(g, stale), f"{num(q.get('auroc'))} {_ci(q.get('auroc_ci'))}", num(q.get("oscr")),
                     f"{num(p.get('auroc'))} {_ci(p.get('auroc_ci'))}", num(p.get("oscr")),
                     pct(q.get("unknown_detected")), pct(q.get("false_unknown")), q.get("n_known"), q.get("n_unknown")])
    out.append("<details><summary>GEN-L per held-out generator</summary>" + table(
        ["held out", "AUROC kNN [95 % CI]", "OSCR kNN", "AUROC prototype [95 % CI]", "OSCR prototype",
         "unseen detected % (kNN)", "false-unknown % (kNN)", "known videos", "unseen videos"], rows) + "</details>")
    return "".join(out)


def _ci(ci: Any) -> str:
    ok = isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ok else ""


def _pooled(rows: list[dict[str, Any]], side: str) -> str:
    c, n = sum(x[f"{side}_correct"] for x in rows), sum(x[f"{side}_n"] for x in rows)
    return f"{pct(c / n)} {format_ci(wilson(c, n))} ({n})" if n else "–"


def enroll_part(r: dict[str, Any], exp: Path) -> str:
    enroll = r.get("enroll") or {}
    if not enroll:
        return ""
    k = r.get("k")
    rows, acc = [], {}
    for level in LEVELS_OPEN:
        for m, label in METHODS.items():
            got = [f["levels"][level][m] for f in enroll.values() if m in f["levels"].get(level, {})]
            if got:
                rows.append([level, label, len(got), _pooled(got, "new"), _pooled(got, "old")])
                if level == "GEN-L":
                    acc[m] = (sum(x["new_correct"] for x in got) / max(1, sum(x["new_n"] for x in got)),
                              sum(x["old_correct"] for x in got) / max(1, sum(x["old_n"] for x in got)), len(got))
    out = [f"<h3>Few-shot enrollment vs retraining (k = {esc(k)} videos of the new generator)</h3>",
           '<p class="meta">Per fold the held-out generator is enrolled into its leave-one-out run from k train videos; '
           "the retrained run gets the same k videos. New = the held-out generator's test videos, old = everyone "
           "else's; accuracy % pooled over folds, Wilson 95 % interval, (videos).</p>",
           table(["level", "method", "folds", "new-class accuracy %", "old-class accuracy %"], rows, left=2)]
    notes = []
    for m in ("gate", "ncm"):
        for base in ("retrain", "retrain-balanced"):
            if m in acc and base in acc and acc[base][0] and acc[m][2] == acc[base][2]:
                notes.append(f"GEN-L {m}: new-class accuracy {acc[m][0] / acc[base][0]:.2f}× {base}'s; old classes "
                             f"{100 * (acc[m][1] - acc['before'][1]):+.1f} points against the run before enrollment"
                             if "before" in acc else f"GEN-L {m}: {acc[m][0] / acc[base][0]:.2f}× {base}")
    if notes:
        out.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    per, stale = [], stale_runs(r)
    for g, f in enroll.items():
        x = f["levels"].get("GEN-L", {})
        per.append([_fold(g, stale), *[pct(x[m]["new"]) if m in x else "–" for m in METHODS],
                    *[pct(x[m]["old"]) if m in x else "–" for m in ("before", "gate", "retrain")]])
    out.append("<details><summary>GEN-L per held-out generator</summary>" + table(
        ["held out", *[f"new: {m}" for m in METHODS], "old: before", "old: gate", "old: retrain"], per) + "</details>")
    return "".join(out)


def shots_part(r: dict[str, Any], exp: Path) -> str:
    shots = r.get("shots") or {}
    if not shots:
        return ""
    keys = sorted({key for f in shots.values() for key in f}, key=lambda s: (s.split("-")[0], int(s.split("-")[1])))
    rows = []
    for key in keys:
        got = [x for f in shots.values() for x in f.get(key, [])]
        rule, k = key.split("-")
        rows.append([rule, int(k), len(got), _pooled(got, "new"), _pooled(got, "old")])
    return ("<h3>Enrollment alone at k videos (GEN-L)</h3>"
            '<p class="meta">Pooled over folds and seeded draws of the k videos.</p>'
            + table(["rule", "k", "draws × folds", "new-class accuracy %", "old-class accuracy %"], rows))


def calibration_part(r: dict[str, Any], exp: Path) -> str:
    cal = r.get("calibration") or []
    if not cal:
        return ""
    rows = [[Path(c["run"]).name, num(c.get("temperature")), pct(c.get("test_accuracy")), c.get("n_test"),
             f"{num(c.get('test_ece_before'))} {_ci(c.get('test_ece_before_ci'))}",
             f"{num(c.get('test_ece_after'))} {_ci(c.get('test_ece_after_ci'))}"] for c in cal]
    out = ["<h3>Calibration of full runs</h3>",
           '<p class="meta">T fitted on val; ECE (15 bins) on test, bootstrap 95 % interval.</p>',
           table(["run", "T", "accuracy %", "test videos", "ECE before", "ECE after"], rows)]
    pngs = sorted((exp / LOGO_CALIBRATION).glob(reliability_file("*", ".png")))
    if pngs:
        out.append("<div class=figs>" + "".join(figure(p.read_bytes(), f"reliability ({p.stem})") for p in pngs)
                   + "</div>")
    return "".join(out)
