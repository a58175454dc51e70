"""The `saga synth` output folder across runs: a stamp of what made it, and only this run's clips in it.

A folder may be reused (`--out` again, with another seed or fewer videos) or a run killed mid-way.
Clips are written atomically and rendered deterministically, so a clip on disk is right exactly
when the stamp (synth.json) names the config that is running now: `prepare` makes that so before
any clip is written, and `generate` then renders only the clips that are missing (a resume).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from saga.errors import SagaError
from saga.fileio import TEMP_SUFFIX, loads, write_json

STAMP = "synth.json"  # the config (less the worker count) and taxonomy that made the folder's clips
OUTPUTS = ("labels.csv", "taxonomy.toml")  # written last, by a run that finished
FORMAT = 1  # bump when the same config would render other bytes
_STAMP_TMP = re.compile(rf"\.{re.escape(STAMP)}{TEMP_SUFFIX}")  # fileio's temporary name of a stamp being written
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a class folder name as video_path makes it


def check_ours(out_dir: Path) -> None:
    """Refuse a non-empty folder without a stamp: nothing shows saga synth wrote its files, so
    `prepare` must not remove any (a mistyped --out would lose the user's labels.csv and clips)."""
    if not out_dir.is_dir() or (out_dir / STAMP).exists():
        return
    with os.scandir(out_dir) as entries:  # the lock, or a stamp a killed run was writing, are saga's
        if any(e.name != ".lock" and not _STAMP_TMP.fullmatch(e.name) for e in entries):
            raise SagaError(f"{out_dir}: not a `saga synth` folder (no {STAMP}) and not empty; choose an empty "
                            "or new --out (a folder an older saga made: delete it first)")


def prepare(out_dir: Path, stamp: dict[str, Any], counts: dict[str, int]) -> bool:
    """Make every clip saga would name in out_dir one of this run's; returns True when resuming.

    counts: class folder -> clips wanted. Another (or an unreadable) stamp, or none in a folder that
    `check_ours` let through: the finished outputs, the old stamp and every clip saga named go first,
    then the new stamp is written.
    The same stamp: clips beyond the wanted counts go. Other files are never touched.
    """
    stamp = json.loads(json.dumps(stamp))  # tuples -> lists, as read back
    old = read_stamp(out_dir / STAMP)
    same = old == stamp
    if not same:
        for name in (*OUTPUTS, STAMP):
            (out_dir / name).unlink(missing_ok=True)
    folders = set(counts) | set(_folders(old))
    for path, folder, index in _named_files(out_dir, folders):
        if not (same and index < counts.get(folder, 0) and not path.name.startswith(".")):
            path.unlink(missing_ok=True)
    if not same:
        write_json(out_dir / STAMP, stamp)
    return same


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp, or None when it is missing or unreadable (then nothing on disk is trusted)."""
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # nested too deeply too (`loads`)
        return None
    return data if isinstance(data, dict) else None


def _folders(stamp: dict[str, Any] | None) -> list[str]:
    """The class folders an earlier run recorded; only plain names (a hand-edited stamp escapes nothing)."""
    folders = (stamp or {}).get("folders")
    if not isinstance(folders, list):
        return []
    return [f for f in folders if isinstance(f, str) and _SAFE.fullmatch(f) and f not in (".", "..")]


def _named_files(out_dir: Path, folders: Iterable[str]) -> Iterable[tuple[Path, str, int]]:
    """(path, folder, index) of every clip saga synth names FOLDER/FOLDER_NNN.mp4, and of their
    hidden temporary files (.FOLDER_NNN.mp4.tmp-PID@HOST, left by a killed writer)."""
    for folder in sorted(folders):
        clip = re.compile(rf"\.?({re.escape(folder)}_(\d+)\.mp4)({TEMP_SUFFIX})?")
        directory = out_dir / folder
        if not directory.is_dir() or directory.is_symlink():
            continue
        for path in sorted(directory.iterdir()):
            match = clip.fullmatch(path.name)
            if not match or path.is_dir():
                continue
            hidden, index = path.name.startswith("."), int(match.group(2))
            if hidden != bool(match.group(3)) or match.group(1) != f"{folder}_{index:03d}.mp4":
                continue  # not a name saga synth writes
            yield path, folder, index
