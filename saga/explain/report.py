"""`saga report`: one self-contained HTML file summarising one or more run folders.

Self-contained on purpose: a report is mailed, attached to tickets and opened
offline, so images are base64 data URIs, CSS is inline and there is no script
and no external resource. Every piece of text from a run folder is escaped.
The layout is a single responsive column: wide tables scroll sideways inside
their own box, so a phone shows them without shrinking the page.

Every accuracy is shown with its 95 % interval and the number of videos behind it
(`saga.explain.intervals`); classes with fewer than 10 test videos are flagged. The
linear probe that `saga evaluate` fits on the run's own labelled videos is shown
beside the run (summary columns, cards, per-class column).

Beyond the paper, each run shows what sits beside it (`report_openworld`: calibration with
reliability diagrams, the open set with its ROC / OSCR curves, enrolled sources, robustness),
and a leave-one-generator-out experiment (`saga openset logo`) gets its own section
(`report_logo`). The shared HTML pieces are in `report_html`, the figures in `report_plots`, the
ablation tables in `report_ablation`. A run file that is unreadable, or JSON but not an object, is
treated as missing: its section is left out, never a traceback; a section whose data has the wrong
types is one line saying so. An evaluation, T-Sig or t-SNE figure made with other weights than the
run's model.safetensors (a run resumed or retrained since) is not shown as the run's: one line names
it and the command to rerun (files of an older saga record no weights and are shown as they are).
Each T-Sig and t-SNE figure is captioned with the split it shows, and with its cache when that is not
the run's training cache (a held-out cache), as its PNG metadata records them. Evaluations on a held-out
cache have their own table (`report_heldout`), never the run's own rows.
"""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from saga.errors import SagaError
from saga.explain.intervals import FEW, format_nearest_source, format_paired
from saga.explain.metrics import other_weights, run_weights, split_label
from saga.explain.split_flags import CHOSEN_KEY, PAIRED_OPTIMISTIC, inferred, probe_mark
from saga.explain.report_ablation import (ablation_section, check_ablation, find_ablations, one_per_folder,
                                          table_in)
from saga.explain.report_html import (CSS, ci_text, esc, figure, figure_caption, guarded, is_number, num, pct, pct_ci,
                                      png, png_text, run_name, table)
from saga.explain.report_heldout import foreign_note, heldout_section, load_heldout, seen_note
from saga.explain.report_logo import experiment_file, find_experiments, is_experiment, logo_section
from saga.explain.report_openworld import beyond_sections, load_beyond
from saga.fileio import make_dir, write_text
from saga.runs import CONFIG, DONE, METRICS, PROVENANCE, RunFolder, evaluation_file
from saga.runs.files import LOGO_RESULTS


# -- reading a run folder -------------------------------------------------------------
def load_run(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows about one run; missing files just leave their section out, and files of
    other weights than the run's are listed under "stale" (evaluations) and "stale_figures" instead."""
    run, weights = RunFolder(run_dir), run_weights(run_dir)
    evaluations = {k: inferred(run_dir, _dict(v)) for k, v in run.evaluations().items()}  # older files: marked
    latest = inferred(run_dir, _object(run, evaluation_file()))
    found = {evaluation_file("test"): evaluations.get("test", {}), evaluation_file(): latest,
             **{evaluation_file(k): v for k, v in evaluations.items()}}
    stale = [name for name, m in found.items() if other_weights(m, weights)]
    fresh = {name: m for name, m in found.items() if m and name not in stale}
    metrics = fresh.get(evaluation_file("test")) or fresh.get(evaluation_file())
    splits = {k: v for k, v in evaluations.items() if evaluation_file(k) in fresh}
    provenance = _object(run, PROVENANCE)
    figs, stale_figs = [], []
    for p in run.figures():
        stamp = _figure_stamp(p)
        if other_weights(stamp, weights):
            stale_figs.append(p.name)
        else:  # one of the run's own cache made before the split flags: marked as `saga tsig` marks it now
            own = stamp.get("cache_id") == provenance.get("cache_id")
            figs.append((p, figure_caption(p, inferred(run_dir, stamp) if own else stamp, provenance.get("cache_id"))))
    history = [row for row in run.read_metrics(tolerant=True) if isinstance(row, dict)]
    return {"dir": run_dir, "config": _object(run, CONFIG), "provenance": provenance,
            "done": run.read_optional(DONE), "metrics": metrics, "splits": splits, "history": history,
            "figures": figs, "beyond": load_beyond(run_dir, metrics), "weights": weights, "stale": stale,
            "stale_figures": stale_figs, "heldout": load_heldout(run, weights)}


def _figure_stamp(path: Path) -> dict[str, Any]:
    """What a PNG of `saga tsig` / `saga tsne` records in its metadata (weights, split, cache, t-SNE settings;
    {} for an older one)."""
    try:
        text = png_text(path.read_bytes())
    except OSError:
        return {}
    return {k.removeprefix("saga:"): v for k, v in text.items() if k.startswith("saga:")}


def _object(run: RunFolder, name: str) -> dict[str, Any]:
    """A run file's JSON object; {} when it is missing, unreadable or another JSON value (a list, a number)."""
    return _dict(run.read_optional(name))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# -- sections ---------------------------------------------------------------------------
def _probe(m: dict[str, Any]) -> dict[str, Any]:
    p = m.get("probe")
    return p if isinstance(p, dict) else {}


def summary_table(runs: list[dict[str, Any]]) -> str:
    """One row per run: the comparison a reader wants first (with 95 % intervals and the probe beside)."""
    header = ["run", "level", "accuracy % [95 % CI]", "macro acc % [95 % CI]", "probe acc %", "probe macro %",
              "AUC", "loss", "stage", "fraction", "frames", "split", "n"]
    rows = []
    for i, r in enumerate(runs):  # the numbers first: on a phone they are visible before scrolling
        cfg, m, train = r["config"], r["metrics"] or {}, _dict(r["config"].get("train"))
        pr = _probe(m)
        rows.append([f"{i + 1}. {run_name(r)}", cfg.get("level") or m.get("level"),
                     pct_ci(m.get("accuracy"), m.get("accuracy_ci")),
                     pct_ci(m.get("macro_accuracy"), m.get("macro_accuracy_ci")),
                     pct(pr.get("accuracy")), pct(pr.get("macro_accuracy")),
                     f"{m['auc']:.4f}" if isinstance(m.get("auc"), float) else "–",
                     train.get("loss"), cfg.get("stage"), labels_drawn(train), cfg.get("frames"),
                     split_label(m) or m.get("split"), m.get("n")])
    return table(header, rows, cls="sticky")


def labels_drawn(train: dict[str, Any]) -> Any:
    """The labelled fraction, and the per-generator floor when the run used one."""
    per_generator = train.get("per_generator") or 0
    fraction = train.get("fraction")
    return f"{fraction}, ≥ {per_generator} per generator" if per_generator else fraction


def _card(value: str, label: str, ci: Any = None, cls: str = "card") -> str:
    sub = f' <span class=ci>{escape(ci_text(ci))}</span>' if ci_text(ci) else ""
    return f"<div class=\"{cls}\"><b>{escape(value)}{sub}</b><span>{escape(label)}</span></div>"


def _cards(m: dict[str, Any]) -> str:
    items = [_card(pct(m.get("accuracy")), "accuracy % (95 % CI)", m.get("accuracy_ci")),
             _card(pct(m.get("macro_accuracy")), "macro accuracy % (95 % CI)", m.get("macro_accuracy_ci"))]
    if m.get("auc") is not None:
        items.append(_card(num(m["auc"], 4), "ROC AUC"))
    items.append(_card(str(m.get("n", "–")), "videos"))
    pr = _probe(m)
    if "accuracy" in pr:
        items += [_card(pct(pr.get("accuracy")), "linear probe accuracy %", pr.get("accuracy_ci"), "card probe"),
                  _card(pct(pr.get("macro_accuracy")), "linear probe macro %", pr.get("macro_accuracy_ci"),
                        "card probe")]
    return '<div class="cards">' + "".join(items) + "</div>"


def probe_note(m: dict[str, Any]) -> str:
    """One line on how the probe beside the run was fitted (or why it was not)."""
    pr = _probe(m)
    if pr.get("skipped"):
        return f'<p class="meta">Linear probe not fitted: {escape(str(pr["skipped"]))}</p>'
    if "accuracy" not in pr:
        return ""
    sub = pr.get("subset") or {}
    text = (f"Linear probe: logistic regression on pooled, shift-invariant feature statistics, fitted on the same "
            f"{pr.get('n_train')} labelled train videos ({sub.get('source', 'labelled subset')}"
            f"{', capped' if sub.get('capped') else ''}), C = {pr.get('C')}. If the transformer does not beat it, "
            "it has learned no more than a linear model.")
    if mark := probe_mark(m):
        text += f" Scored{mark}."
    if pr.get("paired"):
        line = format_paired(pr["paired"])
        text += f" {line[0].upper()}{line[1:]}{f' ({PAIRED_OPTIMISTIC})' if m.get(CHOSEN_KEY) else ''}."
    return f'<p class="meta">{escape(text)}</p>'


def source_note(m: dict[str, Any]) -> str:
    """How often `predict`'s "most like its labelled generator" was right (runs trained on sources)."""
    text = format_nearest_source(m.get("nearest_source") or {})
    return f'<p class="meta">{escape(text[0].upper() + text[1:])}.</p>' if text else ""


def per_class_table(m: dict[str, Any]) -> str:
    """class, n, accuracy, 95 % interval, a bar whose width is the accuracy, and the probe's accuracy."""
    pr = _probe(m)
    has_probe = "accuracy" in pr
    rows = []
    for cls in m.get("classes") or []:
        acc = _dict(m.get("per_class")).get(cls)
        n = _dict(m.get("per_class_n")).get(cls, 0)
        ci = _dict(m.get("per_class_ci")).get(cls)
        few = is_number(n) and 0 < n < FEW
        width = round(80 * min(max(acc, 0), 1)) if is_number(acc) else 0
        flag = f' <span class=few title="fewer than {FEW} videos">few</span>' if few else ""
        probe_cell = f"<td>{pct(_dict(pr.get('per_class')).get(cls))}</td>" if has_probe else ""
        rows.append(f"<tr><td class=l>{esc(cls)}</td><td>{esc(n)}{flag}</td>"
                    f"<td>{pct(acc)}</td><td class=ci>{escape(ci_text(ci))}</td>"
                    f"<td class=l><span class=bar style=\"width:{width}px\"></span></td>{probe_cell}</tr>")
    probe_head = "<th>probe %</th>" if has_probe else ""
    return ('<div class="scroll"><table><thead><tr><th class=l>class</th><th>n</th><th>accuracy %</th>'
            f"<th>95 % CI</th><th class=l></th>{probe_head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            f'<p class="meta">Intervals (95 %): Wilson per class and for accuracy; for macro accuracy the wider of a '
            "stratified bootstrap over videos and a normal interval with Agresti-Coull per-class variances. "
            f"<span class=few>few</span>: fewer than {FEW} test videos, an anecdote rather "
            "than a result.</p>")


def confusion_table(m: dict[str, Any]) -> str:
    """Rows = true class, columns = predicted (numbered to stay narrow); shading = row-normalised share."""
    classes, conf = m.get("classes") or [], m.get("confusion") or []
    head = '<th class=l>true ↓ / predicted →</th>' + "".join(
        f'<th title="{esc(c)}">{i}</th>' for i, c in enumerate(classes))
    body = []
    for i, (cls, row) in enumerate(zip(classes, conf)):
        total = sum(row) or 1
        cells = []
        for j, v in enumerate(row):
            share = v / total
            fg = "#fff" if share > 0.55 else "#1f2933"
            hue = "37,99,235" if i == j else "220,38,38"
            cells.append(f'<td style="background:rgba({hue},{share:.3f});color:{fg}">{esc(v)}</td>')
        body.append(f"<tr><th class=l>{i} · {esc(cls)}</th>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="conf"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
            '<p class="meta">Rows: true class; columns: predicted class (numbers as in the rows). '
            "Blue: correct, red: errors; shading = share of the row.</p>")


def training_curve(history: list[dict[str, Any]]) -> bytes | None:
    """A small PNG: training losses per epoch and validation (macro) accuracy."""
    if not history:
        return None
    fig = Figure(figsize=(8, 2.8), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] if is_number(h.get("epoch")) else i for i, h in enumerate(history)]
    for key in ("loss", "ce", "hnm"):
        ys = [h.get(key) for h in history]
        if any(isinstance(y, (int, float)) for y in ys):
            ax1.plot(ep, [y if isinstance(y, (int, float)) else float("nan") for y in ys], label=key)
    for key in ("val_accuracy", "val_macro_accuracy"):
        ys = [h.get(key) for h in history]
        if any(isinstance(y, (int, float)) for y in ys):
            ax2.plot(ep, [100 * y if isinstance(y, (int, float)) else float("nan") for y in ys], label=key)
    for ax, title in ((ax1, "training loss"), (ax2, "validation %")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return png(fig)


STALE = ("made with other weights than the run's model.safetensors (trained on or retrained since), so not "
         "shown; rerun <code>{}</code>")
FIX = "rerun <code>saga evaluate</code> on this run"


def _stale_line(files: list[str], command: str) -> str:
    return f'<p class="meta">{escape(", ".join(files))}: {STALE.format(command)}</p>' if files else ""


def _metrics_part(run: dict[str, Any]) -> list[str]:
    """Cards, probe, per-class table and confusion; each piece one line when its data is damaged."""
    m = run["metrics"]
    out = [_stale_line(run.get("stale", []), "saga evaluate")]
    if run.get("weights") and not run["done"]:
        out.append(f'<p class="meta">The run is unfinished (no {DONE}): what follows is of its best weights '
                   "so far.</p>")
    if not m:
        if not run.get("stale"):
            out.append('<p class="meta">Not evaluated yet: run <code>saga evaluate</code> on this run.</p>')
        return out
    out += [f"<h3>Metrics ({esc(split_label(m))})</h3>",
            foreign_note(m, _dict(run.get("provenance")).get("cache_id")), seen_note(m),
            guarded("metrics", FIX, _cards, m),
            guarded("probe", FIX, probe_note, m), guarded("nearest source", FIX, source_note, m)]
    others = [f"{split_label({**v, 'split': k})}: {pct(v.get('accuracy'))} % / macro {pct(v.get('macro_accuracy'))} %"
              for k, v in run["splits"].items() if v and k != m.get("split")]
    if others:
        out.append(f'<p class="meta">also evaluated: {escape("; ".join(others))}</p>')
    return out + ["<h3>Per-class accuracy</h3>", guarded("per-class accuracy", FIX, per_class_table, m),
                  "<h3>Confusion matrix</h3>", guarded("confusion matrix", FIX, confusion_table, m)]


def _figures_part(run: dict[str, Any]) -> str:
    """The training curve, then the T-Sig and t-SNE figures of the run's weights (others named in one line)."""
    curve = training_curve(run["history"])
    figs = [figure(curve, f"training curve ({METRICS})")] if curve else []
    many = _count(run["config"].get("classes")) > 6  # many T-Sig panels: give the maps the full width
    figs += [figure(p.read_bytes(), cap, wide=many and p.name.startswith("tsig_maps")) for p, cap in run["figures"]]
    stale = run.get("stale_figures", [])
    commands = " / ".join(c for c in ("saga tsig", "saga tsne") if any(n.startswith(c[5:]) for n in stale))
    if not figs and not stale:
        return ""
    return f"<h3>Figures</h3>{_stale_line(stale, commands)}<div class=figs>" + "".join(figs) + "</div>"


def _count(classes: Any) -> int:
    return len(classes) if isinstance(classes, list) else 0


def run_section(i: int, run: dict[str, Any]) -> str:
    cfg, prov = run["config"], run["provenance"]
    out = [f'<section id="run-{i}"><h2>{i}. {escape(run_name(run))}</h2>',
           f'<p class="meta">{escape(str(run["dir"]))} · level {esc(cfg.get("level", "?"))} · '
           f'{_count(cfg.get("classes"))} classes · cache {escape(str(prov.get("cache_id", "?"))[:12])}</p>',
           *_metrics_part(run), heldout_section(run.get("heldout") or {}, per_class_table),
           beyond_sections(run["beyond"], run_name(run))]
    details = {CONFIG: cfg, PROVENANCE: prov, DONE: run["done"]}
    out.append("<details><summary>Configuration and provenance</summary>" + "".join(
        f"<h3>{escape(k)}</h3><pre>{escape(json.dumps(v, indent=2, sort_keys=True))}</pre>"
        for k, v in details.items() if v) + "</details>")
    out.append(_figures_part(run))
    return "".join(out) + "</section>"


# -- the page -----------------------------------------------------------------------------
def render_report(run_dirs: list[Path], ablations: list[Path] | None = None,
                  openworld: list[Path] | None = None) -> str:
    """The page: runs side by side, then the ablation tables and the leave-one-generator-out experiments.

    A folder among `run_dirs` that holds a `saga openset logo` results.json is shown as an
    experiment, not a run; so is the experiment a fold run (EXP/logo/<g>) belongs to.
    """
    dirs = [Path(d) for d in run_dirs]
    experiments = list(dict.fromkeys([experiment_file(Path(e)).resolve() for e in openworld or []]
                                     + [experiment_file(e).resolve() for e in find_experiments(dirs)]))
    runs = [load_run(d) for d in dirs if not is_experiment(d)]
    tables = one_per_folder([*(ablations or []), *find_ablations([Path(r["dir"]) for r in runs])])
    anchors = ["ablation", *(f"ablation-{i}" for i in range(2, len(tables) + 1))]
    nav = "".join(f'<a href="#run-{i}">{i}. {escape(run_name(r))}</a>' for i, r in enumerate(runs, 1))
    nav += "".join(f'<a href="#{a}">ablation: {escape(t.resolve().parent.name)}</a>' for a, t in zip(anchors, tables))
    nav += "".join(f'<a href="#openworld-{i}">leave-one-generator-out: {escape(e.parent.name)}</a>'
                   for i, e in enumerate(experiments, 1))
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>SAGA report ({len(runs)} run{'s' * (len(runs) != 1)})</title><style>{CSS}</style></head>",
        '<body><main class="wrap"><h1>SAGA report</h1>',
        f'<p class="meta">{time.strftime("%Y-%m-%d %H:%M")} · {len(runs)} run(s)'
        f'{f" · {len(experiments)} open-set experiment(s)" if experiments else ""}</p>',
        f'<section id="summary"><h2>Runs</h2><nav>{nav}</nav>{summary_table(runs) if runs else ""}</section>',
    ]
    parts += [ablation_section(t, a) for a, t in zip(anchors, tables)]
    parts += [logo_section(e, f"openworld-{i}") for i, e in enumerate(experiments, 1)]
    parts += [run_section(i, r) for i, r in enumerate(runs, 1)]
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


INPUTS_META = "saga-inputs"  # the digest of what the report was built from (`build_report`'s `inputs`)


def build_report(run_dirs: list[Path], out_html: Path, ablation: Path | None = None,
                 openworld: list[Path] | None = None, inputs: str = "") -> Path:
    """Write the report for `run_dirs` (and `openworld` experiments) to `out_html` (atomically); its path.
    `inputs` (`saga.demo_reuse.report_inputs`) goes into a meta tag: a rerun tells its report is current."""
    missing = [str(d) for d in run_dirs if not Path(d).is_dir()]
    if missing:
        raise SagaError(f"{missing[0]}: not a run folder; pass folders written by `saga train`")
    run_dirs, found = _sort_folders(run_dirs)
    if not run_dirs and not openworld:
        raise SagaError("nothing to report: pass run folders or --openworld EXP")
    # the tables beside the runs too: render_report shows them, so a damaged one is named here, not a traceback
    beside = find_ablations([d for d in run_dirs if not is_experiment(d)])
    tables = one_per_folder(([Path(ablation)] if ablation is not None else []) + found + beside)
    for table_file in tables:
        check_ablation(table_file)
    bad = [str(e) for e in openworld or [] if not experiment_file(Path(e)).is_file()]
    if bad:
        raise SagaError(f"{bad[0]}: no {LOGO_RESULTS} found; pass the --out folder of `saga openset logo` "
                        "(or its results.json)")
    out_html = Path(out_html)
    if out_html.is_dir():
        raise SagaError(f"{out_html}: is a folder; pass the HTML file to write, e.g. --out {out_html / 'report.html'}")
    make_dir(out_html.parent)
    html = render_report(run_dirs, tables, openworld)
    tag = f'<meta name="{INPUTS_META}" content="{inputs}">' if inputs else ""
    write_text(out_html, html.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + tag, 1))
    return out_html


def _sort_folders(folders: list[Path]) -> tuple[list[Path], list[Path]]:
    """The run (and experiment) folders, each once, and the table of every ablation folder among them
    (`saga report runs/*` then finds runs/ablation-GEN-L and runs/ablation-TEAM-L); any other folder is
    refused, named."""
    runs: dict[Path, Path] = {}
    tables: list[Path] = []
    for folder in map(Path, folders):
        if (folder / CONFIG).is_file() or is_experiment(folder):
            runs.setdefault(folder.resolve(), folder)
            continue
        table_file = table_in(folder)
        if table_file is None:
            raise SagaError(f"{folder}: not a saga run folder (no {CONFIG}); pass folders written by saga train, "
                            "attribute or probe, --ablation FILE, or --openworld EXP")
        tables.append(table_file)
    return list(runs.values()), tables
