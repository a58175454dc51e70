"""Re-encoded copies that know what they were made from, so a changed source never keeps an old copy.

A copy used to be reused whenever its file existed: a source replaced by another video of the same
name (or another `--videos` folder, or another cache sharing an `--out`) kept the old video's copy,
and its features stood in for the new one. Now each copy folder holds `copies.jsonl`, one line per
copy written: the copy's name, its source's record path and (size, mtime_ns) fingerprint, the
perturbation and the encoder settings. A copy is reused only while its file exists and its last
line matches the source's current record exactly; otherwise it is re-encoded (deterministic, so an
unchanged source gives the same bytes). A line is appended after its copy is written (fsync'ed,
`saga.fileio.append_lines`): a run killed in between leaves a copy without a line, which the next
run redoes. Copies made by an older saga have no line and are redone once: nothing else tells
whether their source changed since. Before any copy is made the source file is checked against the
cache's record of it; a file the cache did not extract (another size: changed, replaced, or another
folder) is not copied: its clean features and its copy's would be of different videos. A file of the
recorded size whose mtime alone differs is taken as the same (a dataset copied without its times),
in one warning line; a same-size replacement is the one change this cannot tell.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from saga.cache.manifest import VideoRecord, copy_name, file_fingerprint
from saga.errors import SagaError
from saga.fileio import append_lines, loads, make_dir, sweep_temps
from saga.progress import ProgressEvent, ProgressFn
from saga.robustness.perturb import X264, Perturbation, apply

RECORD = "copies.jsonl"  # in each copy folder; copy names end in .mp4, so no copy can take this name
VERSION = 2  # of what `apply` writes from a source; bump it when that changes (2: odd sides cropped, not resized)
Say = Callable[[str], None]
__all__ = ["entry_for", "make_copies", "read_record", "sweep_temps", "unchanged"]


def read_record(folder: Path) -> dict[str, dict[str, Any]]:
    """Copy name -> its last entry; a damaged or foreign line is skipped (its copy is redone, which is safe)."""
    path = folder / RECORD
    if not path.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for raw in path.read_bytes().split(b"\n")[:-1]:  # an unterminated last line was never committed
        try:
            entry = loads(raw)
            out[entry["copy"]] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return out


def entry_for(p: Perturbation, rec: VideoRecord) -> dict[str, Any]:
    """What a copy of `rec` under `p` is made from: the source's path and fingerprint, and the perturbation."""
    return {"copy": copy_name(rec.path), "source": rec.path, "size": rec.size, "mtime_ns": rec.mtime_ns,
            "perturbation": asdict(p), "x264": X264, "version": VERSION}


def unchanged(records: list[VideoRecord], videos: Path, cache: Path, say: Say) -> list[VideoRecord]:
    """The records whose file under `videos` is still the one the cache extracted (same size and mtime).

    A file of the recorded size but another mtime is taken as that file, with one line for all of them:
    a dataset copied without its times (`cp -r`, another disk or machine) must not need a re-extraction.
    Another size (or a missing file) is skipped: one line (how many, and the first); none left is a
    SagaError naming the fix."""
    same: list[VideoRecord] = []
    changed: list[str] = []
    retimed = 0
    for r in records:
        size, mtime = file_fingerprint(videos / r.path)
        if size == r.size and size >= 0:
            same.append(r)
            retimed += mtime != r.mtime_ns
        else:
            changed.append(r.path)
    if not same:
        raise SagaError(f"{videos}: none of the {len(records)} videos is the file the cache {cache} extracted "
                        f"(e.g. {changed[0]}: missing, or another size); pass the --videos it was "
                        "extracted from, or rerun `saga extract` into it to take the current files")
    if retimed:
        say(f"{retimed} of {len(records)} videos in {videos} have the recorded size but another modification "
            f"time (copied without their times?); taken as the files the cache {cache} extracted")
    if changed:
        say(f"{len(changed)} of {len(records)} videos in {videos} skipped: not the files the cache {cache} "
            f"extracted (e.g. {changed[0]}: missing, or another size); rerun `saga extract` into that "
            "cache to take the current files")
    return same


def make_copies(p: Perturbation, records: list[VideoRecord], videos: Path, folder: Path, say: Say,
                progress: ProgressFn | None = None) -> Iterator[tuple[str, VideoRecord]]:
    """(copy name, source record) of each copy under `folder` that matches its source, re-encoding the rest.

    A source that cannot be re-encoded costs one line and is left out. `progress` gets a "videos" event at the
    start and after each source (a reused copy counts as done; data: failed): re-encoding a set takes hours."""
    make_dir(folder)
    sweep_temps(folder)
    known = read_record(folder)
    report = progress or (lambda event: None)
    failed = 0
    report(ProgressEvent("videos", 0, len(records), data={"failed": failed}))
    for done, rec in enumerate(records, 1):
        entry = entry_for(p, rec)
        reused = known.get(entry["copy"]) == entry and (folder / entry["copy"]).is_file()
        made = reused or _copy(p, rec, videos, folder, entry, say)
        failed += not made
        report(ProgressEvent("videos", done, len(records), data={"failed": failed}))
        if made:
            yield entry["copy"], rec


def _copy(p: Perturbation, rec: VideoRecord, videos: Path, folder: Path, entry: dict[str, Any], say: Say) -> bool:
    """Re-encode one source and record it; False (one line said) when it cannot be."""
    dst = folder / entry["copy"]
    try:
        dst.unlink(missing_ok=True)  # a stale copy never outlives a failed redo
        apply(p, videos / rec.path, dst)
    except (SagaError, OSError) as exc:
        say(f"{p.name}: skipped {rec.path}: {exc}")
        return False
    append_lines(folder / RECORD, json.dumps(entry, sort_keys=True) + "\n")
    return True
