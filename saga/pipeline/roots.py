"""The videos folders a cache was extracted from, and the guard against appending another one.

Why: records are keyed by their path below `--videos`, so two trees extracted into one cache
(GenVideo's `train/` then `test/`) share keys: `train/ZeroScope/a.mp4` and `test/ZeroScope/a.mp4`
are both `ZeroScope/a.mp4`, and the second pass replaced the first's record (another size or
mtime: "changed") or skipped its own video (the same size and mtime: "already cached"). A pass
over another folder is therefore refused.

Known folders: those the cache's parts recorded (`parts/<p>/videos.json`, written with each part)
and those in `CACHE/video-roots.json`, written by every accepted pass, also one that wrote no part,
so an older cache (parts without `videos.json`, an import) records its folder at its next pass
instead of being refused. The cache folder itself (the `--augment` pass's copies live in
`CACHE/.augment/`) is never another folder.

A moved videos folder stays supported as it was (its records keep matching by relative path, size
and mtime, which `mv` and `cp -p` keep): a new folder where most of the cache's videos found under it
have their record's size and mtime is the same data moved; it is added to the known folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from saga.cache.manifest import AUGMENTED, VideoRecord
from saga.cache.seal import part_videos
from saga.errors import SagaError
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


def same_data_moved(records: Iterable[VideoRecord], videos: Path) -> bool:
    """Whether most of the cache's videos found under `videos` have their record's size and mtime (at least one)."""
    same = other = 0
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
            other += 1
    return same > 0 and same > other


def check_root(cache_root: Path, part_names: list[str], records: Iterable[VideoRecord], videos: Path) -> None:
    """Refuse a pass over a videos folder the cache was not extracted from; record this pass's folder."""
    mine = str(videos.resolve())
    if mine == str(cache_root.resolve()):  # an --augment pass: its copies are kept inside the cache
        return
    known = known_roots(cache_root, part_names)
    if known and mine not in known and not same_data_moved(records, videos):
        common = os.path.commonpath([mine, *known])
        raise SagaError(f"{cache_root}: refusing to extract {mine} into this cache: it was extracted from "
                        f"{', '.join(known)}, and records are keyed by the path below --videos (train/X/a.mp4 "
                        f"and test/X/a.mp4 are both X/a.mp4, one replacing the other); extract each folder into "
                        f"its own --out, or extract their common parent {common} once into a new --out with a "
                        "labels CSV (docs/real-data.md)")
    if mine not in known:
        write_json(cache_root / ROOTS, {"roots": sorted({*known, mine})})
