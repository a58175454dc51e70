"""`saga report`'s held-out part: a run's evaluations on caches other than its training cache.

`saga evaluate RUN --cache OTHER` on a cache that is not the run's own writes
metrics-<split>@<cache folder>-<id8>.json (`saga.runs.on_cache`), never over the run's own
metrics.json / metrics-<split>.json, so every held-out evaluation is kept. The report lists them
here, one row each labelled with its cache, split, n and intervals, and never mixes them into the
run's own rows (summary table, cards, per-class table), which stay those of its training cache.
Evaluations of other weights than the run's are named in one line, not shown, as the run's own are.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Callable

from saga.explain.metrics import HELDOUT_KEY, other_weights
from saga.explain.report_html import guarded, pct, pct_ci, table
from saga.explain.seen import SEEN_KEY
from saga.runs import HELDOUT, RunFolder

HEADER = ["cache", "cache id", "split", "n", "accuracy % [95 % CI]", "macro acc % [95 % CI]", "probe acc %",
          "probe macro %", "AUC", "file"]
FIX = "rerun <code>saga evaluate RUN --cache CACHE</code> on that cache"


def load_heldout(run: RunFolder, weights: str | None) -> dict[str, Any]:
    """{"rows": [(file name, metrics)], "stale": [names of other weights], "unreadable": [names]}."""
    rows, stale, unreadable = [], [], []
    for name, m in run.heldout_evaluations().items():
        if not isinstance(m, dict):
            unreadable.append(name)
        elif other_weights(m, weights):
            stale.append(name)
        else:
            rows.append((name, m))
    return {"rows": rows, "stale": stale, "unreadable": unreadable}


def cache_name(name: str, m: dict[str, Any]) -> str:
    """The held-out cache's folder name as the evaluation recorded it, else the tag in the file name."""
    cache = m.get("cache")
    if isinstance(cache, str) and cache:
        return Path(cache).name or cache
    return str(m.get(HELDOUT_KEY) or name.partition(HELDOUT)[2].rsplit(".", 1)[0])


def _row(name: str, m: dict[str, Any]) -> list[Any]:
    probe = m.get("probe") if isinstance(m.get("probe"), dict) else {}
    auc = m.get("auc")
    return [cache_name(name, m), str(m.get("cache_id") or "–")[:12], m.get("split"), m.get("n"),
            pct_ci(m.get("accuracy"), m.get("accuracy_ci")), pct_ci(m.get("macro_accuracy"), m.get("macro_accuracy_ci")),
            pct(probe.get("accuracy")), pct(probe.get("macro_accuracy")),
            f"{auc:.4f}" if isinstance(auc, float) else "–", name]


def heldout_section(held: dict[str, Any], per_class: Callable[[dict[str, Any]], str]) -> str:
    """The table of held-out evaluations, each one's per-class accuracy (`per_class`) folded below it, and one
    line per file that is unreadable or of other weights; "" when the run has none."""
    rows, stale, unreadable = held.get("rows", []), held.get("stale", []), held.get("unreadable", [])
    if not (rows or stale or unreadable):
        return ""
    out = ["<h3>Held-out evaluations (other caches)</h3>",
           '<p class="meta">The run evaluated on caches other than its training cache (<code>saga evaluate RUN '
           "--cache OTHER</code>), one row per cache and split; the metrics above are the run's own cache's.</p>"]
    if rows:
        out.append(guarded("held-out evaluations", FIX, lambda: table(HEADER, [_row(n, m) for n, m in rows], left=3)))
    for name, m in rows:
        label = f"per-class accuracy: {cache_name(name, m)} · {m.get('split')} · n={m.get('n')}"
        out.append(seen_note(m, f"{cache_name(name, m)} · {m.get('split')}: "))
        out.append(f"<details><summary>{escape(label)}</summary>{guarded(label, FIX, per_class, m)}</details>")
    if stale:
        out.append(f'<p class="meta">{escape(", ".join(stale))}: made with other weights than the run\'s '
                   f"model.safetensors (trained on or retrained since), so not shown; {FIX}</p>")
    if unreadable:
        out.append(f'<p class="meta">{escape(", ".join(unreadable))}: unreadable (not a JSON object); {FIX}</p>')
    return "".join(out)


def foreign_note(m: dict[str, Any], run_cache: Any) -> str:
    """One line when the run's own metrics file holds an evaluation of another cache (an older saga wrote
    held-out evaluations under the run's own names): they are not presented as the training cache's."""
    cache = m.get("cache_id")
    if not cache or not run_cache or cache == run_cache or m.get(HELDOUT_KEY):
        return ""
    return (f'<p class="meta">These metrics are of cache {escape(str(cache)[:12])}, not the run\'s training cache '
            f"{escape(str(run_cache)[:12])} (an older saga wrote held-out evaluations under the run's own file "
            "names); rerun <code>saga evaluate</code> on the training cache for the run's own.</p>")


def seen_note(m: dict[str, Any], where: str = "") -> str:
    """One line when `saga evaluate` left out videos the run was trained or validated on (`SEEN_KEY`): the n
    shown is of the others, and a reader comparing with the cache's size should know why."""
    seen = m.get(SEEN_KEY)
    if not isinstance(seen, dict) or not isinstance(seen.get("n"), int) or seen["n"] <= 0:
        return ""
    examples = [str(e) for e in seen.get("examples") or [] if isinstance(e, str)][:1]
    example = f" (e.g. {escape(examples[0])})" if examples else ""
    return (f'<p class="meta">{escape(where)}{seen["n"]} video(s) the run was trained or validated on{example} '
            "were left out of these scores: n counts only the others.</p>")
