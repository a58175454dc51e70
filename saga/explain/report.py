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
"""

from __future__ import annotations

import base64
import io
import json
import time
from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from saga.errors import SagaError
from saga.explain.intervals import FEW, format_ci
from saga.fileio import make_dir, write_text
from saga.runs import CONFIG, DONE, METRICS, PROVENANCE, TSIG_MAPS, TSIG_PROFILES, RunFolder, evaluation_file

FIGURES = ((TSIG_MAPS, "T-Sig maps (penultimate block, mean over heads and videos)"),
           (TSIG_PROFILES, "T-Sig profiles (attention at frame offset Δ)"))
ABLATION_NAMES = ("ablation.json", "ablation.md")

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f5f7fa}
.wrap{max-width:1100px;margin:0 auto;padding:12px}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.25em;margin:0 0 .5em}h3{font-size:1.05em;margin:1.2em 0 .4em}
section{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:12px 14px;margin:14px 0}
.meta{color:#616e7c;font-size:.9em;word-break:break-word}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-size:.9em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e4e7eb;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f4f8}td.l,th.l{text-align:left}
table.conf td{min-width:2.4em;text-align:center;padding:3px 4px}
table.conf tbody th,table.sticky td:first-child{position:sticky;left:0;background:#f0f4f8}
table.sticky td:first-child{background:#fff}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{flex:1 1 130px;border:1px solid #d9e2ec;border-radius:6px;padding:6px 10px}
.card b{display:block;font-size:1.35em}.card span{color:#616e7c;font-size:.85em}
.bar{display:inline-block;height:.7em;background:#3e7bfa;border-radius:2px;vertical-align:middle}
.ci{color:#616e7c;font-size:.85em}.few{color:#b44d12;font-weight:600}
.card.probe{border-style:dashed}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:12px}
figure{margin:0}figure.wide{grid-column:1/-1}figcaption{color:#616e7c;font-size:.85em}
img{max-width:100%;height:auto;display:block;border:1px solid #e4e7eb;border-radius:4px}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f0f4f8;padding:8px;overflow-x:auto;font-size:.8em;max-width:100%}
nav a{margin-right:.8em}
"""


# -- reading a run folder -------------------------------------------------------------
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_run(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows about one run; missing files just leave their section out."""
    run = RunFolder(run_dir)
    metrics = run.read_optional(evaluation_file("test")) or run.read_optional(evaluation_file())
    captions = {TSIG_MAPS: FIGURES[0][1], TSIG_PROFILES: FIGURES[1][1]}
    figs = [(p, captions.get(p.name) or f"t-SNE of φ ({p.stem})") for p in run.figures()]
    return {"dir": run_dir, "config": run.read_optional(CONFIG) or {},
            "provenance": run.read_optional(PROVENANCE) or {}, "done": run.read_optional(DONE),
            "metrics": metrics, "splits": run.evaluations(), "history": run.read_metrics(tolerant=True),
            "figures": figs}


# -- small HTML pieces ------------------------------------------------------------------
def _pct(x: Any) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{100 * x:.2f}"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def _table(header: list[str], rows: list[list[Any]], left: int = 1, cls: str = "") -> str:
    """A table in a sideways-scrolling wrapper; the first `left` columns are left-aligned text."""
    def tr(cells: list[Any], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag}{" class=l" if i < left else ""}>{escape(_cell(c))}</{tag}>'
                                for i, c in enumerate(cells)) + "</tr>"
    body = "".join(tr(r, "td") for r in rows)
    return (f'<div class="scroll"><table class="{cls}"><thead>{tr(header, "th")}</thead>'
            f"<tbody>{body}</tbody></table></div>")


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure(data: bytes, caption: str, wide: bool = False) -> str:
    return (f"<figure{' class=wide' if wide else ''}>{_img(data, caption)}"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _run_name(run: dict[str, Any]) -> str:
    d: Path = run["dir"]
    return f"{d.parent.name}/{d.name}" if d.parent.name else d.name


# -- sections ---------------------------------------------------------------------------
def _pct_ci(x: Any, ci: Any) -> str:
    """'90.00 [69.9–97.2]' (plain text: table cells are escaped)."""
    text = _pct(x)
    return f"{text} {format_ci(ci)}" if ci and text != "–" else text


def _probe(m: dict[str, Any]) -> dict[str, Any]:
    p = m.get("probe")
    return p if isinstance(p, dict) else {}


def summary_table(runs: list[dict[str, Any]]) -> str:
    """One row per run: the comparison a reader wants first (with 95 % intervals and the probe beside)."""
    header = ["run", "level", "accuracy % [95 % CI]", "macro acc % [95 % CI]", "probe acc %", "probe macro %",
              "AUC", "loss", "stage", "fraction", "frames", "split", "n"]
    rows = []
    for i, r in enumerate(runs):  # the numbers first: on a phone they are visible before scrolling
        cfg, m, train = r["config"], r["metrics"] or {}, r["config"].get("train") or {}
        pr = _probe(m)
        rows.append([f"{i + 1}. {_run_name(r)}", cfg.get("level") or m.get("level"),
                     _pct_ci(m.get("accuracy"), m.get("accuracy_ci")),
                     _pct_ci(m.get("macro_accuracy"), m.get("macro_accuracy_ci")),
                     _pct(pr.get("accuracy")), _pct(pr.get("macro_accuracy")),
                     f"{m['auc']:.4f}" if isinstance(m.get("auc"), float) else "–",
                     train.get("loss"), cfg.get("stage"), train.get("fraction"), cfg.get("frames"), m.get("split"),
                     m.get("n")])
    return _table(header, rows, cls="sticky")


def _card(value: str, label: str, ci: Any = None, cls: str = "card") -> str:
    sub = f' <span class=ci>{escape(format_ci(ci))}</span>' if ci else ""
    return f"<div class=\"{cls}\"><b>{escape(value)}{sub}</b><span>{escape(label)}</span></div>"


def _cards(m: dict[str, Any]) -> str:
    items = [_card(_pct(m.get("accuracy")), "accuracy % (95 % CI)", m.get("accuracy_ci")),
             _card(_pct(m.get("macro_accuracy")), "macro accuracy % (95 % CI)", m.get("macro_accuracy_ci"))]
    if m.get("auc") is not None:
        items.append(_card(f"{m['auc']:.4f}", "ROC AUC"))
    items.append(_card(str(m.get("n", "–")), "videos"))
    pr = _probe(m)
    if "accuracy" in pr:
        items += [_card(_pct(pr.get("accuracy")), "linear probe accuracy %", pr.get("accuracy_ci"), "card probe"),
                  _card(_pct(pr.get("macro_accuracy")), "linear probe macro %", pr.get("macro_accuracy_ci"),
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
    return f'<p class="meta">{escape(text)}</p>'


def per_class_table(m: dict[str, Any]) -> str:
    """class, n, accuracy, 95 % interval, a bar whose width is the accuracy, and the probe's accuracy."""
    pr = _probe(m)
    has_probe = "accuracy" in pr
    rows = []
    for cls in m.get("classes", []):
        acc = m.get("per_class", {}).get(cls)
        n = m.get("per_class_n", {}).get(cls, 0)
        ci = (m.get("per_class_ci") or {}).get(cls)
        few = 0 < n < FEW
        width = 0 if acc is None else round(80 * acc)
        flag = f' <span class=few title="fewer than {FEW} videos">few</span>' if few else ""
        probe_cell = f"<td>{_pct((pr.get('per_class') or {}).get(cls))}</td>" if has_probe else ""
        rows.append(f"<tr><td class=l>{escape(cls)}</td><td>{n}{flag}</td>"
                    f"<td>{_pct(acc)}</td><td class=ci>{escape(format_ci(ci))}</td>"
                    f"<td class=l><span class=bar style=\"width:{width}px\"></span></td>{probe_cell}</tr>")
    probe_head = "<th>probe %</th>" if has_probe else ""
    return ('<div class="scroll"><table><thead><tr><th class=l>class</th><th>n</th><th>accuracy %</th>'
            f"<th>95 % CI</th><th class=l></th>{probe_head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            f'<p class="meta">Intervals: Wilson (95 %) per class and for accuracy, stratified bootstrap over videos '
            f"for macro accuracy. <span class=few>few</span>: fewer than {FEW} test videos, an anecdote rather "
            "than a result.</p>")


def confusion_table(m: dict[str, Any]) -> str:
    """Rows = true class, columns = predicted (numbered to stay narrow); shading = row-normalised share."""
    classes, conf = m.get("classes", []), m.get("confusion", [])
    head = '<th class=l>true ↓ / predicted →</th>' + "".join(
        f'<th title="{escape(c)}">{i}</th>' for i, c in enumerate(classes))
    body = []
    for i, (cls, row) in enumerate(zip(classes, conf)):
        total = sum(row) or 1
        cells = []
        for j, v in enumerate(row):
            share = v / total
            fg = "#fff" if share > 0.55 else "#1f2933"
            hue = "37,99,235" if i == j else "220,38,38"
            cells.append(f'<td style="background:rgba({hue},{share:.3f});color:{fg}">{v}</td>')
        body.append(f"<tr><th class=l>{i} · {escape(cls)}</th>{''.join(cells)}</tr>")
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
    ep = [h.get("epoch", i) for i, h in enumerate(history)]
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def run_section(i: int, run: dict[str, Any]) -> str:
    cfg, prov, m = run["config"], run["provenance"], run["metrics"]
    out = [f'<section id="run-{i}"><h2>{i}. {escape(_run_name(run))}</h2>',
           f'<p class="meta">{escape(str(run["dir"]))} · level {escape(str(cfg.get("level", "?")))} · '
           f'{len(cfg.get("classes", []))} classes · cache {escape(str(prov.get("cache_id", "?"))[:12])}</p>']
    if m:
        out += [f"<h3>Metrics ({escape(str(m.get('split', '')))})</h3>", _cards(m), probe_note(m)]
        others = [f"{k}: {_pct(v.get('accuracy'))} % / macro {_pct(v.get('macro_accuracy'))} %"
                  for k, v in run["splits"].items() if v and k != m.get("split")]
        if others:
            out.append(f'<p class="meta">also evaluated: {escape("; ".join(others))}</p>')
        out += ["<h3>Per-class accuracy</h3>", per_class_table(m), "<h3>Confusion matrix</h3>", confusion_table(m)]
        out.append(openworld_section(m.get("openworld") or {}))
    else:
        out.append('<p class="meta">Not evaluated yet: run <code>saga evaluate</code> on this run.</p>')
    details = {CONFIG: cfg, PROVENANCE: prov, DONE: run["done"]}
    out.append("<details><summary>Configuration and provenance</summary>" + "".join(
        f"<h3>{escape(k)}</h3><pre>{escape(json.dumps(v, indent=2, sort_keys=True))}</pre>"
        for k, v in details.items() if v) + "</details>")
    curve = training_curve(run["history"])
    figs = ([_figure(curve, f"training curve ({METRICS})")] if curve else [])
    many = len(cfg.get("classes", [])) > 6  # many T-Sig panels: give the maps the full width
    figs += [_figure(p.read_bytes(), cap, wide=many and p.name == TSIG_MAPS) for p, cap in run["figures"]]
    if figs:
        out.append("<h3>Figures</h3><div class=figs>" + "".join(figs) + "</div>")
    return "".join(out) + "</section>"


def openworld_section(ow: dict[str, Any]) -> str:
    """Calibration (ECE before/after, reliability bins) and the open-set false-unknown rate, when fitted."""
    if not ow:
        return ""
    out = ["<h3>Calibration and open set</h3>"]
    cal = ow.get("calibration")
    if cal:
        after = cal["after"]  # the reliability diagram of the calibrated probabilities, as a table
        rows = [[f"{lo:.2f}–{hi:.2f}", n, _pct(conf), _pct(acc)] for lo, hi, n, conf, acc in zip(
            after["edges"][:-1], after["edges"][1:], after["count"], after["confidence"], after["accuracy"]) if n]
        out.append(f'<p class="meta">Temperature {cal["temperature"]:.3f} fitted on validation videos: expected '
                   f'calibration error {cal["before"]["ece"]:.3f} before, {cal["after"]["ece"]:.3f} after '
                   f'({cal["after"]["n"]} videos).</p>')
        out.append(_table(["confidence bin", "videos", "mean confidence %", "accuracy %"], rows))
    opn = ow.get("openset")
    if opn and opn.get("false_unknown") is not None:
        out.append(f'<p class="meta">Open set ({escape(str(opn["kind"]))} score, threshold at the validation '
                   f'{opn["percentile"]:g}th percentile): {_pct(opn["false_unknown"])} % of {opn["n_known"]} '
                   "known videos are called unknown source.</p>")
    return "".join(out)


# -- ablation -----------------------------------------------------------------------------
def find_ablation(run_dirs: list[Path]) -> Path | None:
    """An ablation.json / ablation.md in a run folder's parent (where `saga ablate` puts it)."""
    for parent in dict.fromkeys(d.resolve().parent for d in run_dirs):
        for name in ABLATION_NAMES:
            if (parent / name).is_file():
                return parent / name
    return None


def ablation_section(path: Path) -> str:
    body = _ablation_md(path.read_text()) if path.suffix == ".md" else _ablation_json(_json(path))
    return f'<section id="ablation"><h2>Ablation</h2><p class="meta">{escape(path.name)}</p>{body}</section>'


def _ablation_json(data: Any) -> str:
    """Rows from a list of dicts, {"rows": [...]}, {name: {col: value}} or {name: value}."""
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if isinstance(data, dict):
        data = [{"setting": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data) or not data:
        return f"<pre>{escape(json.dumps(data, indent=2))}</pre>"
    cols = list(dict.fromkeys(k for r in data for k in r))
    return _table(cols, [[r.get(c) for c in cols] for r in data])


def _ablation_md(text: str) -> str:
    """Markdown pipe tables become tables; other lines are kept as escaped paragraphs."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            out.append(_table(rows[0], rows[1:]))
            rows.clear()
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not all(set(c) <= set(":- ") for c in cells):
                rows.append(cells)
            continue
        flush()
        if s:
            out.append(f"<h3>{escape(s.lstrip('#').strip())}</h3>" if s.startswith("#") else f"<p>{escape(s)}</p>")
    flush()
    return "".join(out)


# -- the page -----------------------------------------------------------------------------
def render_report(run_dirs: list[Path], ablation: Path | None = None) -> str:
    runs = [load_run(Path(d)) for d in run_dirs]
    ablation = ablation or find_ablation([Path(d) for d in run_dirs])
    nav = "".join(f'<a href="#run-{i}">{i}. {escape(_run_name(r))}</a>' for i, r in enumerate(runs, 1))
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>SAGA report ({len(runs)} run{'s' * (len(runs) != 1)})</title><style>{CSS}</style></head>",
        '<body><main class="wrap"><h1>SAGA report</h1>',
        f'<p class="meta">{time.strftime("%Y-%m-%d %H:%M")} · {len(runs)} run(s)</p>',
        f'<section id="summary"><h2>Runs</h2><nav>{nav}</nav>{summary_table(runs)}</section>',
    ]
    if ablation is not None:
        parts.append(ablation_section(Path(ablation)))
    parts += [run_section(i, r) for i, r in enumerate(runs, 1)]
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def build_report(run_dirs: list[Path], out_html: Path, ablation: Path | None = None) -> Path:
    """Write the report for `run_dirs` to `out_html` (atomically) and return its path."""
    missing = [str(d) for d in run_dirs if not Path(d).is_dir()]
    if missing:
        raise SagaError(f"{missing[0]}: not a run folder; pass folders written by `saga train`")
    if ablation is not None and not Path(ablation).is_file():
        raise SagaError(f"{ablation}: ablation file not found")
    out_html = Path(out_html)
    if out_html.is_dir():
        raise SagaError(f"{out_html}: is a folder; pass the HTML file to write, e.g. --out {out_html / 'report.html'}")
    make_dir(out_html.parent)
    write_text(out_html, render_report([Path(d) for d in run_dirs], ablation))
    return out_html
