"""`saga predict`: attribute new videos with a finished run, one line (or JSON record) per video."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from saga.commands.common import OutputFormat, cli_device, console, err, one_line_warnings, print_json, writable_folder
from saga.errors import SagaError


def predict(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    videos: Annotated[list[Path], typer.Argument(help="Video files or folders.")],
    tsig: Annotated[bool, typer.Option("--tsig", help="Also the video's T-Sig profile and a plot.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for --tsig plots (default: RUN/predict/); needs --tsig.")] = None,
    encoder: Annotated[Optional[str], typer.Option(
        help="Override the run's encoder (e.g. local-dir: of its moved folder); the weights must match.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Local copy of the run's encoder weights.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "cpu",
    format: Annotated[OutputFormat, typer.Option("--format", help="text | json (one JSON record per video).")] = OutputFormat.text,
    allow_unfinished: Annotated[bool, typer.Option(
        "--allow-unfinished", help="Predict with an interrupted run's mid-training weights (refused without it).")] = False,
) -> None:
    """Attribute videos with a trained run (extracting them with the run's own encoder)."""
    from saga.pipeline.inputs import VIDEO_SUFFIXES
    from saga.predict import Predictor, expand_inputs
    from saga.runs.files import PREDICT

    if out is not None and not tsig:  # predictions go to stdout: an --out that holds nothing is a mistake
        raise SagaError(f"--out {out}: only holds the --tsig plots; add --tsig, or drop --out "
                        "(predictions print to stdout: --format json > FILE keeps them)")
    if tsig:
        writable_folder(out or run / PREDICT)  # before the first video, not after it
    paths = expand_inputs(videos)
    if not paths:
        raise SagaError(f"{', '.join(map(str, videos))}: no videos found (looked for "
                        f"{', '.join(sorted(VIDEO_SUFFIXES))}); pass video files or folders holding them")
    failed, plots = 0, set()
    with one_line_warnings():
        predictor = Predictor(run, device=cli_device(device), encoder=encoder, pretrained=pretrained,
                              allow_unfinished=allow_unfinished)
        for path in paths:
            pred = predictor.predict(path, tsig=tsig)
            failed += pred.status != "ok"
            if format == "json":
                print_json(pred.to_dict())
            else:
                _print_prediction(pred)
            if tsig and pred.status == "ok":  # after its prediction is out: a plot that fails loses nothing else
                _plot_tsig(run, _unique(out or run / PREDICT, f"{plot_stem(path)}_tsig", ".png", plots), path, pred)
    if failed:
        raise typer.Exit(1)


def plot_stem(path: Path, limit: int = 100) -> str:
    """A file-name-safe, printable stem: any legal video name (too long, not UTF-8, `$` that matplotlib reads
    as maths) gives a plot file and title."""
    text = os.fsencode(path.stem).decode("utf-8", "replace")
    return re.sub(r"[^\w.-]+", "_", text)[:limit] or "video"


def _unique(folder: Path, stem: str, suffix: str, taken: set[Path]) -> Path:
    """folder/stem+suffix, or stem-2, stem-3, ... when an earlier video of this call took it (clip.mp4 twice)."""
    path, n = folder / f"{stem}{suffix}", 1
    while path in taken:
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    taken.add(path)
    return path


def _plot_tsig(run: Path, plot: Path, path: Path, pred: Any) -> None:
    from saga.explain.tsig import compare_video

    try:
        found = compare_video(run, pred.tsig, plot, name=plot_stem(path, 200) + path.suffix)
    except (OSError, ValueError, RuntimeError) as exc:  # a plot is a by-product: say so, keep predicting
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"{path}: no T-Sig plot ({why}); the prediction above stands", markup=False)
        return
    if found is None:
        err.print(f"[yellow]{run}: no class T-Sigs yet; run `saga tsig {run} --cache CACHE` to compare[/]")
    else:
        err.print(f"T-Sig of {path}: nearest class signature {found[0]}; plot {found[1]}", markup=False)


def _print_prediction(pred: Any) -> None:
    if pred.status != "ok":
        err.print(f"[red]{escape(pred.path)}[/]: {escape(pred.error)}")
        return
    implied = ", ".join(f"{k} {v}" for k, v in pred.implied.items())
    top = sorted(pred.probabilities.items(), key=lambda kv: -kv[1])[:3]
    console.print(f"[bold]{escape(pred.path)}[/]: {pred.level} [bold]{escape(pred.predicted)}[/] ({100 * pred.confidence:.1f}%)"
                  + escape((f"; implies {implied}" if implied else "")
                           + "; top: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top)))
    if pred.source and pred.source["rows"] > 1:
        console.print(f"  most like its labelled generator [bold]{escape(pred.source['generator'])}[/] "
                      f"({100 * pred.source['share']:.1f}% of the class; {pred.source['rows']} labelled generators)",
                      soft_wrap=True)
    extra = pred.openworld or {}
    if extra.get("unknown", {}).get("unknown"):
        u = extra["unknown"]
        console.print(f"  [yellow]unknown source[/]: far from every known class ({u['kind']} score {u['score']:.3f} "
                      f"> threshold {u['threshold']:.3f}); the label above is the nearest known one")
    elif extra.get("unknown", {}).get("enrolled"):
        u = extra["unknown"]
        console.print(f"  far from every trained class ({u['kind']} score {u['score']:.3f} > threshold "
                      f"{u['threshold']:.3f}), known through enrollment: {escape(u['enrolled'])}", soft_wrap=True)
    for level, e in extra.get("enrolled", {}).items():
        console.print(f"  with enrolled classes: {level} {escape(e['predicted'])} ({100 * e['confidence']:.1f}%)")


def register(app: typer.Typer) -> None:
    app.command()(predict)
