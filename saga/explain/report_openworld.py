"""The report's sections on what sits beside a run beyond the paper (docs/beyond.md): each one only
when its files exist, read as data (the explain layer cannot import `saga.openworld`).

- calibration: calibration.json (T fitted on val, NLL / ECE there) and the reliability data of
  `saga calibrate` (reliability-<split>.json) and of `saga evaluate` (metrics "openworld" →
  "calibration"), drawn as reliability diagrams, ECE before / after in a table;
- open set: openset.json (score, threshold) and what `saga evaluate` measured with it: the known
  videos' false-unknown rate and, when the split holds videos of classes the run never saw (a
  leave-one-generator-out run), AUROC / OSCR with the ROC and OSCR curves from the stored scores;
- enrollment: the classes enrolled.json adds (videos, labels per level, the levels it answers);
- robustness: `saga robustness`'s files (`report_robustness`): the test split of the run's own cache, its
  other splits (marked when they chose or trained the weights), then each held-out cache apart.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from saga.explain.metrics import openworld_label, other_weights, run_weights
from saga.explain.report_html import esc, figure, guarded, num, pct, read_json_file, table
from saga.explain.report_plots import openset_png, reliability_png
from saga.explain.report_robustness import (ROBUSTNESS_STALE, heldout_robustness, heldout_robustness_section,
                                            robustness_section, split_robustness, split_robustness_section)
from saga.runs.files import CALIBRATION, ENROLLED, OPENSET, PROVENANCE, RELIABILITY_GLOB, ROBUSTNESS
from saga.taxonomy import LEVELS


def load_beyond(run_dir: Path, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The open-world and robustness files of a run folder (None for each one missing or unreadable).

    "stale": (file, why) for each file made with other weights than the run's, not shown.
    """
    ow = (metrics or {}).get("openworld")
    fitted, stale = {}, []
    weights = run_weights(run_dir)
    for key, name in (("calibration", CALIBRATION), ("openset", OPENSET), ("enrolled", ENROLLED)):
        data = read_json_file(run_dir / name)
        if other_weights(data, weights):
            stale.append((name, OTHER_WEIGHTS))  # retrained since: predict refuses it, so must we
            data = None
        fitted[key] = data
    reliability = {}
    for p in sorted(run_dir.glob(RELIABILITY_GLOB)):
        data = read_json_file(p)
        if isinstance(data, dict) and isinstance(data.get("before"), dict):
            why = _reliability_stale(data, weights, fitted["calibration"])
            if why:
                stale.append((p.name, why))
            else:
                reliability[str(data.get("split") or p.stem.removeprefix("reliability-"))] = data
    robustness = read_json_file(run_dir / ROBUSTNESS)
    if other_weights(robustness, weights):
        stale.append((ROBUSTNESS, ROBUSTNESS_STALE))
        robustness = None
    provenance = read_json_file(run_dir / PROVENANCE)
    return {**fitted, "reliability": reliability, "robustness": robustness,
            "split_robustness": split_robustness(run_dir, weights, stale),
            "heldout_robustness": heldout_robustness(run_dir, weights, stale),
            "run_cache": provenance.get("cache_id") if isinstance(provenance, dict) else None,
            "evaluated": ow if isinstance(ow, dict) else {}, "split": (metrics or {}).get("split"), "stale": stale,
            "label": openworld_label(metrics or {})}  # the evaluated split, marked when it fitted the figures


OTHER_WEIGHTS = "fitted on other weights than the run's (retrained since)"


def _reliability_stale(data: dict[str, Any], weights: str | None, cal: Any) -> str | None:
    """Why a reliability-<split>.json of `saga calibrate` no longer describes the run (None: it does)."""
    if weights and data.get("run_model") is None:
        return "records no weights (an older saga wrote it), so it cannot be matched to the run's"
    if other_weights(data, weights):
        return OTHER_WEIGHTS
    t, t_cal = data.get("temperature"), (cal or {}).get("temperature")
    if isinstance(t, (int, float)) and isinstance(t_cal, (int, float)) and abs(t - t_cal) > 1e-6 * abs(t_cal):
        return f"made with T = {t:.4g}, calibration.json now has T = {t_cal:.4g}"
    return None


def beyond_sections(b: dict[str, Any], name: str) -> str:
    """Every section whose data the run has, in the order of docs/beyond.md (then robustness)."""
    parts = [f'<p class="meta">{escape(file)}: {escape(why)}, so not shown; rerun the command that wrote it</p>'
             for file, why in b.get("stale", [])]
    for fn in (calibration_section, openset_section, enrolled_section, robustness_section,
               split_robustness_section, heldout_robustness_section):
        parts.append(guarded(fn.__name__.removesuffix("_section"), "rerun the command that wrote it", fn, b, name))
    return "".join(parts)


def _confidence(temperature: Any) -> str:
    """What the fitted T says about the run (it used to say "over-confident" whatever T was)."""
    if not isinstance(temperature, (int, float)):
        return ""
    if temperature > 1.01:
        return "T &gt; 1: the run was over-confident."
    if temperature < 0.99:
        return "T &lt; 1: the run was under-confident."
    return "T ≈ 1: the run's probabilities were already calibrated on these videos."


def _diagrams(b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split -> {before, after, temperature, source}: `saga calibrate`'s files, then `saga evaluate`'s split."""
    cal = b["calibration"] if isinstance(b["calibration"], dict) else {}
    out = {split: {**d, "temperature": d.get("temperature", cal.get("temperature")),
                   "source": f"reliability-{split}.json"} for split, d in b["reliability"].items()}
    ev = b["evaluated"].get("calibration")
    split = str(b["evaluated"].get("split") or b["split"] or "evaluated")
    if isinstance(ev, dict) and split not in out:
        out[split] = {**ev, "source": "saga evaluate (metrics.json)", "label": b.get("label") or split}
    return out


def calibration_section(b: dict[str, Any], name: str) -> str:
    cal, diagrams = b["calibration"], _diagrams(b)
    if not cal and not diagrams:
        return ""
    out = ["<h3>Calibration</h3>"]
    rows = []
    if isinstance(cal, dict):
        out.append(f'<p class="meta">Temperature scaling: T = {num(cal.get("temperature"))} fitted on '
                   f'{esc(cal.get("n", "?"))} {esc(cal.get("split", "val"))} videos '
                   f'(NLL {num(cal.get("nll_before"))}'
                   f' → {num(cal.get("nll_after"))}). {_confidence(cal.get("temperature"))} One scalar cannot change '
                   "a prediction, so accuracy is unchanged.</p>")
        rows.append([f"{cal.get('split', 'val')} (the fit)", cal.get("n"), num(cal.get("ece_before")),
                     num(cal.get("ece_after")), _change(cal.get("ece_before"), cal.get("ece_after")), CALIBRATION])
    for split, d in diagrams.items():
        before, after = d["before"], d.get("after") or {}
        rows.append([d.get("label", split), before.get("n"), num(before.get("ece")), num(after.get("ece")),
                     _change(before.get("ece"), after.get("ece")), d["source"]])
    out.append(table(["split", "videos", "ECE before", "ECE after", "change", "from"], rows))
    out.append('<p class="meta">ECE: expected calibration error, 15 equal-width confidence bins (the count-weighted '
               "gap between confidence and accuracy).</p>")
    figs = [figure(reliability_png(d["before"], d.get("after"), f"{name}: {split}", d.get("temperature")),
                   f"reliability diagram, {_split_text(split, d.get('label'))} ({d['source']})")
            for split, d in diagrams.items()]
    if figs:
        out.append("<div class=figs>" + "".join(figs) + "</div>")
    for split, d in diagrams.items():
        out.append(f"<details><summary>Reliability bins, {escape(split)}</summary>{_bins(d)}</details>")
    return "".join(out)


def _split_text(split: str, label: Any) -> str:
    """'val split', with the mark of `openworld_label` when it has one: 'val split (fitted ...: optimistic)'."""
    mark = label[len(split):] if isinstance(label, str) and label.startswith(split) else ""
    return f"{split} split{mark}"


def _change(before: Any, after: Any) -> str:
    if not all(isinstance(x, (int, float)) for x in (before, after)) or not before:
        return "–"
    return f"{100 * (after - before) / before:+.0f} %"


def _bins(d: dict[str, Any]) -> str:
    """The reliability data as numbers: per non-empty bin, videos, mean confidence and accuracy, both sides."""
    before, after = d["before"], d.get("after") or {}
    edges = before.get("edges") or []
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        cells = []
        for side in (before, after):
            n = (side.get("count") or [0] * len(edges))[i] if side else 0
            cells += [n, pct((side.get("confidence") or [None] * len(edges))[i]) if n else "–",
                      pct((side.get("accuracy") or [None] * len(edges))[i]) if n else "–"]
        if cells[0] or cells[3]:
            rows.append([f"{lo:.2f}–{hi:.2f}", *cells])
    return table(["confidence bin", "videos before", "confidence % before", "accuracy % before", "videos after",
                  "confidence % after", "accuracy % after"], rows)


def openset_section(b: dict[str, Any], name: str) -> str:
    det, ev = b["openset"], b["evaluated"].get("openset")
    if not det and not ev:
        return ""
    det = det if isinstance(det, dict) else {}
    ev = ev if isinstance(ev, dict) else {}
    kind, pcts = ev.get("kind") or det.get("kind", "?"), ev.get("percentile") or det.get("percentile")
    thr = ev.get("threshold", det.get("threshold"))
    k = f", k = {det['k']}" if kind == "knn" and det.get("k") else ""
    out = ["<h3>Open set (unknown sources)</h3>",
           f'<p class="meta">{escape(str(kind))} score{escape(k)}; a video is called unknown source above the '
           f"threshold {num(thr, 4)}, the {num(pcts, 0)}th percentile of the score of "
           f"{esc(det.get('n_val', '?'))} known validation videos (so about {num(100 - pcts if pcts else None, 0)} % of "
           "known videos are called unknown by construction).</p>"]
    if not ev:
        out.append('<p class="meta">Not measured yet: run <code>saga evaluate</code> on this run.</p>')
        return "".join(out)
    split = str(b["evaluated"].get("split") or b["split"] or "")
    rows = [["known videos called unknown (false-unknown rate)", pct(ev.get("false_unknown")), ev.get("n_known")]]
    if ev.get("n_unknown"):
        rows += [["unseen videos detected at the threshold", pct(ev.get("unknown_detected")), ev.get("n_unknown")],
                 ["AUROC known vs unseen (threshold-free)", num(ev.get("auroc")), ""],
                 ["OSCR (area under CCR vs unseen accepted)", num(ev.get("oscr")), ""],
                 ["closed-set accuracy of the known videos %", pct(ev.get("closed_accuracy")), ev.get("n_known")]]
    out.append(f"<p class=meta>{escape(_split_text(split, b.get('label')))}</p>" + table(["", "value", "videos"], rows))
    if not ev.get("n_unknown"):
        out.append('<p class="meta">The split has no videos of classes the run never saw, so AUROC and OSCR '
                   "cannot be measured here; a leave-one-generator-out experiment (<code>saga openset logo</code>, "
                   "<code>saga report --openworld EXP</code>) measures them.</p>")
    scores = ev.get("scores")
    if isinstance(scores, dict):
        caption = ("ROC and OSCR curves from the stored per-video scores, and the score distribution"
                   if ev.get("n_unknown") else "score distribution of the known videos against the threshold")
        out.append("<div class=figs>" + figure(openset_png(scores, thr, f"{name}: {split}"), caption, wide=True)
                   + "</div>")
    return "".join(out)


def enrolled_section(b: dict[str, Any], name: str) -> str:
    enr = b["enrolled"]
    if not isinstance(enr, dict):
        return ""
    level, entries = enr.get("level", "GEN-L"), enr.get("entries") or []
    coarser = [lv for lv in LEVELS if LEVELS.index(lv) <= LEVELS.index(level)] if level in LEVELS else [level]
    levels = _answered(enr, coarser, entries)
    rows = []
    for e in entries:
        labels = e.get("labels") or {}
        paths = e.get("paths") or []
        shown = ", ".join(paths[:3]) + (f", … ({len(paths) - 3} more)" if len(paths) > 3 else "")
        rows.append([e.get("name"), e.get("n", len(paths)), *[labels.get(lv) or "not given" for lv in reversed(coarser)],
                     str(e.get("cache_id", ""))[:12], shown])
    out = ["<h3>Enrolled sources</h3>",
           f'<p class="meta">{len(entries)} source(s) added without retraining, each as a prototype (the mean φ '
           f"of its videos) beside the run's {len(enr.get('classes') or [])} classes; prototype temperature "
           f"τ = {num(enr.get('tau'), 4)}. Predictions with them are given at: "
           f"{escape(levels)} (a level where a source's class is not given, or where the taxonomy leaves a "
           "class's parent ambiguous, is left out rather than guessed).</p>",
           table(["source", "videos", *[f"{lv}" for lv in reversed(coarser)], "cache", "videos enrolled"], rows)]
    return "".join(out)


def _answered(enr: dict[str, Any], coarser: list[str], entries: list[dict[str, Any]]) -> str:
    """The levels predict answers with the enrolled sources, coarsest first, as enroll recorded them.

    An older enrolled.json records none: for a GEN-L run they follow from the labels given (each
    generator has one class at every level); at a coarser level the taxonomy may leave a class's
    parent ambiguous (`levels.parents`), which only the enroll-time taxonomy can tell.
    """
    answered = enr.get("answered")
    if not isinstance(answered, list):
        if enr.get("level", "GEN-L") != "GEN-L":
            return "not recorded (enrolled with an older saga; enroll again to record them)"
        answered = [lv for lv in coarser if all((e.get("labels") or {}).get(lv) is not None for e in entries)]
    order = {lv: i for i, lv in enumerate(LEVELS)}
    return ", ".join(sorted(map(str, answered), key=lambda lv: order.get(lv, len(order)))) or "no level"
