"""The file that makes a folder a saga cache, checked without zarr.

Why apart from saga.cache.store: the CLI refuses a missing `--cache` folder before it imports zarr and torch
(seconds), with the one line `FeatureCache.open` gives (docs/performance.md "CLI start-up").
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

from saga.errors import SagaError, shown

META = "zarr.json"  # a Zarr v3 group's metadata; saga's own attributes live in it


def require_cache(root: str | Path) -> Path:
    """`root` when it holds a cache's metadata file, else a one-line error saying how to make one."""
    root = Path(root)
    if not (root / META).is_file():
        if holds_videos(root):  # `--cache VIDEOS`: "extract --out VIDEOS" would write the cache among the videos
            raise SagaError(f"{root}: a folder of videos, not a saga cache; extract it first (`saga extract "
                            f"--videos {shown(root)} --out CACHE`) and pass that CACHE")
        raise SagaError(f"{root}: not a saga cache (no {META}); create one with `saga extract --out {root}`")
    return root


def holds_videos(folder: Path, looked_at: int = 2000) -> bool:
    """Whether `folder` or one of its subfolders (a generator's) directly holds a video file; bounded, as an
    error message's hint must not walk a dataset."""
    from saga.cache.manifest import VIDEO_SUFFIXES  # numpy: only on this error's path

    def entries(path: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as it:
                return list(islice(it, looked_at))
        except OSError:
            return []

    top = entries(folder)
    if any(e.is_file() and Path(e.name).suffix.lower() in VIDEO_SUFFIXES for e in top):
        return True
    subfolders = [e for e in top if e.is_dir(follow_symlinks=False)][:50]
    return any(e.is_file() and Path(e.name).suffix.lower() in VIDEO_SUFFIXES
               for sub in subfolders for e in entries(Path(sub.path)))
