"""`saga cache info | verify | prune | export | import`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from saga.commands.common import OutputFormat, console, err, one_line_warnings, print_json, status_progress
from saga.errors import shown
from saga.progress import ProgressFn
from saga.taxonomy import LEVELS

if TYPE_CHECKING:
    from saga.cache.store import FeatureCache

app = typer.Typer(help="Inspect, verify, prune and share a feature cache.", no_args_is_help=True)


@app.command()
def info(
    cache: Annotated[Path, typer.Argument(help="Cache folder.")],
    format: Annotated[OutputFormat, typer.Option("--format", help="text | json")] = OutputFormat.text,
) -> None:
    """Counts per split and class at every level, failures, provenance and the parts' seals."""
    from saga.cache.sealcheck import seal_errors, seal_state, seal_warnings, unsealed_warning
    from saga.cache.store import FeatureCache
    from saga.cache.summary import cache_summary

    store = FeatureCache.open(cache)
    summary = cache_summary(store)
    state = seal_state(store)  # cheap: the index's manifest digests against the seals (no record is hashed)
    for line in seal_errors(store, state) + seal_warnings(store, state) + [unsealed_warning(store, state) or ""]:
        if line:
            _warn(line)
    if format == "json":
        print_json({**summary, "seal": state.as_dict()})
        return
    prov = summary["provenance"]
    console.print(f"[bold]{escape(str(cache))}[/] (id {summary['cache_id'][:12]}): {summary['total']} videos, "
                  f"{summary['ok']} ok, {summary['failed']} failed; splits {summary['splits']}")
    console.print(f"encoder {prov.get('encoder')} / {prov.get('pretrained')} (weights {str(prov.get('weights_fingerprint'))[:12]}), "
                  f"D={prov.get('dim')}, sampling {prov.get('sampling')}, created {prov.get('created')}", markup=False)
    console.print(f"seals: {state.text()}", markup=False)
    for level in LEVELS:
        table = Table(title=level, title_justify="left")
        for col in ("class", "train", "val", "test"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for cls, counts in summary["classes"][level].items():
            table.add_row(escape(cls), *(str(counts.get(s, 0)) for s in ("train", "val", "test")))
        console.print(table)
    if summary["without_videos"]:
        n, total = len(summary["without_videos"]), len(store.taxonomy.classes("GEN-L"))
        console.print(f"[yellow]no videos[/] of {n} of the taxonomy's {total} GEN-L classes (none extracted, or all "
                      f"failed): {escape(', '.join(summary['without_videos']))}", soft_wrap=True)
    for video in summary["videos"]:
        if video["status"] != "ok":
            console.print(f"[red]failed[/] {escape(video['path'])}: {escape(video['error'])}")


@app.command()
def verify(
    cache: Annotated[Path, typer.Argument(help="Cache folder.")],
    seal: Annotated[bool, typer.Option(
        "--seal", help="When every check passes, seal the parts that an older saga or a killed extraction left "
                       "unsealed, so that later edits to them are detected.")] = False,
) -> None:
    """Recompute every record's checksum; name the corrupted ones (exit 1 if any)."""
    from saga.cache.store import FeatureCache
    from saga.locks import lock_folder, unlock_folder

    store = FeatureCache.open(cache)
    if seal:  # a running extraction's part is unsealed because it is still being written: never seal it
        lock_folder(cache, "another saga extract is writing this cache right now; rerun `saga cache verify --seal` "
                           "once it has finished (it seals its own part)")
    try:
        if seal:
            _retire(store)
        with status_progress("cache verify") as steps:  # every feature is read: minutes to an hour
            n = _check(store, steps)
        if seal:
            _seal(store)
    finally:
        if seal:
            unlock_folder(cache)
    console.print(f"{cache}: all {n} records match their checksums", markup=False)


def _check(store: FeatureCache, progress: ProgressFn | None = None) -> int:
    """Print structural warnings and errors and corrupt records; exit 1 on any error. The ok records' count.
    `progress` gets the count of records checked (a status line)."""
    errors, warnings = store.check_structure()
    for line in warnings:
        err.print(f"[yellow]warning:[/] {escape(line)}")
    for line in errors:
        err.print(f"[red]corrupt[/] {escape(line)}")
    if errors and not store.readable():  # no record can be listed: the errors above say why and where
        err.print(f"{len(errors)} structural error(s); restore the damaged file(s) or re-extract")
        raise typer.Exit(1)
    bad = store.verify(progress)
    for rec, why in bad:
        err.print(f"[red]corrupt[/] {escape(rec.path)} (part {rec.part}, row {rec.row}): {escape(why)}")
    n = len(store.ok_records())
    if bad or errors:
        err.print(f"{len(bad)} of {n} records are corrupt, {len(errors)} structural error(s); re-extract them "
                  "(delete the part, rerun `saga extract`, then `saga cache verify --seal`; or use a new cache)")
        raise typer.Exit(1)
    return n


def _retire(store: FeatureCache) -> None:
    """Retire the deleted parts whose videos were all re-extracted (else `_check` says how many are left)."""
    from saga.cache.seal import retire_missing

    for name in retire_missing(store):
        console.print(f"retired part {name}: it was deleted and every video it held has a record from a later pass",
                      markup=False)


def _seal(store: FeatureCache) -> None:
    from saga.cache.store import seal_leftover_parts

    rewritten: list[str] = []
    sealed = seal_leftover_parts(store, rewritten)  # also logs parts sealed but never logged
    if rewritten:
        console.print(f"rewrote the missing or stale {SEAL_FILE} of {len(rewritten)} part(s) from parts.jsonl: "
                      f"{', '.join(rewritten)}", markup=False)
    if sealed:
        console.print(f"sealed {len(sealed)} part(s): {', '.join(sealed)}", markup=False)
    elif not rewritten:
        console.print("every part was already sealed", markup=False)


@app.command()
def prune(
    cache: Annotated[Path, typer.Argument(help="Cache folder.")],
    videos: Annotated[Path, typer.Option("--videos", help="The videos folder the cache was extracted from.")],
    yes: Annotated[bool, typer.Option("--yes", help="Drop the records; without it, only list them.")] = False,
    all_folders: Annotated[bool, typer.Option("--all-folders", help="Judge every record against --videos, also "
                                              "those of passes over other folders (or that recorded none).")] = False,
) -> None:
    """Drop the records of videos no longer in --videos (renamed, moved or deleted): a dry run without --yes."""
    from saga.cache.prune import gone_paths, prune_gone
    from saga.cache.store import FeatureCache

    store = FeatureCache.open(cache)
    with one_line_warnings():  # a folder that cannot be searched: its videos are kept, one line each
        drop = prune_gone(store, videos, all_folders) if yes else gone_paths(store, videos, all_folders)
    if not drop:
        console.print(f"{cache}: nothing to prune: " + (
            f"every record's video is in {videos}" if not drop.unseen else
            f"every video it could look at is in {videos}; {drop.unseen} video(s) under a folder it cannot look "
            "into (above) were kept unjudged"),
            markup=False)
        return
    for path in drop[:PRUNE_SHOWN]:
        console.print(f"{'dropped' if yes else 'would drop'} {shown(path)}", markup=False)
    if len(drop) > PRUNE_SHOWN:
        console.print(f"... and {len(drop) - PRUNE_SHOWN} more", markup=False)
    if yes:
        console.print(f"{cache}: dropped the records of {len(drop)} video(s) gone from {videos}; their splits are kept "
                      "(splits-pruned.jsonl): a video that comes back returns to its split", markup=False)
    else:
        console.print(f"{cache}: {len(drop)} video(s) are gone from {videos}; rerun with --yes to drop their "
                      "records", markup=False)


PRUNE_SHOWN = 20
SEAL_FILE = "seal.json"


@app.command("export")
def export(
    cache: Annotated[Path, typer.Argument(help="Cache folder.")],
    h5: Annotated[Path, typer.Option("--h5", help="HDF5 file to write (outside the cache).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file that is not a saga export "
                                        "(an earlier export is replaced without it).")] = False,
) -> None:
    """Write the whole cache into one HDF5 file for sharing."""
    from saga.cache.export import export_h5
    from saga.cache.store import FeatureCache

    n = export_h5(FeatureCache.open(cache), h5, force=force, warn=_warn)
    console.print(f"wrote {h5} ({n} videos with features)", markup=False)


@app.command("import")
def import_(
    h5: Annotated[Path, typer.Argument(help="HDF5 file from `saga cache export`.")],
    out: Annotated[Path, typer.Option("--out", help="New cache folder.")],
) -> None:
    """Rebuild a cache from an HDF5 export (same provenance and cache id)."""
    from saga.cache.export import import_h5

    cache = import_h5(h5, out, warn=_warn)
    console.print(f"imported {len(cache.records())} records into {out}", markup=False)


def _warn(line: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(line)}")
