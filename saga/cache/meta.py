"""The file that makes a folder a saga cache, checked without zarr.

Why apart from saga.cache.store: the CLI refuses a missing `--cache` folder before it imports zarr and torch
(seconds), with the one line `FeatureCache.open` gives (docs/performance.md "CLI start-up").
"""

from __future__ import annotations

from pathlib import Path

from saga.errors import SagaError

META = "zarr.json"  # a Zarr v3 group's metadata; saga's own attributes live in it


def require_cache(root: str | Path) -> Path:
    """`root` when it holds a cache's metadata file, else a one-line error saying how to make one."""
    root = Path(root)
    if not (root / META).is_file():
        raise SagaError(f"{root}: not a saga cache (no {META}); create one with `saga extract --out {root}`")
    return root
