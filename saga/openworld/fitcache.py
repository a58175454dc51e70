"""Which cache calibration.json and openset.json were fitted on, and one warning when they are used on another.

Why: the temperature and the unknown threshold are fitted on one cache's val videos (the open-set detector also on
the run's labelled train videos: its prototypes and k-NN bank). Used with another cache than that one (a fit made
with `--cache` elsewhere, then `saga evaluate` on the run's own cache), or with the same cache after the videos the
fit read changed (val videos added, pruned or re-extracted), their figures rest on other videos than those in use,
and nothing said so. Each file records `cache_id` and `fit_digest`: the digest of the records the fit read (the val
split's ok records, plus the labelled ones for openset.json), so train videos added later do not count as a change.
Files written before `fit_digest` carry `cache_digest` (all splits) instead: still compared, the warning then says
the cache changed, possibly only outside val. A file with neither is unknown and passes in silence. A held-out cache
is where a fit on the run's own cache is meant to be measured: not warned about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

from saga.cache.store import FeatureCache
from saga.runs import LABELLED, RunInfo, cache_digest, heldout_tag, read_json, records_digest

FIT_CACHE = ("cache_id", "cache_digest", "fit_digest")  # the optional keys of calibration.json / openset.json


def fit_digest(cache: FeatureCache, labelled: Collection[str] = ()) -> str:
    """The digest of what a fit on `cache` reads: its val ok records, then its train ok records in `labelled`."""
    if not labelled:
        return records_digest(cache.ok_records("val"))  # the index's columns: no record objects built
    wanted = set(labelled)
    return records_digest([*cache.ok_records("val"), *(r for r in cache.ok_records("train") if r.path in wanted)])


def labelled_paths(info: RunInfo) -> set[str]:
    """The run's labelled videos (labelled.json; none without one): what the open-set fit reads besides val."""
    path = info.path / LABELLED
    classes = read_json(path).get("classes") if path.is_file() else None
    if not isinstance(classes, dict):  # damaged: training and the fit refuse it in their own line
        return set()
    return {p for paths in classes.values() if isinstance(paths, list) for p in paths if isinstance(p, str)}


def fit_cache(cache: FeatureCache, labelled: Collection[str] = ()) -> dict[str, str]:
    """What a fit on `cache` records (FIT_CACHE, less the old all-splits key): its id and `fit_digest`."""
    return {"cache_id": cache.cache_id, "fit_digest": fit_digest(cache, labelled)}


def fit_cache_problem(recorded: dict[str, Any]) -> str:
    """"" when each of `FIT_CACHE` is absent (an older file) or text; else what is wrong (the file is damaged)."""
    bad = next((k for k in FIT_CACHE if recorded.get(k) is not None and not isinstance(recorded[k], str)), None)
    return f"{bad} {recorded[bad]!r} is not text" if bad else ""


def other_cache(path: Path, recorded: dict[str, Any], cache: FeatureCache, info: RunInfo, fix: str,
                labelled: Collection[str] = ()) -> str:
    """One line when the file at `path` (its `recorded` FIT_CACHE) was fitted on another cache than `cache`, or on
    `cache` before the videos it read changed (`labelled`: those it read besides val); "" when not, when it records
    none, or on a held-out cache it was not fitted on while it was fitted on the run's training cache."""
    fitted = recorded.get("cache_id")
    if not isinstance(fitted, str):
        return ""
    if fitted == cache.cache_id:
        return _changed(path, recorded, cache, labelled, fix)
    if heldout_tag(info, cache) and fitted == (info.provenance or {}).get("cache_id"):
        return ""
    return f"{path}: fitted on cache {fitted[:12]}, not {cache.root} ({cache.cache_id[:12]}); {fix}"


def _changed(path: Path, recorded: dict[str, Any], cache: FeatureCache, labelled: Collection[str], fix: str) -> str:
    """The line for a fit on `cache` whose videos changed since (its fit_digest, else an older file's cache_digest)."""
    digest, whole = recorded.get("fit_digest"), recorded.get("cache_digest")
    if isinstance(digest, str):
        if digest == fit_digest(cache, labelled):
            return ""
        what = "val or labelled train videos" if labelled else "val videos"
        return (f"{path}: fitted on {cache.root} before the videos it was fitted on changed ({what} added, pruned "
                f"or re-extracted since); {fix}")
    if isinstance(whole, str) and whole != cache_digest(cache):
        return (f"{path}: fitted on {cache.root} before it changed (videos added, pruned or re-extracted since; "
                f"the file is older than saga's record of the val videos, so this may be only other splits); {fix}")
    return ""
