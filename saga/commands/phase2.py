"""Phase-2 commands: `saga train`, `saga attribute`, `saga evaluate`, `saga probe` (`saga predict`: predict_cmds)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from saga.commands.common import (
    OutputFormat,
    Split,
    cli_device,
    console,
    err,
    given_options,
    is_main,
    one_line_warnings,
    print_json,
    status_progress,
    training_options,
    writable_folder,
)
from saga.cache.meta import require_cache
from saga.errors import SagaError, WriteError
from saga.progress import ProgressFn

Cache = Annotated[Path, typer.Option("--cache", help="Feature cache folder (from `saga extract`).")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML of training options (CLI flags win), or paper-stage1 / paper-stage2: the published model.")]
DEFAULT_STAGE1 = Path("runs/stage1")
Frames = Annotated[Optional[int], typer.Option("--frames", help="T' <= the cache's T (default: all cached).")]
Patience = Annotated[Optional[int], typer.Option(
    help="Early stopping: validations without improvement (one per epoch, or per ~eval_every_steps steps when "
         "epochs are shorter; never before min_steps); 0 never stops early.")]
Resume = Annotated[Optional[bool], typer.Option(
    "--resume/--no-resume", help="Continue a killed run in --out (the default when its cache is unchanged); "
    "an explicit --resume also continues it after its cache changed (videos added or re-extracted). A finished "
    "run is never retrained in place: train on changed data with another --out.")]


def _printer(event: Any) -> None:  # a training ProgressEvent
    from saga.progress import describe

    if event.kind != "step":  # class names and paths as written, never read as rich markup
        err.print(describe(event), markup=False)


def _training_progress(name: str) -> AbstractContextManager[ProgressFn]:
    """Training's events for `_printer`; before them, each setup step (opening the cache, reading its features:
    minutes on a large cache) is a status line on stderr, ended by training's start (or a finished run's reuse)."""
    return status_progress(name, _printer, ends=("start", "reused", "done"))


def _stage1_run(from_run: Path | None, scratch: bool) -> Path | None:
    """The stage-1 run stage 2 adapts: --from, else the default stage-1 folder if it finished; None = scratch."""
    if scratch:
        _refuse_scratch_with_from(from_run, scratch)
        return None
    if from_run is not None:
        return from_run
    from saga.runs import RunFolder

    if RunFolder(DEFAULT_STAGE1).done:
        if is_main():
            err.print(f"adapting the stage-1 run {DEFAULT_STAGE1} (pass --from to pick another, --scratch for none)",
                      markup=False)
        return DEFAULT_STAGE1
    if is_main():
        err.print(f"no finished stage-1 run at {DEFAULT_STAGE1}: training from scratch (the 1-stage baseline); "
                  "run `saga train --stage 1` first, or pass --from")
    return None


def _refuse_scratch_with_from(from_run: Path | None, scratch: bool) -> None:
    if scratch and from_run is not None:
        raise SagaError("--scratch and --from exclude each other: pick one")


def train(
    stage: Annotated[int, typer.Option("--stage", help="1: real/fake. 2: attribution (same as `saga attribute`).")] = 1,
    cache: Cache = Path("cache"),
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Run folder (default runs/stage1; stage 2: runs/<level>).")] = None,
    level: Annotated[Optional[str], typer.Option(
        "--level", help="Stage 2 only: the attribution level (default: the --config's, else GEN-L).")] = None,
    from_run: Annotated[Optional[Path], typer.Option("--from", help="Stage 2 only: the stage-1 run.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Videos per batch.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW, warm-up + cosine).")] = None,
    frames: Frames = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (data order, init, augmentation).")] = None,
    patience: Patience = None,
    inputs: Annotated[Optional[str], typer.Option(
        help="What θ sees: both (frame features + temporal tokens) | content | temporal.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | auto.")] = None,
    config: ConfigFile = None,
    resume: Resume = None,
) -> None:
    """Stage 1: train the video transformer on real/fake from the cache."""
    if stage == 2:
        attribute(level=level, cache=cache, from_run=from_run, out=out, epochs=epochs,
                  batch_size=batch_size, lr=lr, frames=frames, seed=seed, patience=patience, inputs=inputs, device=device, config=config,
                  resume=resume)
        return
    if stage != 1:
        raise SagaError(f"--stage must be 1 or 2, got {stage}")
    if level is not None or from_run is not None:  # a forgotten --stage 2 would train stage 1 silently
        raise SagaError(f"{'--level' if level is not None else '--from'} applies to --stage 2 only; "
                        "add --stage 2 (or use `saga attribute`)")
    from saga.train.configs import Stage1Config

    cfg = training_options(Stage1Config, config, epochs=epochs, batch_size=batch_size, lr=lr, frames=frames,
                           seed=seed, patience=patience, device=device, inputs=inputs)
    require_cache(cache)  # the checks above and this one before the imports below: they take seconds (torch)
    from saga.runs import RunFolder, accept_changed_cache
    from saga.train.stage1 import train_stage1

    out = out or Path("runs/stage1")
    RunFolder(out).check_resume(resume is not False)
    writable_folder(out)
    with one_line_warnings(), accept_changed_cache(resume is True), _training_progress("train") as progress:
        run = train_stage1(cache, out, cfg, progress=progress)
    if is_main():  # under torchrun rank 0 reports
        console.print(f"stage-1 run: {run}", markup=False)


def attribute(
    level: Annotated[Optional[str], typer.Option(
        "--level", help="BIN-L | TASK-L | SD-L | TEAM-L | GEN-L (default: the --config's level, else GEN-L).")] = None,
    cache: Cache = Path("cache"),
    from_run: Annotated[Optional[Path], typer.Option(
        "--from", help=f"Stage-1 run (default: {DEFAULT_STAGE1} when it holds a finished run).")] = None,
    scratch: Annotated[bool, typer.Option("--scratch", help="Train from scratch: the 1-stage baseline.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<level>).")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Labelled fraction of each class (0.005 = 0.5 %).")] = None,
    floor: Annotated[Optional[int], typer.Option(help="At least this many labelled videos per class.")] = None,
    per_generator: Annotated[Optional[int], typer.Option(
        help="At least this many labelled videos of every generator of a class, so none is left unlabelled "
             "(default 0: off).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="ce | ce+hnm | ce+semihnm.")] = None,
    lam: Annotated[Optional[float], typer.Option(help="λ in λ·CE + (1−λ)·L_HNM.")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Triplet margin α (> 0 with ce+semihnm).")] = None,
    mine_every: Annotated[Optional[str], typer.Option(help="'epoch' or N steps between FAISS refreshes.")] = None,
    readout: Annotated[Optional[str], typer.Option(
        help="Final classifier: lda (labelled videos' discriminant, default) | head (as trained) | auto (validation picks).")
    ] = None,
    self_training: Annotated[Optional[bool], typer.Option(
        "--self-training/--no-self-training",
        help="Refit the discriminant with the unlabelled train videos it is surest of (default on).")] = None,
    sources: Annotated[Optional[bool], typer.Option(
        "--sources/--no-sources",
        help="Train on the labelled videos' generators and read each class out as their mixture (default on).")
    ] = None,
    train_videos: Annotated[Optional[str], typer.Option(
        help="all (default): the unlabelled train videos and their real/fake labels help (basis, readout, "
             "self-training) | labelled: the labelled videos alone, from scratch (the paper's 1-stage setting).")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    min_steps: Annotated[Optional[int], typer.Option(help="At least this many optimiser steps (default 300).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Videos per batch.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    frames: Frames = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (labelled subset, init, data order).")] = None,
    patience: Patience = None,
    inputs: Annotated[Optional[str], typer.Option(
        help="From scratch only (a stage-1 θ keeps its own): both | content | temporal.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda | auto.")] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate/--no-calibrate", help="Fit the temperature on the val split when done (calibration.json).")
    ] = True,
    config: ConfigFile = None,
    resume: Resume = None,
) -> None:
    """Stage 2: adapt to an attribution level from a small labelled fraction (CE + FAISS-mined HNM)."""
    from saga.train.configs import LABELLED_FROM_STAGE1, AttributeConfig
    from saga.train.options import ignored_options, refuse_unused_options

    every: Any = int(mine_every) if mine_every and mine_every.isdigit() else mine_every
    flags = dict(level=level, fraction=fraction, floor=floor, per_generator=per_generator, loss=loss, lam=lam,
                 margin=margin, mine_every=every, readout=readout, self_training=self_training, sources=sources,
                 train_videos=train_videos, epochs=epochs, min_steps=min_steps, batch_size=batch_size, lr=lr, frames=frames, seed=seed,
                 patience=patience, inputs=inputs, device=device)
    cfg = training_options(AttributeConfig, config, **flags)  # --level left out: the TOML's, else GEN-L
    given = given_options(config, **flags)  # a model option written in the TOML is checked even at its default
    refuse_unused_options(cfg.loss, given)
    _refuse_scratch_with_from(from_run, scratch)
    if cfg.train_videos == "labelled" and from_run is not None:
        raise SagaError(LABELLED_FROM_STAGE1)
    require_cache(cache)  # the checks above and this one before the imports below: they take seconds (torch)
    from saga.runs import RunFolder, accept_changed_cache
    from saga.train.attribute import train_attribution

    out = out or Path("runs") / cfg.level.lower()
    RunFolder(out).check_resume(resume is not False)
    from_run = _stage1_run(from_run, scratch or cfg.train_videos == "labelled")
    writable_folder(out)
    with one_line_warnings(), accept_changed_cache(resume is True), _training_progress("attribute") as progress:
        cfg = replace(cfg, **ignored_options(AttributeConfig, given))  # mine_k: warned, its default kept
        run = train_attribution(cache, out, cfg, from_run=from_run, progress=progress, given=set(given))
    if is_main():  # under torchrun rank 0 reports
        if calibrate:
            _calibrate_after_training(run, cache, cfg.device)
        console.print(f"{cfg.level} run: {run}", markup=False)


def _calibrate_after_training(run: Path, cache: Path, device: str | None) -> None:
    """Temperature on the val split, so `predict` gives calibrated probabilities from the start.

    The discriminant readout's logits are far too sharp (fitted T 13-35 on the benchmark,
    docs/beyond.md); a run without val videos of its classes just stays uncalibrated.
    """
    from saga.openworld.api import calibrate_run

    try:
        with one_line_warnings():  # a tiny val split warns
            cal, _ = calibrate_run(run, cache, device=cli_device(device or "cpu"), report_split=None)
    except SagaError as exc:
        err.print(f"[yellow]not calibrated:[/] {escape(str(exc))}", soft_wrap=True)
        return
    console.print(f"calibrated on {cal.n} val videos: T = {cal.temperature:.3f} (calibration.json)", soft_wrap=True)


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    cache: Cache = Path("cache"),
    split: Annotated[Split, typer.Option(help="train | val | test.")] = Split.test,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "cpu",
    format: Annotated[OutputFormat, typer.Option("--format", help="text | json.")] = OutputFormat.text,
    probe: Annotated[bool, typer.Option("--probe/--no-probe",
                                        help="Fit the linear probe on the run's labelled videos beside it.")] = True,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder for metrics.json and metrics-<split>.json, or metrics-<split>@<cache>-<id>.json "
                      "on a cache other than the run's training cache (default: the run folder).")] = None,
) -> None:
    """Accuracy, macro accuracy, per-class accuracy (95 % intervals), confusion, AUC at BIN-L, the probe beside."""
    from saga.explain.metrics import compute_evaluation, mark_openworld, metrics_table, save_evaluation, warn_split

    if out is not None:  # asked for explicitly: fail before the work, not after
        writable_folder(out)
    from saga.openworld.api import evaluate_openworld

    with one_line_warnings():
        metrics = compute_evaluation(run, cache, split=split, device=cli_device(device), probe=probe, warn=False)
        try:
            openworld = evaluate_openworld(run, cache, split, cli_device(device))  # {} without calibrate/openset
        except SagaError as exc:  # e.g. a calibration.json of other weights: the metrics above still count
            err.print(f"[yellow]open-world figures skipped:[/] {escape(str(exc))}", soft_wrap=True)
            openworld = {}
        if openworld:
            metrics["openworld"] = openworld
            mark_openworld(metrics)  # fitted on these val videos: optimistic too
        warn_split(run, metrics)  # one line for the accuracy and the open-world figures
    if format == "json":
        print_json(metrics)
    else:
        console.print(metrics_table(metrics))
        _print_openworld(metrics)
    try:
        written = save_evaluation(metrics, out or run)
    except WriteError as exc:  # e.g. someone else's read-only run: the results above are not lost
        err.print(f"[red]not saved:[/] {escape(str(exc))}; the results are printed above; rerun with "
                  "--out FOLDER to save them elsewhere", soft_wrap=True)
        raise typer.Exit(1) from None
    if format != "json":
        console.print(f"written to {written}", markup=False)


def probe(
    cache: Cache = Path("cache"),
    out: Annotated[Optional[Path], typer.Option("--out", help="Probe folder (default runs/probe-<level>, "
                                                "lower-cased; with --like RUN: runs/probe-<RUN's folder name>).")] = None,
    level: Annotated[Optional[str], typer.Option("--level", help="BIN-L | TASK-L | SD-L | TEAM-L | GEN-L "
                                                 "(default GEN-L).")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Labelled fraction per class (default 0.005; "
                                                      "1.0 = all train labels).")] = None,
    floor: Annotated[Optional[int], typer.Option(help="At least this many labelled videos per class "
                                                 "(default 2).")] = None,
    per_generator: Annotated[Optional[int], typer.Option(
        help="At least this many labelled videos of every generator of a class (default 0: off).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the labelled subset (default 0).")] = None,
    like: Annotated[Optional[Path], typer.Option("--like", help="Use this run's level, labelled videos and "
                                                 "frames (its labelled.json; all train labels for stage 1).")] = None,
    frames: Frames = None,
    split: Annotated[Split, typer.Option(help="Split to report metrics on.")] = Split.test,
    sources: Annotated[Optional[bool], typer.Option(
        "--sources/--no-sources", help="Fit on the labelled videos' generators and sum each class's, as stage 2 "
        "trains (default: as the --like run was trained; on without --like).")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", help="text | json.")] = OutputFormat.text,
) -> None:
    """Linear baseline: logistic regression on pooled, shift-invariant feature statistics, same labelled videos."""
    from saga.taxonomy import check_level

    if level is not None:
        check_level(level)
    name = like.resolve().name if like is not None else (level or "GEN-L").lower()
    out = out or Path("runs") / f"probe-{name}"
    writable_folder(out)
    from saga.cache.fraction import counts_line  # after the option checks: these import torch (seconds)
    from saga.explain.metrics import metrics_table
    from saga.explain.probe import choice_text
    from saga.explain.probe_runs import run_probe
    from saga.fileio import read_json
    from saga.runs import LABELLED

    with one_line_warnings():  # run_probe checks the cache's seals, as train and evaluate do
        metrics = run_probe(cache, out, level=level, fraction=fraction, floor=floor, seed=seed, like=like,
                            frames=frames, split=split, sources=sources, per_generator=per_generator)
    if format == "json":
        print_json(metrics)
    else:
        err.print(counts_line(metrics["level"], read_json(out / LABELLED)["classes"]), soft_wrap=True, markup=False)
        console.print(metrics_table(metrics))
        console.print(f"linear probe on {metrics['n_train']} labelled videos ({choice_text(metrics['selection'])}); "
                      f"written to {out}", markup=False)


def _print_openworld(metrics: dict[str, Any]) -> None:
    """The open-world figures under the table, their split marked when it fitted them (`openworld_label`)."""
    from saga.explain.metrics import openworld_label

    ow, label = metrics.get("openworld") or {}, openworld_label(metrics)
    where = f" on {escape(label)}" if label != str(metrics.get("split")) else ""
    if "calibration" in ow:
        c = ow["calibration"]
        console.print(f"calibration (T = {c['temperature']:.3f}): ECE {c['before']['ece']:.3f} -> "
                      f"{c['after']['ece']:.3f}{where}", soft_wrap=True)
    if "openset" in ow and ow["openset"]["false_unknown"] is not None:
        o = ow["openset"]
        console.print(f"open set{where} ({o['kind']}, threshold at the val {o['percentile']:g}th percentile): "
                      f"{100 * o['false_unknown']:.1f}% of {o['n_known']} known videos called unknown", soft_wrap=True)
        if o.get("auroc") is not None:  # the split holds videos of classes the run never saw
            console.print(f"unseen sources ({o['n_unknown']} videos): AUROC {o['auroc']:.3f}, OSCR {o['oscr']:.3f}, "
                          f"{100 * o['unknown_detected']:.1f}% called unknown", soft_wrap=True)


def register(app: typer.Typer) -> None:
    for command in (train, attribute, evaluate, probe):
        app.command()(command)
