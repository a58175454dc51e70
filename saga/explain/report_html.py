"""The HTML pieces every section of `saga report` shares: inline CSS, escaped tables, embedded PNGs.

Nothing here reads a run folder; `report` (runs, ablation), `report_openworld` (calibration,
open set, enrollment, robustness of a run) and `report_logo` (a leave-one-generator-out
experiment) compose these pieces. Every piece of text is escaped, numbers from run files too
(`esc`: a file can hold anything); images are data URIs. A section whose data has the wrong
shape or types becomes one line (`guarded`), never a traceback.
"""

from __future__ import annotations

import base64
import io
import struct
from html import escape
from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure

from saga.explain.intervals import format_ci
from saga.explain.metrics import data_label
from saga.errors import clipped
from saga.fileio import loads

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
.good{color:#1b7f3b}.bad{color:#b42318}td small{color:#616e7c}
"""


def read_json_file(path: Path) -> Any:
    """A JSON file, or None when it is missing or unreadable (a report never fails on one file)."""
    try:
        return loads(path.read_text())
    except (OSError, ValueError):
        return None


def pct(x: Any) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{100 * x:.2f}"


def cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def esc(v: Any) -> str:
    """Any value from a run file as escaped HTML text (a count may be a string someone wrote there)."""
    return escape(cell(v))


DAMAGED = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)


def guarded(label: str, fix: str, fn: Callable[..., str], *args: Any) -> str:
    """fn(*args), or one line saying `label`'s data is unreadable: a report never fails on one damaged file.
    `fix` is HTML (it may hold <code>)."""
    try:
        return fn(*args)
    except DAMAGED as exc:
        return (f'<p class="meta">{escape(label)}: unreadable data ({escape(type(exc).__name__)}: '
                f"{escape(clipped(str(exc), 120))}); {fix}</p>")


def ci_text(ci: Any) -> str:
    """format_ci of a [lo, hi] pair of numbers; '' for anything else (a damaged file)."""
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in ci)
    return format_ci(ci) if ok else ""


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG before its image data (matplotlib writes savefig's metadata there);
    {} for anything that is not a readable PNG."""
    out, i = {}, 8
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return out
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"tEXt":
            key, _, value = data[i + 8:i + 8 + size].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        i += 12 + size
    return out


def table(header: list[str], rows: list[list[Any]], left: int = 1, cls: str = "") -> str:
    """A table in a sideways-scrolling wrapper; the first `left` columns are left-aligned text."""
    def tr(cells: list[Any], tag: str) -> str:
        return "<tr>" + "".join(f'<{tag}{" class=l" if i < left else ""}>{escape(cell(c))}</{tag}>'
                                for i, c in enumerate(cells)) + "</tr>"
    body = "".join(tr(r, "td") for r in rows)
    return (f'<div class="scroll"><table class="{cls}"><thead>{tr(header, "th")}</thead>'
            f"<tbody>{body}</tbody></table></div>")


def img(data: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def figure(data: bytes, caption: str, wide: bool = False) -> str:
    return (f"<figure{' class=wide' if wide else ''}>{img(data, caption)}"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def run_name(run: dict[str, Any]) -> str:
    d: Path = run["dir"]
    return f"{d.parent.name}/{d.name}" if d.parent.name else d.name


def pct_ci(x: Any, ci: Any) -> str:
    """'90.00 [69.9–97.2]' (plain text: table cells are escaped)."""
    text = pct(x)
    return f"{text} {ci_text(ci)}" if ci_text(ci) and text != "–" else text


def png(fig: Figure) -> bytes:
    """A matplotlib Figure (no pyplot state) as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def is_number(x: Any) -> bool:
    """A real number read from a JSON file (not a bool, not NaN): values a report may compute with."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def num(x: Any, digits: int = 3) -> str:
    """A float with `digits` decimals, '–' for anything else (None, NaN stored as null)."""
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and x == x else "–"


FIGURES = (("tsig_maps", "T-Sig maps (penultimate block, mean over heads and videos)"),
           ("tsig_profiles", "T-Sig profiles (attention at frame offset Δ)"))


def figure_caption(path: Path, stamp: dict[str, Any], run_cache: Any) -> str:
    """What the figure is, then which split (and, when not the run's, which cache) it shows: a train-split
    map or a held-out cache's is never captioned as the run's test result; t-SNE adds its settings."""
    base = next((text for prefix, text in FIGURES if path.name.startswith(prefix)), None)
    caption = f"{base or f't-SNE of φ ({path.stem})'} · {data_label(stamp, run_cache)}"
    if base is None and stamp.get("perplexity"):
        caption += f" · t-SNE seed {stamp.get('tsne_seed')}, perplexity {_short(stamp['perplexity'])}"
    return caption


def _short(value: Any) -> str:
    """A number from PNG metadata (text) to 4 significant digits; anything else as it is."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)
