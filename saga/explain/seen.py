"""Scored videos the run was trained or validated on: left out of `saga evaluate`'s scores.

Why: a "held-out" cache extracted from an overlapping videos folder (the same videos again with another
--split-seed, a later release that still holds the old ones) puts the run's own train videos, labelled
ones too, into the split being scored; and a video copied inside one cache can sit in train and test at
once (`saga cache verify` warns about that). Scored, they inflate every figure without a word. Videos are
matched as `saga.cache.duplicates` matches them: equal feature checksums, or equal size, mtime and name.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saga.cache.duplicates import VideoKeys, holds_one_of, video_keys
from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache
from saga.errors import SagaError, shown
from saga.runs import RunInfo

# train: stage 1, the labelled subset, the content basis, self-training; val: model selection, calibration
TRAINED_SPLITS = ("train", "val")
EXAMPLES = 3


def training_cache(info: RunInfo, cache: FeatureCache) -> FeatureCache | None:
    """The cache the run was trained on: `cache` itself, or the one its config.json names (None: not found)."""
    run_id = (info.provenance or {}).get("cache_id")
    if run_id is None or run_id == cache.cache_id:
        return cache
    path = info.config.get("cache")
    if not path or not Path(path).is_dir():
        return None
    try:
        own = FeatureCache.open(path)
    except SagaError:
        return None
    return own if own.cache_id == run_id else None


def trained_keys(own: FeatureCache, splits: Sequence[str]) -> VideoKeys:
    """The identities of the ok videos of `splits` in the run's own cache."""
    index = own.index()
    codes = [index.code("split", s) for s in splits]
    return video_keys(index, np.flatnonzero(index.ok & np.isin(index.arrays["split"], codes)))


def leave_out_seen(info: RunInfo, cache: FeatureCache, records: Sequence[VideoRecord],
                   split: str) -> tuple[list[VideoRecord], dict[str, Any] | None]:
    """`records` without the videos the run was trained or validated on, and what was left out (None: nothing).

    On the run's own cache a split is compared with the other trained-on splits (its own records are
    themselves); scoring the train split itself checks nothing."""
    own = training_cache(info, cache)
    if own is None:
        warnings.warn(f"{shown(cache.root)}: the run's training cache ({shown(info.config.get('cache'))}) is not "
                      f"found, so it is not checked which of these {split} videos the run was trained on; if the "
                      "caches share videos, the figures include them", stacklevel=3)
        return list(records), None
    splits = [s for s in TRAINED_SPLITS if s != split] if own is cache else list(TRAINED_SPLITS)
    if not splits or split == "train" and own is cache:
        return list(records), None
    keys = trained_keys(own, splits)
    seen = [holds_one_of(r, keys) for r in records]
    if not any(seen):
        return list(records), None
    paths = [r.path for r, s in zip(records, seen) if s]
    where = "another split of its cache" if own is cache else f"its training cache {shown(own.root)}"
    warnings.warn(f"{shown(cache.root)}: {len(paths)} of the {len(records)} {split} videos are videos the run "
                  f"was trained or validated on (in {where}: equal feature checksums, or equal size, mtime and file "
                  f"name), e.g. {shown(paths[0])}; they are left out of the scores (metrics: seen_in_training)",
                  stacklevel=3)
    return [r for r, s in zip(records, seen) if not s], {"n": len(paths), "examples": paths[:EXAMPLES],
                                                          "in": "own cache" if own is cache else str(own.root)}
