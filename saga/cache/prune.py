"""`saga cache prune`: drop the records (and split-plan lines) of videos gone from the videos folder.

Why: a video renamed or moved after extraction is extracted again under its new path while the old
path's record stays: the same features twice, perhaps in two splits (leakage) or under two
generators. Records live in sealed manifests, so a prune rewrites each affected part's manifest
and its seal in an order that a kill or a full disk cannot break:

1. the kept lines are written beside the manifest as `manifest.jsonl.pruned` (atomically);
2. their seal is appended to `parts.jsonl`: the commit point (a part's last log line wins);
3. `seal.json` is rewritten; 4. the file replaces `manifest.jsonl`.

Killed before 2: a stray `.pruned` file, removed by the next prune or extraction (nothing was
pruned). Killed after 2: `finish_prunes`, run by the next prune, `saga extract` and
`saga cache verify --seal`, completes 3 and 4 (`saga cache verify` warns until then). Every record of
a dropped path goes, in every part, so an older part's record of it cannot come back. Its split does not go:
it is kept in `splits-pruned.jsonl` first (`remember_splits`), so a video that comes back returns to its split.

Each part records the videos folder of the pass that wrote it (seal.VIDEOS); a cache holding parts
of another folder, or of a pass that recorded none (an older saga), is refused unless --all-folders.
The parts of `saga extract --augment` record the cache folder itself and are not another folder: an
augmented copy is dropped with its source, whatever folder its part recorded.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saga.cache.columns import SIDECAR
from saga.cache.manifest import (AUGMENTED, PRUNED_PLAN, append_pruned_plan, iter_lines, manifest_digest, parse_line,
                                 read_split_plan, source_key)
from saga.cache.seal import MANIFEST, SEAL, log_entries, log_part, part_videos, seal_leftover_parts, seal_of
from saga.errors import SagaError, shown
from saga.fileio import write_bytes, write_json, write_text
from saga.locks import lock_folder, unlock_folder

if TYPE_CHECKING:
    from saga.cache.store import FeatureCache

PRUNED = MANIFEST + ".pruned"  # a part's pruned manifest, staged until its seal is logged
BUSY = "another saga extract is writing this cache right now; rerun `saga cache prune` once it has finished"


class Gone(list[str]):
    """The paths prune drops, sorted, and (`unseen`) how many it kept unjudged because a folder on their way
    cannot be searched: "every record's video is there" would be false about those."""

    unseen: int = 0


def gone_paths(cache: "FeatureCache", videos: Path, all_folders: bool = False) -> Gone:
    """Record and split-plan paths whose video is no longer at `videos`/path, sorted; an augmented
    copy goes with its source. A folder holding none of the cache's videos is refused (a wrong --videos),
    and so is a cache with passes over other folders, or that recorded none (`check_folders`)."""
    if not videos.is_dir():
        raise SagaError(f"{videos}: not a folder; pass the videos folder the cache was extracted from as --videos")
    paths = set(cache.records(refresh=True).paths()) | set(read_split_plan(cache.split_plan_path))
    originals = [p for p in paths if not p.startswith(AUGMENTED)]
    present, unseen = _present(videos, originals)
    if originals and not present:
        raise SagaError(f"{videos}: none of the cache's {len(originals)} videos is in this folder; pass the "
                        "videos folder the cache was extracted from as --videos")
    if not all_folders:
        check_folders(cache, videos)
    kept = {source_key(p)[1] for p in present}
    gone = Gone(sorted(p for p in paths if p not in present and (
        not p.startswith(AUGMENTED) or source_key(p)[1] not in kept)))
    gone.unseen = unseen
    return gone


def _present(videos: Path, originals: list[str]) -> tuple[set[str], int]:
    """The paths still under `videos` (a broken link is still a (failed) input), and those that cannot be looked
    at: a folder on the way that cannot be searched hides its videos, so they are kept, with one warning per
    folder (they used to be called gone, and dropped); and how many of them could not be looked at."""
    present: set[str] = set()
    blocked: dict[tuple[str, str], list[str]] = {}
    for rel in originals:
        try:
            os.lstat(videos / rel)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            blocked.setdefault(_blocking_folder(videos, rel, exc), []).append(rel)
        present.add(rel)
    for (folder, reason), hidden in sorted(blocked.items()):
        warnings.warn(f"{shown(folder)}: cannot look inside this folder ({reason}); the records of its "
                      f"{len(hidden)} video(s) are kept: make it readable (chmod a+rx {shown(folder)}) and rerun "
                      "to prune them", stacklevel=3)
    return present, sum(map(len, blocked.values()))


def _blocking_folder(videos: Path, rel: str, exc: OSError) -> tuple[str, str]:
    """(folder, reason) of the first folder on the way to `videos`/rel whose entries cannot be looked at."""
    folder = videos
    for part in Path(rel).parts:
        try:
            os.lstat(folder / part)
        except OSError as inner:
            return str(folder), inner.strerror or str(inner)
        folder = folder / part
    return str(videos / rel), exc.strerror or str(exc)  # it can be looked at now


def check_folders(cache: "FeatureCache", videos: Path) -> None:
    """Refuse when a part was written by a pass over another videos folder, or by one that recorded no
    folder: its videos are not under `videos`, so prune would drop every record of them.

    A part of `saga extract --augment` records the cache itself (its copies live in CACHE/.augment/): it is
    not another folder, as its records go with their sources (`source_key`), never judged by their own path."""
    mine = str(videos.resolve())
    folders = {part_videos(cache.root, name) for name in cache.part_names()} - {mine, str(cache.root.resolve())}
    if folders:
        named = sorted(f for f in folders if f is not None) + ["a pass that recorded no folder"] * (None in folders)
        raise SagaError(f"{cache.root}: this cache also holds records extracted from {', '.join(named)}, not from "
                        f"{mine}; prune would drop them all as gone; pass --all-folders to judge every record "
                        f"against --videos anyway")


def prune_gone(cache: "FeatureCache", videos: Path, all_folders: bool = False) -> Gone:
    """Drop every record and split-plan line of the videos gone from `videos`; the dropped paths.

    Under the cache's lock: an extraction writing the cache meanwhile is refused, and refuses this."""
    lock_folder(cache.root, BUSY)
    try:
        seal_leftover_parts(cache)  # also completes an interrupted prune: every part is sealed below
        drop = gone_paths(cache, videos, all_folders)
        if drop:
            wanted = set(drop)
            remember_splits(cache, wanted)
            for name in cache.part_names():
                prune_part(cache.root, name, wanted)
            _prune_plan(cache.split_plan_path, wanted)
            cache.records(refresh=True)
    finally:
        unlock_folder(cache.root)
    return drop


def remember_splits(cache: "FeatureCache", drop: set[str]) -> None:
    """Append the split (and the file's size and mtime) of every original video about to be dropped to
    `PRUNED_PLAN`, before anything is dropped: `saga extract` puts a video that comes back, at its path or
    renamed (same name, size and mtime), into that split again. An augmented copy follows its source."""
    plan = read_split_plan(cache.split_plan_path)
    records = cache.records()
    found = {path: records[i] for i, path in enumerate(records.paths()) if path in drop}
    entries = {}
    for path in sorted(p for p in drop if not p.startswith(AUGMENTED)):
        rec = found.get(path)
        split = plan[path][1] if path in plan else rec.split if rec is not None else None
        if split is not None:
            entries[path] = (split, *(rec.fingerprint() if rec is not None else (-1, 0)))
    append_pruned_plan(cache.root / PRUNED_PLAN, entries)


def prune_part(root: Path, name: str, drop: set[str]) -> int:
    """Rewrite one sealed part's manifest without the records of `drop` (steps 1-4 above); lines dropped."""
    folder = root / "parts" / name
    manifest = folder / MANIFEST
    kept, dropped = [], 0
    for number, raw in iter_lines(manifest):
        if parse_line(raw, manifest, number)["path"] in drop:
            dropped += 1
        else:
            kept.append(raw)
    if dropped:
        write_bytes(folder / PRUNED, b"".join(kept))
        rows = (log_entries(root).get(name) or {}).get("rows", 0)
        entry = seal_of(name, folder / PRUNED, rows)  # the kept videos: a later deletion of the part retires by them
        log_part(root, entry)
        _finish(folder, entry)
    return dropped


def _finish(folder: Path, entry: dict[str, Any]) -> None:
    """Steps 3 and 4: the stale sidecar goes and the new seal.json is written before the logged manifest
    replaces the old one, so no kill leaves the new manifest beside the old seal."""
    (folder / SIDECAR).unlink(missing_ok=True)
    write_json(folder / SEAL, entry)
    os.replace(folder / PRUNED, folder / MANIFEST)


def interrupted(root: Path, name: str, entry: dict[str, Any] | None) -> bool:
    """Whether a part holds a pruned manifest whose seal was logged but that is not in place yet."""
    staged = root / "parts" / name / PRUNED
    return entry is not None and staged.is_file() and (
        manifest_digest(staged) == (entry.get("lines"), entry.get("digest")))


def finish_prunes(root: Path) -> None:
    """Complete the prunes that were logged (steps 3-4); remove the staged files of those that were not."""
    parts = root / "parts"
    staged = sorted(p for p in parts.glob(f"*/{PRUNED}") if not p.parent.name.startswith(".")) if (
        parts.is_dir()) else []
    logged = log_entries(root) if staged else {}
    for path in staged:
        name = path.parent.name
        if interrupted(root, name, logged.get(name)):
            _finish(path.parent, logged[name])
        else:
            path.unlink()


def _prune_plan(plan_path: Path, drop: set[str]) -> None:
    """The split plan without the dropped paths (rewritten atomically; a returning video gets its split back from
    `PRUNED_PLAN`, written before)."""
    plan = read_split_plan(plan_path)
    if drop & plan.keys():
        write_text(plan_path, "".join(_plan_line(p, g, s) for p, (g, s) in plan.items() if p not in drop))


def _plan_line(path: str, generator: str, split: str) -> str:
    return json.dumps({"path": path, "generator": generator, "split": split}) + "\n"
