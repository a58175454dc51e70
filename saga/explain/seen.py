"""Scored videos the run was trained or validated on: left out of what `evaluate`, `robustness`, `tsig`, `tsne`,
`calibrate` and `openset fit` report.

Why: a "held-out" cache extracted from an overlapping videos folder (the same videos again with another
--split-seed, a later release that still holds the old ones) puts the run's own train videos, labelled
ones too, into the split being scored; and a video copied inside one cache can sit in train and test at
once (`saga cache verify` warns about that). Scored, they inflate every figure without a word (a train video
in the k-NN bank scores 0 against itself; its logits are the sharpest the run has). Videos are matched as
`saga.cache.duplicates` matches them: equal feature checksums, or equal size, mtime and name. A fit on the val
split (temperature, open-set threshold) is checked against the train split only: fitting on the run's own
val videos is what it is for.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saga.cache.duplicates import VideoKeys, holds_one_of, video_keys
from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache
from saga.errors import SagaError, brief, shown
from saga.runs import RunInfo

# train: stage 1, the labelled subset, the content basis, self-training; val: model selection, calibration
TRAINED_SPLITS = ("train", "val")
FIT_AGAINST = ("train",)  # a fit on val (calibrate, openset fit) leaves out only what the run was trained on
SEEN_KEY = "seen_in_training"
SCORES = f"the scores (metrics: {SEEN_KEY})"
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


def leave_out_seen(info: RunInfo, cache: FeatureCache, records: Sequence[VideoRecord], split: str,
                   left_out_of: str = SCORES, against: Sequence[str] = TRAINED_SPLITS,
                   quiet: bool = False) -> tuple[list[VideoRecord], dict[str, Any] | None]:
    """`records` without the videos of the run's training cache's `against` splits, and what was left out (None:
    nothing); one warning naming `left_out_of` (what they are left out of and where that is recorded) unless `quiet`.

    On the run's own cache a split is compared with the other `against` splits (its own records are
    themselves); scoring the train split itself there checks nothing."""
    own = training_cache(info, cache)
    if own is None:
        if not quiet:
            warnings.warn(f"{shown(cache.root)}: the run's training cache ({shown(info.config.get('cache'))}) is "
                          f"not found, so it is not checked which of these {split} videos the run was trained on; "
                          "if the caches share videos, the figures include them", stacklevel=3)
        return list(records), None
    splits = [s for s in against if s != split] if own is cache else list(against)
    if not splits or split == "train" and own is cache:
        return list(records), None
    keys = trained_keys(own, splits)
    seen = [holds_one_of(r, keys) for r in records]
    if not any(seen):
        return list(records), None
    paths = [r.path for r, s in zip(records, seen) if s]
    where = "another split of its cache" if own is cache else f"its training cache {shown(own.root)}"
    did = "trained or validated on" if "val" in splits else "trained on"
    if not quiet:
        warnings.warn(f"{shown(cache.root)}: {len(paths)} of the {len(records)} {split} videos are videos the run "
                      f"was {did} (in {where}: equal feature checksums, or equal size, mtime and file name), e.g. "
                      f"{shown(paths[0])}; they are left out of {left_out_of}", stacklevel=3)
    return [r for r, s in zip(records, seen) if not s], {"n": len(paths), "examples": paths[:EXAMPLES],
                                                          "in": "own cache" if own is cache else str(own.root)}


def only_unseen(info: RunInfo, cache: FeatureCache, records: Sequence[VideoRecord], split: str,
                left_out_of: str = SCORES, against: Sequence[str] = TRAINED_SPLITS,
                fix: str = "evaluate on videos it has not seen (another --split or --cache)"
                ) -> tuple[list[VideoRecord], dict[str, Any] | None]:
    """`leave_out_seen`, refused in one line (naming `fix`) when it leaves none of `records`."""
    kept, seen = leave_out_seen(info, cache, records, split, left_out_of, against)
    if records and not kept:
        did = "trained or validated on" if "val" in against else "trained on"
        raise SagaError(f"{cache.root}: every '{split}' video is one the run was {did}; {fix}")
    return kept, seen


def seen_problem(seen: Any) -> str:
    """What is wrong with a `SEEN_KEY` record read back from someone's file ("" when nothing, or none recorded):
    it is what `leave_out_seen` returns, {"n": N >= 1, "examples": up to EXAMPLES paths, "in": where}, and the
    file that carries it writes it back (enrolled.json, on every enroll)."""
    if seen is None:
        return ""
    if not isinstance(seen, dict) or set(seen) != {"n", "examples", "in"}:
        return f"{SEEN_KEY} {brief(seen)} is not an object of n, examples and in"
    n, examples = seen["n"], seen["examples"]
    if not (type(n) is int and n >= 1 and isinstance(examples, list) and 1 <= len(examples) <= min(n, EXAMPLES)
            and all(isinstance(e, str) for e in examples) and isinstance(seen["in"], str)):
        return f"{SEEN_KEY} {brief(seen)}: not n >= 1 videos, 1-{EXAMPLES} example paths and the cache they are in"
    return ""


def folds_seen_text(results: dict[str, Any]) -> str:
    """One sentence on what a `saga openset logo` measurement left out (results.json `seen_in_training`: per fold,
    the val and test videos its run was trained or validated on); "" when nothing. For results.md and the report."""
    seen = results.get(SEEN_KEY)
    parts = []
    for fold, splits in (seen.items() if isinstance(seen, dict) else ()):
        counts = [f"{x['n']} {split}" for split, x in (splits.items() if isinstance(splits, dict) else ())
                  if isinstance(x, dict) and isinstance(x.get("n"), int)]
        parts += [f"{fold}: {', '.join(counts)}"] if counts else []
    if not parts:
        return ""
    return ("Videos a fold's run was trained or validated on (copies in these splits, or a cache sharing its videos) "
            f"were left out of its fits (val) and figures (test): {'; '.join(parts)}.")
