"""Beyond closed-set attribution (issue #13): `saga calibrate`, `saga enroll`, `saga openset fit | logo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from saga.commands.common import (Split, cli_device, console, given_options, load_options, one_line_warnings,
                                  training_options)
from saga.errors import SagaError

CacheOpt = Annotated[Optional[Path], typer.Option("--cache", help="Feature cache (default: the run's own).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Write here instead of the run folder.")]
Device = Annotated[str, typer.Option(help="cpu | cuda.")]

openset_app = typer.Typer(help="Open-set attribution: reject videos from unknown sources.", no_args_is_help=True)


def calibrate(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    cache: CacheOpt = None,
    out: OutOpt = None,
    split: Annotated[Split, typer.Option(help="Split to report ECE / reliability on (the fit uses val).")] = Split.test,
    device: Device = "cpu",
) -> None:
    """Temperature scaling fitted on the val split: calibration.json, ECE before/after, reliability diagram."""
    from saga.openworld.api import calibrate_run
    from saga.runs.files import CALIBRATION, reliability_file

    with one_line_warnings():  # the plot too: matplotlib may warn
        cal, diagrams = calibrate_run(run, cache, out, cli_device(device), split, write_report=True)
    folder = out or run
    console.print(f"T = {cal.temperature:.4f} (val n={cal.n}: NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f}, "
                  f"ECE {100 * cal.ece_before:.2f} % -> {100 * cal.ece_after:.2f} %)")
    if diagrams:
        b, a = diagrams["before"], diagrams["after"]
        console.print(f"{split} (n={b['n']}): ECE {100 * b['ece']:.2f} % -> {100 * a['ece']:.2f} % (15 bins)")
        console.print(f"written: {folder / CALIBRATION}, {folder / reliability_file(split)}, "
                      f"{folder / reliability_file(split, '.png')}", markup=False)


def enroll(
    run: Annotated[Path, typer.Argument(help="Run folder (stage 2).")],
    generator: Annotated[str, typer.Option("--generator", help="Name of the new source.")],
    cache: Annotated[Path, typer.Option("--cache", help="Cache holding the new videos, extracted with the run's encoder.")],
    videos: Annotated[Optional[str], typer.Option(
        "--videos", help="The videos' folder as recorded in the cache (a path prefix); default: "
                         "the cache's videos labelled --generator.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="T2V | I2V (enables TASK-L).")] = None,
    sd: Annotated[Optional[str], typer.Option("--sd", help="SD backbone, or 'none' (enables SD-L).")] = None,
    team: Annotated[Optional[str], typer.Option("--team", help="Team (enables TEAM-L).")] = None,
    split: Annotated[Optional[Split], typer.Option(help="Only this split of the cache.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most this many videos (a seeded draw).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit draw.")] = 0,
    run_cache: Annotated[Optional[Path], typer.Option(
        "--run-cache", help="The run's own cache (its classes' prototypes and τ, computed at the first "
                            "enrollment; default: recorded in the run).")] = None,
    out: OutOpt = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace the source of this name if it is already enrolled (default: refused).")] = False,
    device: Device = "cpu",
) -> None:
    """Add a source from 3–20 videos without retraining: a prototype in the run's embedding."""
    from saga.openworld.api import enroll_run
    from saga.runs.files import ENROLLED

    with one_line_warnings():
        enr = enroll_run(run, generator, cache, videos, task, sd, team, run_cache, split, limit, seed, out,
                         cli_device(device), replace)
    entry = next(e for e in enr.entries if e.name == generator)
    labels = ", ".join(f"{k} {v}" for k, v in entry.labels.items() if v)
    console.print(escape(f"enrolled {generator} from {len(entry.paths)} videos ({labels}); "
                         f"enrolled now: {', '.join(enr.names)}; written: {(out or run) / ENROLLED}"))


@openset_app.command("fit")
def openset_fit(
    run: Annotated[Path, typer.Argument(help="Run folder (stage 2).")],
    cache: CacheOpt = None,
    kind: Annotated[str, typer.Option(help="knn (default: best at coarse levels) | prototype.")] = "knn",
    k: Annotated[int, typer.Option(help="Neighbours of the knn score.", min=1)] = 5,
    percentile: Annotated[float, typer.Option(help="Threshold: this percentile of known val scores.")] = 95.0,
    out: OutOpt = None,
    device: Device = "cpu",
) -> None:
    """Fit the unknown-source detector of a run (prototypes, k-NN bank, threshold on val): openset.json."""
    from saga.openworld.api import fit_openset_run
    from saga.runs.files import OPENSET

    with one_line_warnings():
        det = fit_openset_run(run, cache, out, kind, k, percentile, cli_device(device))
    asked = f"; {det.k_requested} asked, the labelled pool has only {det.k} videos" if det.k_requested else ""
    neighbours = f" (k = {det.k}{asked})" if det.kind == "knn" else ""
    console.print(f"{det.kind} score{neighbours}, threshold {det.threshold:.4f} = {det.percentile:g}th percentile of "
                  f"{det.n_val} known val videos ({100 * det.val_false_unknown:.1f} % of them above it: "
                  f"false unknowns); written: {(out or run) / OPENSET}", markup=False)


@openset_app.command("logo")
def openset_logo(
    cache: Annotated[Path, typer.Option("--cache", help="Feature cache (e.g. `saga synth` + `saga extract`).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs and results.json / results.md.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML of training options.")] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated generators (default: all fake ones).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    retrain: Annotated[int, typer.Option(
        help="Also train each fold with only this many videos of the held-out generator and compare "
             "enrollment with it (0: no).")] = 0,
    two_stage: Annotated[bool, typer.Option(
        "--two-stage", help="Each fold adapts its own stage-1 run (OUT/stage1/<g>, trained without the held-out "
                            "generator) instead of training from scratch.")] = False,
) -> None:
    """Leave-one-generator-out: train without each generator in turn (no video of it is read), then AUROC / OSCR
    per level."""
    from saga.openworld.api import sealed_cache
    from saga.openworld.enroll import MAX_VIDEOS, MIN_VIDEOS
    from saga.openworld.logo import evaluate_folds, generators, to_markdown, train_folds
    from saga.runs.files import LOGO_RESULTS, LOGO_RESULTS_MD
    from saga.train.attribute import AttributeConfig
    from saga.train.options import ignored_options

    if retrain and not MIN_VIDEOS <= retrain <= MAX_VIDEOS:  # checked before any fold trains
        raise SagaError(f"--retrain {retrain}: enrollment takes {MIN_VIDEOS}-{MAX_VIDEOS} videos of the held-out "
                        "generator; pass a number in that range, or 0 for none")
    with one_line_warnings():
        c = sealed_cache(cache)  # as train and evaluate: an edited or lost sealed part, refused before any fold
    gens = [g.strip() for g in only.split(",") if g.strip()] if only else generators(c)
    opts = load_options(config, loss="ce")
    training_options(AttributeConfig, config, loss="ce")  # a bad value in the TOML: one line naming it, now
    with one_line_warnings():
        opts.update(ignored_options(AttributeConfig, given_options(config)))  # mine_k: warned, its default kept
        train_folds(cache, out, opts, gens, retrain or 5, seed, retrain=retrain > 0, log=_plain, two_stage=two_stage)
        res = evaluate_folds(c, out, out, gens, retrain or 5, seed, log=_plain)
    _plain(to_markdown(res))
    _plain(f"written: {out / LOGO_RESULTS}, {out / LOGO_RESULTS_MD}; an HTML report with the ROC curves: "
           f"saga report RUN... --openworld {out}")


def _plain(line: str) -> None:
    """Generator names and paths as written: never read as rich markup (`[x]` vanished, `[/b]` raised)."""
    console.print(line, markup=False)


def register(app: typer.Typer) -> None:
    app.command()(calibrate)
    app.command()(enroll)
    app.add_typer(openset_app, name="openset")
