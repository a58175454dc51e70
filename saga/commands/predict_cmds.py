"""`saga predict`: attribute new videos with a finished run, one line (or JSON record) per video."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from saga.commands.common import (OutputFormat, cli_device, console, err, one_line_warnings, print_json,
                                  status_progress, writable_folder)
from saga.commands.streams import ReaderGone, reader_gone
from saga.errors import SagaError, shown
from saga.progress import report_step


def predict(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    videos: Annotated[list[Path], typer.Argument(help="Video files or folders.")],
    tsig: Annotated[bool, typer.Option("--tsig", help="Also the video's T-Sig profile and a plot.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for --tsig plots (default: RUN/predict/); needs --tsig.")] = None,
    encoder: Annotated[Optional[str], typer.Option(
        help="Override the run's encoder (e.g. local-dir: of its moved folder); the weights must match.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Local copy of the run's encoder weights.")] = None,
    device: Annotated[str, typer.Option(
        help="auto | cpu | cuda[:N] (auto: a GPU when there is one, as extract and robustness, which also run the "
             "encoder).")] = "auto",
    format: Annotated[OutputFormat, typer.Option("--format", help="text | json (one JSON record per video).")] = OutputFormat.text,
    allow_unfinished: Annotated[bool, typer.Option(
        "--allow-unfinished", help="Predict with an interrupted run's mid-training weights (refused without it).")] = False,
) -> None:
    """Attribute videos with a trained run (extracting them with the run's own encoder)."""
    if out is not None and not tsig:  # predictions go to stdout: an --out that holds nothing is a mistake
        raise SagaError(f"--out {out}: only holds the --tsig plots; add --tsig, or drop --out "
                        "(predictions print to stdout: --format json > FILE keeps them)")
    if tsig:  # after the option checks: saga.runs imports torch (seconds)
        from saga.runs.files import PREDICT

        writable_folder(out or run / PREDICT)  # before the first video, not after it
    tally = Tally(format == "json")
    with one_line_warnings():
        try:
            found, predictor = _prepared(run, videos, tally, device=cli_device(device), encoder=encoder,
                                         pretrained=pretrained, allow_unfinished=allow_unfinished)
            for folder, reason in found.unreadable:  # its videos are missing: a failed record, not a silent gap
                tally.show(predictor.failed(folder, unreadable_reason(folder, reason)))
            plots: set[Path] = set()
            plotting = tsig and _class_tsigs(run)
            for path in found.paths:
                pred = predictor.predict(path, tsig=tsig)
                tally.show(pred)
                if plotting and pred.status == "ok":  # after its prediction is out: a plot that fails loses nothing
                    _plot_tsig(run, _unique(out or run / PREDICT, f"{plot_stem(path)}_tsig", ".png", plots), path, pred)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: predict keeps nothing, so there is nothing to resume
            exc.args = (tally.interrupted(),)
            raise
    if not tally.json:
        console.print(tally.summary(predictor.identity), markup=False)
    if tally.failed:
        raise typer.Exit(1)


def _prepared(run: Path, videos: list[Path], tally: Tally, **options: Any) -> tuple[Any, Any]:
    """The videos found and the loaded `Predictor`; each step (the walk, the run, the encoder: minutes on a large
    folder or a CPU) is a status line on stderr, ended before the first record (`status_progress`)."""
    with status_progress("predict") as steps:
        report_step(steps, "importing torch")  # seconds, more on a cold disk
        from saga.pipeline.inputs import VIDEO_SUFFIXES
        from saga.predict import Predictor, expand_inputs, no_videos

        found = expand_inputs(videos, steps)
        if not found.paths:
            raise no_videos(videos, found, VIDEO_SUFFIXES)
        for note in found.notes:
            err.print(f"note: {note}", markup=False)
        tally.total = len(found.paths) + len(found.unreadable)
        return found, Predictor(run, progress=steps, **options)


def unreadable_reason(folder: str, reason: str) -> str:
    """A folder's failed record: its videos are not predicted."""
    return f"cannot list this folder ({reason}); its videos are not predicted: make it readable (chmod a+rx " \
           f"{shown(folder)}) and rerun"


class Tally:
    """The records shown so far, for the closing summary (text) and the interrupted line."""

    def __init__(self, json: bool) -> None:
        self.json, self.total, self.done, self.failed, self.warned = json, 0, 0, 0, 0

    def show(self, pred: Any) -> None:
        if self.json:
            print_json(pred.to_dict())
        else:
            _print_prediction(pred)
        self.done += 1
        self.failed += pred.status != "ok"
        self.warned += bool(pred.warnings)
        if reader_gone():  # `saga predict ... | head -3`: what follows would be printed to nobody
            raise ReaderGone()

    def summary(self, identity: dict[str, Any]) -> str:
        """The last line of a text-mode call: a `> results.txt` of it says that some failed, and where."""
        failed = f"{self.failed} failed (their reasons are on stderr)" if self.failed else "0 failed"
        warned = f" ({self.warned} with thin evidence: see their warning lines)" if self.warned else ""
        weights = (identity.get("run_model") or "none")[:16]
        return (f"summary: {self.done - self.failed} attributed{warned}, {failed}; run {shown(identity['run'])}, "
                f"weights blake2b {weights}")

    def interrupted(self) -> str:
        """Predict's own interrupted line (the CLI prints it): what was printed is complete, nothing resumes."""
        if not self.done:
            return "interrupted before any video was predicted; rerun the same command"
        what = "records" if self.json else "lines"
        return (f"interrupted: {self.done} of {self.total} videos predicted (their {what} above are complete); "
                "predict keeps nothing to resume: rerun it on the videos not yet predicted")


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


def _class_tsigs(run: Path) -> bool:
    """Whether the run has the class T-Sigs a --tsig plot compares with; if not, one line before the first video
    (it was repeated after every video, and no plot came of any)."""
    from saga.runs import RunFolder
    from saga.runs.files import TSIG

    if RunFolder(run).has_tsigs:
        return True
    err.print(f"{shown(run)}: no class T-Sigs ({TSIG}, made from the test split) to compare with, so no --tsig "
              f"plot is drawn; each video's T-Sig profile is still computed (--format json: its `tsig`); run `saga "
              f"tsig {shown(run)} --cache CACHE` first for the plots", markup=False)
    return False


def _plot_tsig(run: Path, plot: Path, path: Path, pred: Any) -> None:
    from saga.explain.tsig import compare_video

    try:
        found = compare_video(run, pred.tsig, plot, name=plot_stem(path, 200) + path.suffix)
    except (OSError, ValueError, RuntimeError) as exc:  # a plot is a by-product: say so, keep predicting
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"{shown(path)}: no T-Sig plot ({why}); the prediction above stands", markup=False)
        return
    if found is None:  # removed since the check before the first video
        err.print(f"{shown(run)}: no class T-Sigs any more; no T-Sig plot for {shown(path)}", markup=False)
        return
    ev = pred.evidence or {}
    thin = f" (not evidence: {'; '.join(pred.warnings)})" if pred.warnings else ""
    err.print(f"T-Sig of {shown(path)} from {ev.get('frames')} of {ev.get('of')} frames: nearest class signature "
              f"{found[0]}{thin}; plot {shown(found[1])}", markup=False)


def _print_prediction(pred: Any) -> None:
    name = escape(shown(pred.path))  # one line per video whatever the name (a newline in it, markup)
    if pred.status != "ok":
        err.print(f"[red]{name}[/]: {escape(pred.error)}")
        return
    implied = ", ".join(f"{k} {v}" for k, v in pred.implied.items())
    top = sorted(pred.probabilities.items(), key=lambda kv: -kv[1])[:3]
    ev = pred.evidence
    console.print(f"[bold]{name}[/]: {pred.level} [bold]{escape(pred.predicted)}[/] ({100 * pred.confidence:.1f}%)"
                  + escape((f"; implies {implied}" if implied else "")
                           + "; top: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top)
                           + (f"; from {ev['frames']} of {ev['of']} frames, {ev['size'][0]}x{ev['size'][1]} px" if ev
                              else "")))
    if pred.caveat:
        console.print(f"  [yellow]note[/]: {escape(pred.caveat)}", soft_wrap=True)
    if pred.warnings:  # thin evidence: said on the video's own lines, never refused (the analyst weighs it)
        console.print(f"  [yellow]warning[/]: {escape('; '.join(pred.warnings))}; weigh this attribution accordingly")
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
