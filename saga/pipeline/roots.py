"""The videos folders a cache was extracted from, and the guard against appending another one.

Why: records are keyed by their path below `--videos`, so two trees extracted into one cache
(GenVideo's `train/` then `test/`) share keys: `train/ZeroScope/a.mp4` and `test/ZeroScope/a.mp4`
are both `ZeroScope/a.mp4`, and the second pass replaced the first's record (another size or
mtime: "changed") or skipped its own video (the same size and mtime: "already cached"). A pass
over another folder whose videos share keys with the cache's records, as other files, is therefore
refused. Another folder that shares no key (new generators appended to a cache, a documented use:
`saga cache prune` knows each part's folder) is added as before.

Known folders: those the cache's parts recorded (`parts/<p>/videos.json`, written with each part)
and those in `CACHE/video-roots.json`, written by every accepted pass, also one that wrote no part,
so an older cache (parts without `videos.json`, an import) records its folder at its next pass
instead of being refused. The cache folder itself (the `--augment` pass's copies live in
`CACHE/.augment/`) is never another folder.

A moved videos folder stays supported as it was (its records keep matching by relative path, size
and mtime, which `mv` and `cp -p` keep): a new folder where most of the cache's videos found under it
have their record's size and mtime is the same data moved; it is added to the known folders.
Cost: a new folder stats each record's path under it once (only on its first pass).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from saga.cache.manifest import AUGMENTED, VideoRecord
from saga.cache.seal import part_videos
from saga.errors import SagaError, shown
from saga.fileio import read_json, write_json

ROOTS = "video-roots.json"  # {"roots": [resolved videos folders this cache was extracted from]}


def known_roots(cache_root: Path, part_names: Iterable[str]) -> list[str]:
    """The resolved videos folders recorded by the cache's parts and its video-roots.json (the cache
    itself left out)."""
    found = {part_videos(cache_root, name) for name in part_names}
    path = cache_root / ROOTS
    if path.is_file():
        try:
            listed = read_json(path).get("roots")
        except (SagaError, AttributeError):  # damaged: the parts still tell
            listed = None
        if isinstance(listed, list):
            found.update(r for r in listed if isinstance(r, str))
    return sorted(f for f in found if f is not None and f != str(cache_root.resolve()))


def shared_keys(records: Iterable[VideoRecord], videos: Path) -> tuple[int, list[str]]:
    """Of the cache's videos found under `videos` (the same path below it): how many have their record's size and
    mtime, and the paths of those that do not (another file under the same key)."""
    same, other = 0, []
    for rec in records:
        if rec.path.startswith(AUGMENTED) or rec.size < 0:
            continue
        try:
            st = os.stat(videos / rec.path)
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns) == (rec.size, rec.mtime_ns):
            same += 1
        else:
            other.append(rec.path)
    return same, other


def check_root(cache_root: Path, part_names: list[str], records: Iterable[VideoRecord], videos: Path) -> None:
    """Refuse a pass over another videos folder whose videos are other files under the cache's keys; record this
    pass's folder (an appended folder that shares no key, or the same data moved, is accepted)."""
    mine = str(videos.resolve())
    if mine == str(cache_root.resolve()):  # an --augment pass: its copies are kept inside the cache
        return
    known = known_roots(cache_root, part_names)
    if known and mine not in known:
        same, other = shared_keys(records, videos)
        if other and len(other) >= same:  # most shared keys are other files: not the same data moved
            _refuse(cache_root, mine, known, other)
    if mine not in known:
        write_json(cache_root / ROOTS, {"roots": sorted({*known, mine})})


def _refuse(cache_root: Path, mine: str, known: list[str], other: list[str]) -> None:
    common = os.path.commonpath([mine, *known])
    raise SagaError(f"{cache_root}: refusing to extract {mine} into this cache: it was extracted from "
                    f"{', '.join(known)}, and {len(other)} of this folder's videos ({shown(other[0])}, …) are other "
                    "files under the paths of its records, which are keyed by the path below --videos "
                    "(train/X/a.mp4 and test/X/a.mp4 are both X/a.mp4, one replacing the other); extract each folder "
                    f"into its own --out, or extract their common parent {common} once into a new --out with a "
                    "labels CSV (docs/real-data.md)")
