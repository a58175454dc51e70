"""`saga robustness`: accuracy under re-encoding (H.264 CRF, downscale, crop, frame rate, an upload chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from saga.commands.common import Split, cli_device, console, err, one_line_warnings, pass_progress, status_progress


def robustness(
    run: Annotated[Path, typer.Argument(help="Run folder (any level).")],
    videos: Annotated[Path, typer.Option("--videos", help="The folder the cache was extracted from.")],
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Feature cache (default: the run's own).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder for robustness.json/.md (robustness-SPLIT.* for a split other than test; "
                      "robustness@CACHE-ID.* on a cache other than the run's training cache) and robustness/ (the "
                      "perturbed videos and caches, safe to delete); default: the run folder.")] = None,
    perturb: Annotated[Optional[str], typer.Option(
        "--perturb", help="Comma-separated: crfN, downscaleX, cropX, fpsX (X < 1), social "
                          "(default: crf23,crf28,crf35,downscale0.5,crop0.8,fps0.5,social).")] = None,
    limit_per_class: Annotated[Optional[int], typer.Option(
        "--limit-per-class", help="At most this many videos per generator (a seeded draw).")] = None,
    split: Annotated[Split, typer.Option(help="Split of the cache to perturb.")] = Split.test,
    seed: Annotated[int, typer.Option(help="Seed of the --limit-per-class draw.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Frames per encoder forward pass.")] = 64,
    workers: Annotated[int, typer.Option(help="Decoding worker processes.")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    encoder: Annotated[Optional[str], typer.Option(
        help="Override the run's encoder for the perturbed copies (e.g. local-dir: of its moved folder); the "
             "weights must match the run's.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Local copy of the run's encoder weights.")] = None,
) -> None:
    """Re-encode the split's videos with each perturbation, extract each set once, evaluate the run on it."""
    from saga.robustness.perturb import parse_list

    perturbations = parse_list(perturb)  # before the imports below: they take seconds (torch)
    from saga.explain.metrics import HELDOUT_KEY
    from saga.robustness.evaluate import markdown
    from saga.robustness.runner import RobustnessConfig, result_files, run_robustness

    cfg = RobustnessConfig(run=run, cache=cache, videos=videos, out=out, perturbations=perturbations,
                           limit_per_class=limit_per_class, split=split, seed=seed, device=cli_device(device),
                           batch_size=batch_size, workers=workers, encoder=encoder, pretrained=pretrained)
    with one_line_warnings(), status_progress("robustness") as steps:  # the setup steps' line, to the first pass
        result = run_robustness(cfg, say=lambda line: err.print(line, markup=False, highlight=False),
                                progress=pass_progress("robustness", steps), steps=steps)  # two passes per perturbation
    console.print(markdown(result), markup=False)  # class names as written, control characters escaped
    folder = out or run
    names = result_files(cfg.split, result.get(HELDOUT_KEY))  # named apart on a held-out cache
    console.print(f"written: {', '.join(str(folder / name) for name in names)}", markup=False)  # paths as written


def register(app: typer.Typer) -> None:
    app.command()(robustness)
