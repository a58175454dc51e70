"""Explain and show: `saga tsig`, `saga tsne`, `saga report`, and the end-to-end `saga demo` / `saga ablate`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from saga.commands.common import (
    Split,
    cli_device,
    console,
    err,
    given_options,
    load_options,
    named_folder,
    one_line_warnings,
    pass_progress,
    training_options,
    writable_folder,
)
from saga.cache.meta import require_cache

Cache = Annotated[Path, typer.Option("--cache", help="Feature cache folder.")]
SPLIT_HELP = "train | val | test (another split than test gets its own files, e.g. {example})."
TSIG_SPLIT = SPLIT_HELP.format(example="tsig_maps-train.png")
TSNE_SPLIT = SPLIT_HELP.format(example="tsne_<level>-train.png")


def tsig(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    cache: Cache = Path("cache"),
    split: Annotated[Split, typer.Option(help=TSIG_SPLIT)] = Split.test,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    """Temporal attention signatures per class (penultimate block): data + figures in the run folder."""
    from saga.explain.tsig import run_tsigs

    with one_line_warnings():
        written = run_tsigs(run, cache, split=split, device=cli_device(device))
    for kind, path in written.items():
        console.print(escape(f"{kind}: {path}"))


def tsne(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    cache: Cache = Path("cache"),
    color_by: Annotated[Optional[str], typer.Option("--color-by", help="Level to colour by (default: the run's).")] = None,
    split: Annotated[Split, typer.Option(help=TSNE_SPLIT)] = Split.test,
    seed: Annotated[int, typer.Option(help="t-SNE seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    """t-SNE map of the video embeddings φ, coloured by any level."""
    from saga.explain.tsne import run_tsne

    with one_line_warnings():
        result = run_tsne(run, cache, color_by=color_by, split=split, device=cli_device(device), seed=seed)
    console.print(escape(f"t-SNE: {result.png} (coordinates {result.csv})"))


def report(
    runs: Annotated[Optional[list[Path]], typer.Argument(
        help="Run folders (side by side); a `saga openset logo` output folder here is shown as an experiment.")] = None,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    ablation: Annotated[Optional[Path], typer.Option(help="ablation.json or .md to include.")] = None,
    openworld: Annotated[Optional[list[Path]], typer.Option(
        "--openworld", help="A `saga openset logo` output folder (or its results.json) to include; repeatable. "
                            "Found by itself when a fold run EXP/logo/<g> is among the runs.")] = None,
) -> None:
    """One self-contained HTML report: config, provenance, metrics, confusion, T-Sigs, t-SNE, open world, robustness."""
    from saga.explain.report import build_report

    writable_folder(out.parent)  # before reading every run: fail at once, naming the folder
    with one_line_warnings():  # paths and names print as written, never read as rich markup
        console.print(escape(f"report: {build_report(runs or [], out, ablation, openworld or [])}"))



def demo(
    out: Annotated[str, typer.Option("--out", help="Folder for videos, cache, runs and report.")] = "work/demo",
    per_class: Annotated[Optional[int], typer.Option(
        "--per-class", help="Videos per generator (default 12; real videos: 3 times as many).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the benchmark, splits and training.")] = 0,
    workers: Annotated[int, typer.Option(help="Decoding worker processes.")] = 1,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
    ablation: Annotated[bool, typer.Option("--ablation", help="Also the GEN-L loss/stage ablation (seeds --seed, "
                                           "--seed+1, --seed+2).")] = False,
) -> None:
    """The whole method on the built-in benchmark, offline: synth, extract, train, attribute, explain, report."""
    from rich.table import Table

    from saga.demo import DemoConfig, run_demo

    with one_line_warnings():
        cfg = DemoConfig(out=named_folder(out), seed=seed, workers=workers, device=device, ablation=ablation)
        if per_class is not None:
            cfg.per_class = per_class
        result = run_demo(cfg, log=lambda line: console.print(escape(line)), progress=pass_progress())
    table = Table(title="SAGA demo: test accuracy per attribution level", title_justify="left")
    for col in ("level", "classes", "test videos", "accuracy", "macro accuracy"):
        table.add_column(col, justify="left" if col == "level" else "right")
    for level, m in result["levels"].items():
        table.add_row(escape(level), str(len(m["classes"])), str(m["n"]), f"{100 * m['accuracy']:.1f}%",
                      f"{100 * m['macro_accuracy']:.1f}%")
    console.print(table)
    console.print(f"report: [bold]{escape(str(result['report']))}[/]")
    exit_if_cells_failed(result.get("ablation_failed") or [])  # after the report, which has the other cells


def ablate(
    cache: Cache = Path("cache"),
    stage1: Annotated[Path, typer.Option("--from", help="The stage-1 run (for the 2-stage rows).")] = Path("runs/stage1"),
    out: Annotated[Path, typer.Option("--out", help="Folder for the grid's runs and table.")] = Path("runs/ablation"),
    level: Annotated[Optional[str], typer.Option(help="Attribution level (default GEN-L).")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Labelled fraction per class (default 0.005).")] = None,
    floor: Annotated[Optional[int], typer.Option(help="At least this many labelled videos per class (default 2).")] = None,
    per_generator: Annotated[Optional[int], typer.Option(
        help="At least this many labelled videos of every generator of a class (default 0: off).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per cell.", min=1)] = 3,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per run (default 30).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default cpu).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help=(
        "TOML of training options (flags win); model options and frames it leaves out are the --from run's; "
        "no seed or loss (the grid's own)."))] = None,
    resume: Annotated[bool, typer.Option("--resume", help=(
        "Continue the grid after its cache changed (videos added or re-extracted): finished cells are kept, "
        "unfinished ones continue on the current cache, as `saga train --resume`. A killed grid on an "
        "unchanged cache resumes without it."))] = False,
) -> None:
    """The paper's ablation: {1-stage, 2-stage} × {CE, CE+semi-HNM, CE+HNM}, several seeds, one cache."""
    from saga.train.configs import AttributeConfig, refuse_grid_options
    from saga.train.options import ignored_options

    flags = dict(level=level, fraction=fraction, floor=floor, per_generator=per_generator, epochs=epochs, device=device)
    given = set(load_options(config, **flags))
    if config is not None:
        refuse_grid_options(config, given)
    base = training_options(AttributeConfig, config, **flags)
    base.check_every_loss()
    require_cache(cache)  # the checks above and this one before the imports below: they take seconds (torch)
    from saga.ablate import run_ablation, to_markdown
    from saga.runs import accept_changed_cache
    with one_line_warnings(), accept_changed_cache(resume, keep_finished=True):
        base = replace(base, **ignored_options(AttributeConfig, given_options(config, **flags)))  # warned once
        summary = run_ablation(cache, stage1, out, base, seeds=tuple(range(seeds)), level=base.level,
                               progress=lambda event: console.print(escape(event.message)), given=given)
    console.print(escape(to_markdown(summary)))  # class names and paths as written, not as rich markup
    console.print(escape(f"written: {out / 'ablation.md'}, {out / 'ablation.json'}"))
    exit_if_cells_failed(summary.get("failed") or [])


def exit_if_cells_failed(failed: list[dict[str, Any]]) -> None:
    """A grid with failed cells (`saga ablate`, `saga demo --ablation`) ends with exit 1, as extract does when
    some videos failed: one line for all (naming the first), one more for each other failed cell."""
    if not failed:
        return
    first = failed[0]
    err.print(escape(f"error: {len(failed)} cell run(s) failed (first: {first['run']}: {first['error']}); the "
                     "table has the others; rerun the same command to train only the failed ones again"))
    for cell in failed[1:]:
        err.print(escape(f"also failed: {cell['run']}: {cell['error']}"))
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    for command in (tsig, tsne, report, demo, ablate):
        app.command()(command)
