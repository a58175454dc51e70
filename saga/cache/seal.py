"""Sealing a cache's parts: the part's `seal.json` and its line in the cache's `parts.jsonl`.

Why both: seal.json lets a part's manifest be checked on its own; the line in the root's log is
what notices a part that was deleted. The log line is written first, so a kill or a full disk in
between never leaves a part whose loss would go unnoticed. A part that an older saga sealed in
the other order (seal.json, then a kill before the log line) gets its line from its seal.json at
the next `saga extract` or `saga cache verify --seal`; a logged part whose seal.json is missing, or
older than its log line while its manifest matches that line (a killed prune), gets it rewritten.

A seal also lists the paths of the part's records ("videos"): the part's manifest goes with the part,
and this is what tells, after its deletion, which videos it held. A part that was deleted (as `saga cache
verify` advises for a corrupt one) is retired by `saga cache verify --seal` once every video it held (and
still planned) has a record in a later part (a pass after it: part names are never reused, so a later name
is a later pass): a line {"part", "lines", "digest", "rows", "retired": true}. An older record of a video
does not count: it may be the one the deleted part replaced (stale features, an old label). A line of an
older saga lists no videos: then every planned video must have a later record. The retired line keeps
the keys an older saga reads, so an older saga still reports the part missing instead of failing on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saga.cache.manifest import iter_lines, manifest_digest, parse_line, read_manifest, read_split_plan
from saga.fileio import append_lines, loads, write_json

if TYPE_CHECKING:
    from saga.cache.store import FeatureCache

MANIFEST = "manifest.jsonl"
SEAL = "seal.json"  # in a part: its manifest's line count and digest, written when the part is closed
PARTS_LOG = "parts.jsonl"  # at the root: one line per sealed part (so a deleted part is noticed); the last one wins
VIDEOS = "videos.json"  # in a part: {"videos": the resolved videos folder of the pass that wrote it} (for prune)


def log_entries(root: Path) -> dict[str, dict[str, Any]]:
    """The last parts.jsonl entry of every part not retired; damaged lines are skipped (`cache verify` names them)."""
    logged = {str(entry["part"]): entry for entry in _log_lines(root)}
    return {name: entry for name, entry in logged.items() if not retired(entry)}


def _log_lines(root: Path) -> list[dict[str, Any]]:
    """The parts.jsonl entries in order, damaged lines skipped."""
    entries = []
    log = root / PARTS_LOG
    if log.is_file():
        for line in log.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:
            try:
                entry = loads(line)
                entry["part"]
            except (ValueError, KeyError, TypeError):
                continue
            entries.append(entry)
    return entries


def retired(entry: Any) -> bool:
    """Whether a parts.jsonl entry retires its part (deleted, its videos re-extracted)."""
    return isinstance(entry, dict) and entry.get("retired") is True


def listed_videos(entry: dict[str, Any]) -> list[str] | None:
    """The video paths a seal lists (the part's records); None for a seal of an older saga, which lists none."""
    videos = entry.get("videos")
    if isinstance(videos, list) and all(isinstance(p, str) for p in videos):
        return videos
    return None


def held_videos(cache: "FeatureCache", entry: dict[str, Any]) -> list[str] | None:
    """The videos a deleted part held that a later pass must record again before it is retired: those its seal
    lists, but pruned ones (out of the split plan); for a seal of an older saga, every planned video. None
    when neither tells (an older saga's seal and no split plan)."""
    videos = listed_videos(entry)
    plan = read_split_plan(cache.split_plan_path) if cache.split_plan_path.is_file() else None
    if videos is None:
        return None if plan is None else sorted(plan)
    return videos if plan is None else [p for p in videos if p in plan]


def unrecorded(cache: "FeatureCache", name: str, entry: dict[str, Any]) -> list[str] | None:
    """The `held_videos` of a deleted part with no record in a part after `name`, in path order (None when
    unknown). A record in an earlier part does not count: it may be what the deleted part superseded (a
    changed file, a new label)."""
    wanted = held_videos(cache, entry)
    if wanted is None:
        return None
    winners = {r.path: r.part for r in cache.records()}
    return sorted(p for p in wanted if winners.get(p, "") <= name)


def retire_missing(cache: "FeatureCache") -> list[str]:
    """Retire the logged parts that are gone once every video they held has a record in a later part
    (re-extracted by a later pass); the names retired. Left alone otherwise: `saga cache verify` keeps
    reporting them. The retired line drops the video list: nothing reads it again."""
    logged = log_entries(cache.root)
    missing = sorted(set(logged) - set(cache.part_names()))
    if not missing or not cache.readable():  # `verify` names a corrupt manifest
        return []
    retire = [name for name in missing if unrecorded(cache, name, logged[name]) == []]
    for name in retire:
        kept = {key: value for key, value in logged[name].items() if key != "videos"}
        log_part(cache.root, {**kept, "retired": True})
    return retire


def all_names(root: Path) -> set[str]:
    """Every part name parts.jsonl ever logged, retired ones included (a new pass must not reuse one)."""
    return {str(entry["part"]) for entry in _log_lines(root)}


def seal_entry(root: Path, name: str) -> dict[str, Any] | None:
    """A part's seal.json when it is a valid seal of that part; None when missing or damaged."""
    try:
        entry = loads((root / "parts" / name / SEAL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    valid = (isinstance(entry, dict) and entry.get("part") == name and type(entry.get("lines")) is int
             and isinstance(entry.get("digest"), str))
    return entry if valid else None


def record_videos(folder: Path, videos: Path) -> None:
    """Note the videos folder a part's pass read: `saga cache prune` judges a record only against it."""
    write_json(folder / VIDEOS, {"videos": str(videos.resolve())})


def part_videos(root: Path, name: str) -> str | None:
    """The videos folder a part's pass recorded; None for a part written without one (an older saga, an import)."""
    try:
        folder = loads((root / "parts" / name / VIDEOS).read_text(encoding="utf-8")).get("videos")
    except (OSError, ValueError, AttributeError):
        return None
    return folder if isinstance(folder, str) else None


def log_part(root: Path, entry: dict[str, Any]) -> None:
    append_lines(root / PARTS_LOG, json.dumps(entry, sort_keys=True) + "\n")


def seal_of(name: str, manifest: Path, rows: int) -> dict[str, Any]:
    """A part's seal: its manifest's line count and digest, and its records' paths (which outlive the part)."""
    lines, digest = manifest_digest(manifest)
    return {"part": name, "lines": lines, "digest": digest, "rows": rows, "videos": _paths(manifest)}


def _paths(manifest: Path) -> list[str]:
    """The paths of a manifest's committed records, sorted, each once (failed records too)."""
    return sorted({parse_line(raw, manifest, number)["path"] for number, raw in iter_lines(manifest)})


def seal_part(root: Path, name: str, rows: int) -> None:
    """Seal a part with its manifest as it is now."""
    commit_seal(root, seal_of(name, root / "parts" / name / MANIFEST, rows))


def commit_seal(root: Path, entry: dict[str, Any]) -> None:
    """A seal goes to the cache's parts log first (the commit point), then to the part's seal.json."""
    log_part(root, entry)
    write_json(root / "parts" / str(entry["part"]) / SEAL, entry)


def _listing(root: Path, name: str, entry: dict[str, Any]) -> dict[str, Any] | None:
    """An older saga's seal with the part's video list added, when its manifest is still the one it sealed
    (an edited one keeps its seal for `saga cache verify` to report); None when there is nothing to add."""
    manifest = root / "parts" / name / MANIFEST
    if listed_videos(entry) is not None or manifest_digest(manifest) != (entry.get("lines"), entry.get("digest")):
        return None
    return {**entry, "videos": _paths(manifest)}


def unsealed_parts(cache: "FeatureCache") -> list[str]:
    """Parts with no seal (no seal.json, no line in parts.jsonl): file existence only, cheap for any cache."""
    logged = log_entries(cache.root)
    return [name for name in cache.part_names()
            if name not in logged and not (cache.root / "parts" / name / SEAL).exists()]


def seal_leftover_parts(cache: "FeatureCache", rewritten: list[str] | None = None) -> list[str]:
    """Seal the parts of passes that were killed (a new pass writes a new part, so their committed
    lines are final), and log the ones sealed but never logged: without a seal, edits to a part go
    unnoticed and every training run warns; without a log line, so does its loss. The names of logged
    parts whose seal.json was rewritten from their log line go to `rewritten` (for the report). A seal
    of an older saga gets the part's video list, so that the part's deletion can be retired exactly.

    A damaged seal.json is left alone for `saga cache verify` to report (resealing would hide an edit)."""
    from saga.cache.prune import finish_prunes  # prune builds on this module

    finish_prunes(cache.root)
    logged = log_entries(cache.root)
    done = []
    for name in cache.part_names():
        folder = cache.root / "parts" / name
        if name in logged:
            if _stale_seal(cache.root, name, logged[name]):  # killed between the log line and seal.json
                write_json(folder / SEAL, logged[name])
                if rewritten is not None:
                    rewritten.append(name)
            listed = _listing(cache.root, name, logged[name])
            if listed is not None:
                commit_seal(cache.root, listed)
            continue
        entry = seal_entry(cache.root, name)
        if entry is not None:
            listed = _listing(cache.root, name, entry)
            if listed is None:
                log_part(cache.root, entry)
            else:
                commit_seal(cache.root, listed)
        elif not (folder / SEAL).exists():
            records = read_manifest(folder / MANIFEST)
            seal_part(cache.root, name, max((r.row + r.windows for r in records if r.ok), default=0))
        else:
            continue
        done.append(name)
    return done


def _stale_seal(root: Path, name: str, entry: dict[str, Any]) -> bool:
    """Whether a logged part's seal.json is missing, or differs from its last log line while its
    manifest matches that line (a prune killed before step 4); an edited manifest keeps its seal."""
    folder = root / "parts" / name
    if not (folder / SEAL).exists():
        return True
    if seal_entry(root, name) == entry:
        return False
    return manifest_digest(folder / MANIFEST) == (entry.get("lines"), entry.get("digest"))
