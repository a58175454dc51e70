"""The ablation tables `saga report` shows: `saga ablate`'s ablation.json / ablation.md, found beside
the run folders or named with --ablation (split from `saga.explain.report`)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from saga.errors import SagaError
from saga.explain.report_html import read_json_file, table
from saga.fileio import loads
from saga.taxonomy import LEVELS

ABLATION_NAMES = ("ablation.json", "ablation.md")


def find_ablations(run_dirs: list[Path]) -> list[Path]:
    """The ablation table of each run folder's parent that has one (where `saga ablate` puts its runs)."""
    found = (table_in(parent) for parent in dict.fromkeys(d.resolve().parent for d in run_dirs))
    return [table_file for table_file in found if table_file is not None]


def table_in(folder: Path) -> Path | None:
    """A folder's ablation table: ablation.json first, the data `ablation.md` is written from."""
    return next((folder / n for n in ABLATION_NAMES if (folder / n).is_file()), None)


def one_per_folder(tables: list[Path]) -> list[Path]:
    """Each table once, in order: ablation.json and ablation.md of one folder are the same table."""
    by_folder: dict[Path, Path] = {}
    for path in map(Path, tables):
        by_folder.setdefault(path.resolve().parent, path)
    return list(by_folder.values())


def ablation_section(path: Path, anchor: str = "ablation") -> str:
    """One ablation table, titled with its level and folder (several levels' tables sit side by side)."""
    text = path.read_text()
    body = _ablation_md(text) if path.suffix == ".md" else _ablation_json(read_json_file(path))
    return (f'<section id="{escape(anchor)}"><h2>{escape(_ablation_title(path, text))}</h2>'
            f'<p class="meta">{escape(str(path))}</p>{body}</section>')


def _ablation_title(path: Path, text: str) -> str:
    """"Ablation GEN-L (ablation-GEN-L)": the level `saga ablate` records (the .md's first word), then the folder."""
    data = read_json_file(path) if path.suffix == ".json" else None
    level = data.get("level") if isinstance(data, dict) else (text.split() or [""])[0]
    where = f" ({path.resolve().parent.name})"
    return f"Ablation {level}{where}" if level in LEVELS else f"Ablation{where}"


def _ablation_json(data: Any) -> str:
    """`saga ablate`'s summary as its own markdown table; else rows from a list of dicts, {"rows": [...]},
    {name: {col: value}} or {name: value}."""
    markdown = _ablate_markdown(data)
    if markdown is not None:
        return _ablation_md(markdown)
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if isinstance(data, dict):
        data = [{"setting": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data) or not data:
        return f"<pre>{escape(json.dumps(data, indent=2))}</pre>"
    cols = list(dict.fromkeys(k for r in data for k in r))
    return table(cols, [[r.get(c) for c in cols] for r in data])


def _ablate_markdown(data: Any) -> str | None:
    """The table `saga ablate` writes to ablation.md (± interval, hardest classes, level/seeds/fraction note);
    None for JSON of another shape."""
    from saga.explain.ablation_table import to_markdown

    if not (isinstance(data, dict) and {"level", "seeds", "rows"} <= set(data) and data["rows"]):
        return None
    try:
        return to_markdown(data)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None


def _ablation_md(text: str) -> str:
    """Markdown pipe tables become tables; other lines are kept as escaped paragraphs."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            out.append(table(rows[0], rows[1:]))
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


def check_ablation(path: Path) -> None:
    """An explicitly named ablation table must be readable: a report never shows a broken one as null."""
    if path.is_dir():
        raise SagaError(f"{path}: is a folder; pass --ablation {path / ABLATION_NAMES[0]}, or the folder itself "
                        "among the run folders")
    if not path.is_file():
        raise SagaError(f"{path}: ablation file not found; pass the ablation.json or ablation.md of `saga ablate`")
    if path.suffix not in (".json", ".md"):
        raise SagaError(f"{path}: not an ablation table; pass the ablation.json or ablation.md of `saga ablate`")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SagaError(f"{path}: unreadable ablation table ({str(exc).splitlines()[0]}); rerun `saga ablate` "
                        "or pass another --ablation") from None


__all__ = ["ABLATION_NAMES", "ablation_section", "check_ablation", "find_ablations", "one_per_folder", "table_in"]
