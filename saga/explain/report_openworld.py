"""The report's sections on what sits beside a run beyond the paper (docs/beyond.md): each one only
when its files exist, read as data (the explain layer cannot import `saga.openworld`).

- calibration: calibration.json (T fitted on val, NLL / ECE there) and the reliability data of
  `saga calibrate` (reliability-<split>.json) and of `saga evaluate` (metrics "openworld" →
  "calibration"), drawn as reliability diagrams, ECE before / after in a table;
- open set: openset.json (score, threshold) and what `saga evaluate` measured with it: the known
  videos' false-unknown rate and, when the split holds videos of classes the run never saw (a
  leave-one-generator-out run), AUROC / OSCR with the ROC and OSCR curves from the stored scores;
- enrollment: the classes enrolled.json adds (videos, labels per level, the levels it answers);
- robustness: robustness.json of `saga robustness`, accuracy per perturbation and level, with the
  interval, the videos behind it and the drop against the clean videos; then one table per held-out
  cache (robustness[-<split>]@<cache>-<id8>.json, `--cache` a cache other than the run's training
  cache), each titled with its cache, never mixed into the run's own table.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from saga.explain.metrics import RUN_MODEL, openworld_label, other_weights, run_weights
from saga.explain.report_html import ci_text, esc, figure, guarded, is_number, num, pct, read_json_file, table
from saga.explain.report_plots import openset_png, reliability_png
from saga.runs.files import (CALIBRATION, ENROLLED, HELDOUT, HELDOUT_ROBUSTNESS_GLOB, OPENSET, PROVENANCE,
                             RELIABILITY_GLOB, ROBUSTNESS)
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
            "heldout_robustness": _heldout_robustness(run_dir, weights, stale),
            "run_cache": provenance.get("cache_id") if isinstance(provenance, dict) else None,
            "evaluated": ow if isinstance(ow, dict) else {}, "split": (metrics or {}).get("split"), "stale": stale,
            "label": openworld_label(metrics or {})}  # the evaluated split, marked when it fitted the figures


OTHER_WEIGHTS = "fitted on other weights than the run's (retrained since)"
ROBUSTNESS_STALE = "made with other weights than the run's (retrained since)"


def _heldout_robustness(run_dir: Path, weights: str | None, stale: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """(file name, data) of each `saga robustness` on a held-out cache; unreadable ones and those of other
    weights go to `stale`, named, not shown."""
    out = []
    for p in sorted(run_dir.glob(HELDOUT_ROBUSTNESS_GLOB)):
        data = read_json_file(p)
        if not isinstance(data, dict):
            stale.append((p.name, "unreadable (not a JSON object)"))
        elif other_weights(data, weights):
            stale.append((p.name, ROBUSTNESS_STALE))
        else:
            out.append((p.name, data))
    return out


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
               heldout_robustness_section):
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


def _draw(rob: dict[str, Any]) -> str:
    """Which videos and weights the table is of: the --limit-per-class draw, or that an older saga recorded
    neither (then it cannot be told whether the run was retrained since)."""
    if RUN_MODEL not in rob:
        return (" Made by an older saga: the weights it was run with are not recorded; rerun <code>saga "
                "robustness</code> to tie it to the run's current weights.")
    limit = rob.get("limit_per_class")
    return f" A seeded draw (seed {esc(rob.get('seed'))}) of at most {esc(limit)} videos per class." if limit else ""


def robustness_section(b: dict[str, Any], name: str) -> str:
    rob = b["robustness"]
    if not isinstance(rob, dict) or not rob.get("perturbations"):
        return ""
    return "<h3>Robustness</h3>" + _foreign_note(rob, b.get("run_cache")) + robustness_table(rob)


def heldout_robustness_section(b: dict[str, Any], name: str) -> str:
    """One table per `saga robustness RUN --cache OTHER` on a held-out cache, apart from the run's own."""
    parts = []
    for file, rob in b.get("heldout_robustness") or []:
        if not rob.get("perturbations"):
            continue
        cache = Path(str(rob.get("cache") or "")).name or file.partition(HELDOUT)[2].rsplit(".", 1)[0]
        cache_id = str(rob.get("cache_id") or "–")[:12]
        parts.append(f"<h3>Robustness on held-out cache {escape(cache)} ({esc(cache_id)})</h3>"
                     f'<p class="meta">{escape(file)}: <code>saga robustness RUN --cache OTHER</code> on a cache '
                     "other than the run's training cache, kept apart from the run's own (the table headed "
                     "Robustness).</p>" + guarded(file, "rerun <code>saga robustness</code> on that cache",
                                            robustness_table, rob))
    return "".join(parts)


def _foreign_note(rob: dict[str, Any], run_cache: Any) -> str:
    """One line when robustness.json holds another cache's results (an older saga wrote a held-out cache's
    there): they are not presented as the training cache's without a word."""
    cache = rob.get("cache_id")
    if not cache or not run_cache or cache == run_cache:
        return ""
    return (f'<p class="meta">These results are of cache {esc(str(cache)[:12])}, not the run\'s training cache '
            f"{esc(str(run_cache)[:12])} (an older saga wrote held-out results under the run's own file names); "
            "rerun <code>saga robustness</code> on the training cache for the run's own.</p>")


def _drop(p: dict[str, Any], level: str, r: dict[str, Any], base: dict[str, Any]) -> str:
    """The change against clean: paired over the videos the perturbation scored (`paired` of the file); a file
    of an older saga has none, so with failed videos its difference of two video sets is marked unpaired."""
    d = (p.get("paired") if isinstance(p.get("paired"), dict) else {}).get(level)
    if isinstance(d, dict) and is_number(d.get("difference")):
        ci = d.get("ci")
        ok = isinstance(ci, list) and len(ci) == 2 and all(is_number(x) for x in ci)
        interval = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ok else ""
        return (f'<br><span class="{"bad" if ok and ci[1] < 0 else "ci"}">{100 * d["difference"]:+.1f} pts'
                f'{interval}</span><br><small>vs clean {pct(d.get("clean_accuracy"))} on the same '
                f'{esc(d.get("n", "–"))}</small>')
    if not is_number(base.get("accuracy")):
        return ""
    ci = r.get("ci") or [None, None]
    clear = isinstance(ci[1], (int, float)) and ci[1] < base["accuracy"]  # interval below clean
    unpaired = ("<br><small>unpaired (an older robustness.json, failed videos in the clean row only): rerun "
                "<code>saga robustness</code></small>" if p.get("failed") else "")
    change = 100 * (r["accuracy"] - base["accuracy"])
    return f'<br><span class="{"bad" if clear else "ci"}">{change:+.1f} pts</span>{unpaired}'


def robustness_table(rob: dict[str, Any]) -> str:
    """What one robustness[…].json measured: a line on the data, then accuracy per perturbation and level."""
    levels = list(rob.get("levels") or [])
    perts = rob["perturbations"]
    clean = next((p for p in perts if p.get("name") == "clean"), None)
    head = "".join(f"<th>{escape(lv)}</th>" for lv in levels)
    body = []
    for p in perts:
        cells = []
        for lv in levels:
            r = (p.get("levels") or {}).get(lv)
            if not isinstance(r, dict):
                cells.append("<td>–</td>")
                continue
            base = ((clean or {}).get("levels") or {}).get(lv) or {}
            drop = "" if p is clean else _drop(p, lv, r, base)
            macro = f" · macro {pct(r.get('macro_accuracy'))}" if r.get("macro_accuracy") is not None else ""
            cells.append(f"<td>{pct(r.get('accuracy'))} <span class=ci>{escape(ci_text(r.get('ci')))}</span>"
                         f"<br><small>n {esc(r.get('n', '–'))}{macro}</small>{drop}</td>")
        failed = f" ({esc(p.get('failed'))} failed)" if p.get("failed") else ""
        body.append(f"<tr><td class=l><b>{escape(str(p.get('name')))}</b><br><small>"
                    f"{escape(str(p.get('description') or ''))}</small></td><td>{esc(p.get('n', '–'))}{failed}</td>"
                    f"{''.join(cells)}</tr>")
    return (f'<p class="meta">Accuracy % on the {esc(rob.get("split", "?"))} split '
            f'({esc(rob.get("n_videos", "?"))} '
            "videos) after each perturbation, with its 95 % interval (Wilson), the videos behind it and the change "
            "against the clean accuracy of the same videos (points, paired 95 % interval; red where it lies below "
            "0); failed: videos robustness.json records as failed under that perturbation, scored in neither row "
            f"of the change. Cache: {escape(str(rob.get('cache', '?')))}.{_draw(rob)}</p>"
            f'<div class="scroll"><table class="sticky"><thead><tr><th class=l>perturbation</th><th>videos</th>{head}'
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
