"""The report's robustness sections: `saga robustness`'s files beside a run (split from report_openworld).

robustness.json (the test split of the run's training cache) first, then robustness-<split>.json of each other
split of that cache (`--split val|train`; they were written but never shown), marked as the split flags mark it
(val chose the checkpoint: optimistic; train trained it: fit), then one table per held-out cache
(robustness[-<split>]@<cache>-<id8>.json), each titled with its cache, never mixed into the run's own table.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from saga.explain.metrics import RUN_MODEL, other_weights
from saga.explain.report_html import ci_text, esc, guarded, is_number, pct, read_json_file
from saga.explain.split_flags import CHOSEN_KEY, TRAINED_KEY, inferred, split_label
from saga.runs.files import HELDOUT, HELDOUT_ROBUSTNESS_GLOB, ROBUSTNESS

ROBUSTNESS_STALE = "made with other weights than the run's (retrained since)"
SPLIT_ROBUSTNESS_GLOB = ROBUSTNESS.replace(".", "-*.", 1)  # robustness-<split>.json: `saga robustness --split`


def split_robustness(run_dir: Path, weights: str | None, stale: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """(file name, data) of each `saga robustness --split S` on the run's own cache (S not test), with the split
    flags a current saga records (`inferred`: an older file is marked from its split and done.json)."""
    own = [p for p in sorted(run_dir.glob(SPLIT_ROBUSTNESS_GLOB)) if HELDOUT not in p.name]
    return [(name, inferred(run_dir, data)) for name, data in _robustness_files(own, weights, stale)]


def heldout_robustness(run_dir: Path, weights: str | None, stale: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """(file name, data) of each `saga robustness` on a held-out cache."""
    return _robustness_files(sorted(run_dir.glob(HELDOUT_ROBUSTNESS_GLOB)), weights, stale)


def _robustness_files(paths: list[Path], weights: str | None, stale: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """(file name, data) of each readable file of the run's weights; unreadable ones and those of other
    weights go to `stale`, named, not shown."""
    out = []
    for p in paths:
        data = read_json_file(p)
        if not isinstance(data, dict):
            stale.append((p.name, "unreadable (not a JSON object)"))
        elif other_weights(data, weights):
            stale.append((p.name, ROBUSTNESS_STALE))
        else:
            out.append((p.name, data))
    return out


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


def split_robustness_section(b: dict[str, Any], name: str) -> str:
    """One table per `saga robustness --split S` of the run's own cache, titled with its split, marked and
    flagged in one line when that split chose the checkpoint (val) or trained the run (train)."""
    parts = []
    for file, rob in b.get("split_robustness") or []:
        if not rob.get("perturbations"):
            continue
        parts.append(f"<h3>Robustness, {esc(split_label(rob))} split</h3>" + _flag_note(rob, file)
                     + _foreign_note(rob, b.get("run_cache"))
                     + guarded(file, "rerun <code>saga robustness</code> with that --split", robustness_table, rob))
    return "".join(parts)


def _flag_note(rob: dict[str, Any], file: str) -> str:
    """What the split did for the weights, as `saga robustness` warned it: the accuracies are optimistic (val
    chose the checkpoint) or measure fit (the run trained on them)."""
    if rob.get(TRAINED_KEY):
        text = "the run trained on these videos: these accuracies measure fit, not generalisation"
    elif rob.get(CHOSEN_KEY):
        text = "the checkpoint was chosen on val: these accuracies are optimistic"
    else:
        return ""
    return (f'<p class="meta bad">{escape(file)}: {text}; the test split (robustness.json, <code>saga robustness'
            "</code> without --split) is the one to quote.</p>")


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
    return (f'<p class="meta">Accuracy % on the {esc(split_label(rob) or "?")} split '
            f'({esc(rob.get("n_videos", "?"))} '
            "videos) after each perturbation, with its 95 % interval (Wilson), the videos behind it and the change "
            "against the clean accuracy of the same videos (points, paired 95 % interval; red where it lies below "
            "0); failed: videos robustness.json records as failed under that perturbation, scored in neither row "
            f"of the change. Cache: {escape(str(rob.get('cache', '?')))}.{_draw(rob)}</p>"
            f'<div class="scroll"><table class="sticky"><thead><tr><th class=l>perturbation</th><th>videos</th>{head}'
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
