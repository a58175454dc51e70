"""What a pass of `saga extract` learns from the cache's earlier passes, beyond "new or changed".

- Moved videos: records are keyed by path, so a video renamed or moved after extraction (a
  generator folder renamed to another spelling, a mislabelled video moved to its right folder) is
  a new video to the pass while its old record stays. The new path keeps the old record's split
  (a fresh draw could put the same video in train and in test) and the pass warns once, naming the
  fix (`saga cache prune`). It is still extracted again: a record cannot point at another part's
  rows, and a move to another generator needs a record with the new labels anyway.
- Pruned videos that come back: `saga cache prune` keeps each dropped video's split (`splits-pruned.jsonl`);
  a video found again at that path, or renamed while it was gone (same name, size and mtime), returns to it
  (a fresh draw could move a video that earlier runs were tested on into train).
- This pass's failures: the failed records of the videos found in this --videos; those of files
  deleted or moved away since are only counted (they made every later pass exit 1).
- Decoder-crash suspects: the videos a dead decoding worker may have been decoding
  (`saga.pipeline.reader.DecoderCrash`), kept in `CACHE/.decode-suspects-r<rank>.json` for the
  next pass to decode alone first. The pass reads every rank's file once, under the cache lock; when it
  ends without a crash, the lock's holder removes the files it read, whatever world size wrote them
  (each rank removed only its own: a pass with fewer ranks left the others' files for ever).
"""

from __future__ import annotations

import os
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from saga.cache.manifest import AUGMENTED, PRUNED_PLAN, VideoRecord, file_fingerprint, read_pruned_plan
from saga.errors import SagaError
from saga.fileio import read_json, write_json
from saga.pipeline.inputs import VideoInput

SUSPECTS = ".decode-suspects-r{rank}.json"


def moved_videos(existing: Mapping[str, VideoRecord], items: list[VideoInput], videos: Path
                 ) -> dict[str, VideoRecord]:
    """New path -> the ok record of a file no longer at its own path with the same name, size and mtime
    (`mv` and `cp -p` keep both)."""
    listed = {item.rel for item in items}
    gone: dict[tuple[str, int, int], VideoRecord] = {}
    for path, rec in existing.items():
        if rec.ok and rec.size >= 0 and path not in listed and not path.startswith(AUGMENTED):
            gone.setdefault((posixpath.basename(path), rec.size, rec.mtime_ns), rec)
    found = {}
    for item in items if gone else []:
        if item.rel in existing or item.rel.startswith(AUGMENTED):
            continue
        rec = gone.get((posixpath.basename(item.rel), *file_fingerprint(item.absolute(videos))))
        if rec is not None and not os.path.lexists(videos / rec.path):
            found[item.rel] = rec
    return found


def returning_videos(cache: Path, items: list[VideoInput], videos: Path, known: Iterable[str]) -> dict[str, str]:
    """Path -> the split a video not in `known` (planned, or moved) had when `saga cache prune` dropped it: the entry
    of its own path, else of a pruned video with its name, size and mtime (renamed while it was gone)."""
    pruned = read_pruned_plan(cache / PRUNED_PLAN)
    if not pruned:
        return {}
    by_file: dict[tuple[str, int, int], str] = {}
    for path, entry in pruned.items():
        if entry["size"] >= 0:
            by_file.setdefault((posixpath.basename(path), entry["size"], entry["mtime_ns"]), entry["split"])
    skip, back = set(known), {}
    for item in items:
        if item.rel in skip or item.rel.startswith(AUGMENTED):
            continue
        entry = pruned.get(item.rel)
        split = entry["split"] if entry is not None else by_file.get(
            (posixpath.basename(item.rel), *file_fingerprint(item.absolute(videos)))) if by_file else None
        if split is not None:
            back[item.rel] = split
    return back


def warn_moved(moved: Mapping[str, VideoRecord], cache: Path, videos: Path) -> None:
    if moved:
        new, rec = next(iter(moved.items()))
        warnings.warn(f"{cache}: {len(moved)} video(s) were renamed or moved since they were extracted (e.g. "
                      f"{rec.path} -> {new}: same name, size and time); each keeps its split, but its old record "
                      f"stays beside the new one (the same video twice); drop the old records with `saga cache "
                      f"prune {cache} --videos {videos} --yes`", stacklevel=3)


def pass_failures(records: Iterable[VideoRecord], items: list[VideoInput]) -> tuple[list[tuple[str, str]], int]:
    """(path, error) of the failed records of this pass's videos, and how many failed records of other
    videos the cache holds (files deleted or moved away; augmented copies are not counted)."""
    listed = {item.rel for item in items}
    augmenting = any(rel.startswith(AUGMENTED) for rel in listed)
    mine, others = [], 0
    for rec in records:
        if rec.ok:
            continue
        if rec.path in listed:
            mine.append((rec.path, rec.error))
        elif not augmenting and not rec.path.startswith(AUGMENTED):
            others += 1
    return mine, others


@dataclass(frozen=True)
class Suspects:
    """The suspects files a pass read: their videos, and each file's (name, inode, mtime) so that the pass
    removes only the files it read (a file rewritten since is another writer's: it stays)."""

    paths: frozenset[str] = frozenset()
    files: tuple[tuple[str, int, int], ...] = ()


def read_suspects(cache: Path) -> Suspects:
    """Every rank's suspects, whatever the world size that wrote them; a damaged file names none (a hint, not
    a record) and goes with the others."""
    found: set[str] = set()
    files = []
    for path in sorted(cache.glob(SUSPECTS.format(rank="*"))):
        try:
            stat = path.stat()
        except OSError:
            continue
        files.append((path.name, stat.st_ino, stat.st_mtime_ns))
        try:
            paths = read_json(path).get("paths")
        except (SagaError, OSError):
            continue
        if isinstance(paths, list):
            found.update(p for p in paths if isinstance(p, str))
    return Suspects(frozenset(found), tuple(files))


def keep_suspects(cache: Path, rank: int, crashed: list[str], earlier: Suspects) -> None:
    """After this rank's decoder crash: its file (written atomically) names the crash's suspects and every
    earlier one (one another rank had still to decode alone when the job stopped stays a suspect)."""
    write_json(cache / SUSPECTS.format(rank=rank), {
        "paths": sorted(set(crashed) | earlier.paths),
        "why": "a decoding worker process died while decoding one of these; the next pass decodes each alone first"})


def clear_suspects(cache: Path, read: Suspects) -> None:
    """After a pass without a crash (every rank's part closed, the cache lock still held): the suspects it had to
    extract were each decoded alone and recorded (the others have records, or are not in its --videos), so the
    files it read go, whichever rank of whichever world size wrote them."""
    for name, inode, mtime in read.files:
        path = cache / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if (stat.st_ino, stat.st_mtime_ns) == (inode, mtime):
            path.unlink(missing_ok=True)
