"""Manifest records: one per video, committed only after its feature bytes are written.

Each cache part has an append-only `manifest.jsonl`. A line is the commit point
of a record: a run killed mid-line leaves an unterminated last line, which
readers ignore (its video is simply extracted again on resume).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import google_crc32c
import numpy as np

from saga.errors import SagaError, brief
from saga.fileio import LineLog, append_lines, loads

# the files `saga extract` reads as videos (saga.pipeline.inputs lists folders by them; copy names need them)
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}

OK = "ok"
FAILED = "failed"
SPLITS = ("train", "val", "test")


@dataclass(slots=True)
class VideoRecord:
    """What the cache knows about one video (paths are relative to the videos folder).

    slots: ~2x smaller per object than a __dict__, which counts when a caller materialises
    a whole split (the cache itself keeps columns, `saga.cache.index`)."""

    path: str
    size: int
    mtime_ns: int
    status: str
    generator: str
    labels: dict[str, str | None]
    split: str
    error: str = ""
    part: str = ""
    row: int = -1
    windows: int = 0
    checksum: str = ""
    crc32c: str = ""  # crc32c of the same bytes (8 hex digits): the fast check of every read; blake2b decides
    n_frames: int = 0
    fps: float = 0.0
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def fingerprint(self) -> tuple[int, int]:
        return (self.size, self.mtime_ns)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VideoRecord":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def file_fingerprint(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file; (-1, 0) for what cannot be stat'ed (a broken link)."""
    try:
        st = path.stat()
    except OSError:
        return (-1, 0)
    return (st.st_size, st.st_mtime_ns)


def feature_crc32c(*arrays: Any) -> str:
    """crc32c of the raw bytes of a record's arrays: ~10x cheaper than blake2b, checked on every read."""
    crc = 0
    for arr in arrays:
        crc = google_crc32c.extend(crc, np.ascontiguousarray(arr).tobytes())
    return f"{crc:08x}"


def feature_checksum(*arrays: Any) -> str:
    """blake2b of the raw bytes of a record's features, mask and timestamps."""
    h = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        h.update(memoryview(arr).cast("B") if hasattr(arr, "__array__") else bytes(arr))
    return h.hexdigest()


class ManifestWriter:
    """Appends records durably (fsync per commit; see `saga.fileio.LineLog`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._log = LineLog(path)

    def commit(self, records: Iterable[VideoRecord]) -> None:
        self._log.append("".join(r.to_json() + "\n" for r in records))

    def close(self) -> None:
        self._log.close()


def _complete_lines(path: Path) -> list[tuple[int, str]]:
    """Numbered lines that end with a newline; an unterminated last line was never committed."""
    if not path.exists():
        return []
    out = []
    for n, raw in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SagaError(f"{path}:{n}: not UTF-8 (a damaged line); run `saga cache verify`") from None
        if line.strip():
            out.append((n, line))
    return out


def manifest_digest(path: Path) -> tuple[int, str]:
    """(complete lines, blake2b of their bytes): what a part's seal records at commit."""
    if not path.exists():
        return (0, "")
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = sum(1 for line in data[:end].split(b"\n") if line.strip())
    return lines, hashlib.blake2b(data[:end], digest_size=16).hexdigest()


def read_split_plan(path: Path) -> dict[str, tuple[str, str]]:
    """path -> (generator, split) of every video ever planned into this cache."""
    plan = {}
    for number, line in _complete_lines(path):
        try:
            entry = loads(line)
            plan[entry["path"]] = (entry["generator"], entry["split"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SagaError(f"{path}:{number}: corrupt split plan line; restore it or start a new cache") from None
    return plan


def append_split_plan(path: Path, entries: dict[str, tuple[str, str]]) -> None:
    """Record new assignments before any of their videos is extracted, so a resumed run keeps them."""
    if entries:
        append_lines(path, "".join(json.dumps({"path": p, "generator": g, "split": s}) + "\n"
                                   for p, (g, s) in entries.items()))


PRUNED_PLAN = "splits-pruned.jsonl"  # in the cache folder: the split of every video `saga cache prune` dropped


def read_pruned_plan(path: Path) -> dict[str, dict[str, Any]]:
    """path -> {"split", "size", "mtime_ns"} of each pruned video (a later line of a path wins); {} without the file.

    Why it is kept: a pruned video that comes back (a folder moved away and back, a deleted file restored)
    must return to its old split; drawn anew, a video tested on could move into train for every later run."""
    pruned = {}
    for number, line in _complete_lines(path):
        try:
            entry = pruned_entry(loads(line))
            pruned[entry.pop("path")] = entry
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise SagaError(f"{path}:{number}: corrupt line (the splits of pruned videos); restore it, or delete "
                            "the line: a video it names would then get a new split if it comes back") from None
    return pruned


def pruned_entry(entry: Any) -> dict[str, Any]:
    """One `splits-pruned.jsonl` line as {path, split, size, mtime_ns} (size -1 and mtime 0 when absent: a video
    without a record); ValueError (or KeyError, TypeError, AttributeError) for one that is not. `saga cache import`
    checks an export's lines with it, so that an import never writes a file the next prune or extract refuses."""
    size, mtime = entry.get("size", -1), entry.get("mtime_ns", 0)
    if entry["split"] not in SPLITS or type(entry["path"]) is not str or not (
            _int_in_range("size", size) and _int_in_range("mtime_ns", mtime)):
        raise ValueError(f"pruned split line {json.dumps(entry)[:80]}")
    return {"path": entry["path"], "split": entry["split"], "size": size, "mtime_ns": mtime}


def append_pruned_plan(path: Path, entries: dict[str, tuple[str, int, int]]) -> None:
    """Record (split, size, mtime_ns) of each video about to be pruned, before anything of it is dropped."""
    if entries:
        append_lines(path, "".join(json.dumps({"path": p, "split": s, "size": size, "mtime_ns": mtime}) + "\n"
                                   for p, (s, size, mtime) in entries.items()))


# JSON type of every manifest field (bool is not an int here); the first seven are required.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str,), "size": (int,), "mtime_ns": (int,), "status": (str,), "generator": (str,), "labels": (dict,),
    "split": (str,), "error": (str,), "part": (str,), "row": (int,), "windows": (int,), "checksum": (str,),
    "crc32c": (str,), "n_frames": (int,), "fps": (int, float), "backend": (str,), "extra": (dict,),
}
REQUIRED = ("path", "size", "mtime_ns", "status", "generator", "labels", "split")
_REQUIRED_SET = frozenset(REQUIRED)
_HEX = {"checksum": re.compile("[0-9a-f]{32}"), "crc32c": re.compile("[0-9a-f]{8}")}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object"}
_I64 = (-(1 << 63), (1 << 63) - 1)
# Inclusive bounds of the integer fields: what their int64 columns (saga.cache.columns) hold and their meaning
# allows. size -1 and row -1: a file that could not be stat'ed, a failed video without rows; an mtime before
# 1970 is negative; row + windows (a record's last row) stays within int64.
INT_RANGES: dict[str, tuple[int, int]] = {"size": (-1, _I64[1]), "mtime_ns": _I64, "row": (-1, (1 << 62) - 1),
                                          "windows": (0, (1 << 31) - 1), "n_frames": (0, _I64[1])}


def check_fields(data: Any) -> None:
    """Raise ValueError (one line) when a parsed manifest line has a missing field, a wrong type or range.

    Why: a manifest edited by hand or by another tool must fail at parse time with the line
    named, not later as a TypeError deep inside training. (`type(v) in types`: exact JSON types,
    so a bool is not an int; this runs once per line at 10M lines, hence no isinstance chains.)"""
    if type(data) is not dict:
        raise ValueError("not a JSON object")
    if not _REQUIRED_SET <= data.keys():
        raise ValueError(f"field {next(k for k in REQUIRED if k not in data)!r} is missing")
    for key, value in data.items():
        types = FIELD_TYPES.get(key)
        if types is not None and type(value) not in types:
            raise ValueError(f"field {key!r} must be {_JSON_NAMES[types[-1]]}, got {type(value).__name__} "
                             f"{json.dumps(value)[:40]}")
    _check_ranges(data)
    for key, pattern in _HEX.items():
        text = data.get(key)
        if text and not pattern.fullmatch(text):
            raise ValueError(f"{key} {text[:40]!r} is not {pattern.pattern[-3:-1]} hex digits")
    for level, value in data["labels"].items():
        if value is not None and type(value) is not str:
            raise ValueError(f"labels[{level!r}] must be a string or null, got {json.dumps(value)[:40]}")


def _check_ranges(data: dict[str, Any]) -> None:
    """ValueError for a number outside its field's range (fields of the right type only).

    Why: a hand-edited or crafted 10**30 passed the type check and then broke every later read of the
    cache with an OverflowError traceback where records become int64 columns; a NaN or negative fps
    is no frame rate."""
    for key, (low, high) in INT_RANGES.items():
        value = data.get(key)
        if value is not None and not low <= value <= high:
            raise ValueError(f"field {key!r} must be an integer from {low} to {high}, got {brief(value)}")
    fps = data.get("fps")
    if fps is not None and not 0 <= fps <= sys.float_info.max:  # NaN, inf, < 0 and ints past any float fail
        raise ValueError(f"field 'fps' must be a finite number >= 0, got {brief(fps)}")


def _int_in_range(key: str, value: Any) -> bool:
    """Whether `value` is a JSON integer (not a bool) within INT_RANGES[key]."""
    low, high = INT_RANGES[key]
    return type(value) is int and low <= value <= high


def parse_line(line: str | bytes, path: Path, number: int) -> dict[str, Any]:
    """One committed manifest line as a checked dict; a SagaError naming the file and line otherwise."""
    try:
        data = loads(line)
        check_fields(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise SagaError(f"{path}:{number}: corrupt manifest line ({exc}); restore the file, or delete its part, "
                        "rerun `saga extract` to extract its videos again, then `saga cache verify --seal`") from None
    return data


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, bytes) of each committed non-blank line, read line by line (flat memory at 10M lines)."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if raw.endswith(b"\n") and raw.strip():
                yield number, raw


def read_manifest(path: Path) -> list[VideoRecord]:
    """Committed records of one part; an unterminated last line (a killed write) is ignored."""
    return [VideoRecord.from_dict(parse_line(line, path, number)) for number, line in iter_lines(path)]


def assign_splits(
    items: list[tuple[str, str]],
    existing: dict[str, dict[str, int]],
    fractions: dict[str, float],
    seed: int,
) -> dict[str, str]:
    """Seeded, stratified split for new videos, keeping every existing assignment.

    `items` are (path, class) pairs; within each class new videos go, one after the other, to the
    split that lags its target share the most, so a class keeps its proportions however many
    extraction passes it took to build. The order is a seeded hash order inside each top-level
    folder, the folders one after another (their order seeded too): any run of consecutive videos
    gets its share within about one video per split, so every source folder of a class that pools
    several (GenVideo's real class: Kinetics-400, Youku-mPLUG, MSR-VTT) gets its own 70/10/20 instead
    of whatever a draw from the pooled class gave it. A class in one folder is ordered as before.
    A tie with a split still empty goes to it (`_lagging`), so a class of two videos gets one train and one test video.
    """
    by_class: dict[str, list[str]] = {}
    for path, cls in items:
        by_class.setdefault(cls, []).append(path)
    out: dict[str, str] = {}
    for cls, paths in sorted(by_class.items()):
        counts = {s: existing.get(cls, {}).get(s, 0) for s in SPLITS}
        total = sum(counts.values())
        for path in sorted(paths, key=lambda p: _split_order(seed, p)):
            total += 1
            split = _lagging(counts, fractions, total)
            counts[split] += 1
            out[path] = split
    return out


TIE = 1e-6  # deficits this close are equal: 0.7 * 2 - 1 is 0.3999999999999999, 0.2 * 2 is 0.4


def _lagging(counts: dict[str, int], fractions: dict[str, float], total: int) -> str:
    """The split furthest below its share of `total` videos; a split still empty that ties it (within TIE) first.

    Why: the deficits were compared as raw floats with a train-first tie-break, so float noise decided the
    ties: a class of two videos at 70/10/20 got train + test, at 68/14/18 (or 75/0/25) two train videos and none
    to test it on; a class of five at 70/10/20 got no val video. Only a tie with an empty split changes hands,
    so a class's draw differs from the old one in its first few videos only (benchmarks stay comparable)."""
    deficit = {s: fractions.get(s, 0.0) * total - counts[s] for s in SPLITS}
    top = max(deficit.values())
    empty = [s for s in SPLITS if counts[s] == 0 and fractions.get(s, 0.0) > 0 and deficit[s] >= top - TIE]
    return empty[0] if empty else max(SPLITS, key=lambda s: (deficit[s], -SPLITS.index(s)))


def _split_order(seed: int, path: str) -> tuple[str, str, str]:
    """Videos grouped by their top-level folder (the folders in a seeded order), seeded hash order inside."""
    top = path.split("/", 1)[0] if "/" in path else ""
    return seeded_hash(seed, top), top, seeded_hash(seed, path)


AUGMENTED = ".augment/"  # `saga extract --augment`: copies are recorded as AUGMENTED<perturbation>/<copy_name(source)>
ESCAPED = "%"  # first folder of the copy names that cannot keep their source's path (see copy_name)


_OTHER_SUFFIXES = VIDEO_SUFFIXES - {".mp4"}


def copy_name(rel: str) -> str:
    """A re-encoded copy's path (relative to its videos folder), one per source: always an .mp4 (H.264 in MP4).

    The source's path when it ends in .mp4, `path.mp4` when it has another video suffix (`x.avi` ->
    `x.avi.mp4`): the names an older saga gave, so its copies still map back (`source_key`). A path those
    two rules would give twice or outside the folder goes under `%/`, its path percent-escaped
    (`x.avi.mp4` beside `x.avi`, `..` or absolute paths, no video suffix), and so does a path with a folder
    that another source's copy could be (`x.avi.mp4/y.mp4`, the copy of `x.avi` being a file of that name);
    inside `%/` a folder never ends in `.mp4` (its dot escaped): copies never collide, even as folder
    against file, and a copy can never overwrite an original.
    """
    parts = [p for p in Path(rel).parts if p != "."]
    name = "/".join(parts)
    plain = bool(parts) and parts[0] not in ("/", ESCAPED) and ".." not in parts and not any(
        _copy_like(p) for p in parts[:-1])
    if plain and name.lower().endswith(".mp4") and Path(name[:-4]).suffix.lower() not in _OTHER_SUFFIXES:
        return name
    if plain and Path(name).suffix.lower() in _OTHER_SUFFIXES:
        return name + ".mp4"
    return "/".join([ESCAPED, *(_escape_folder(_escape(p)) for p in parts[:-1]), *map(_escape, parts[-1:])]) + ".mp4"


def _copy_like(part: str) -> bool:
    """Whether a path component could be the copy file of another source (`x.avi.mp4`: the copy of `x.avi`)."""
    return part.lower().endswith(".mp4") and Path(part[:-4]).suffix.lower() in _OTHER_SUFFIXES


def _escape(part: str) -> str:
    """One path component inside `%/`: `%` doubled as %25 first, so the root and `..` stay unambiguous."""
    return {"/": "%2F", "..": "%2E%2E"}.get(part, part.replace("%", "%25"))


def _escape_folder(escaped: str) -> str:
    """An escaped folder inside `%/` with its last dot as %2E when it ends in .mp4: every file there does."""
    return escaped[:-4] + "%2E" + escaped[-3:] if escaped.lower().endswith(".mp4") else escaped


def source_key(path: str) -> tuple[bool, str]:
    """(is an augmented copy, the key its source and all its copies share): the copy name, one per source."""
    if path.startswith(AUGMENTED):
        return True, path[len(AUGMENTED):].split("/", 1)[-1]
    return False, copy_name(path)


def seeded_hash(seed: int, text: str) -> str:
    # surrogateescape: a file name that is not valid UTF-8 (os.walk gives it lone surrogates) still hashes
    return hashlib.blake2b(f"{seed}:{text}".encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
