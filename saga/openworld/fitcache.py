"""Which cache calibration.json and openset.json were fitted on, and one warning when they are used on another.

Why: the temperature and the unknown threshold are fitted on one cache's val videos. Used with another cache
than that one (a fit made with `--cache` elsewhere, then `saga evaluate` on the run's own cache), or with the same
cache after it changed (videos added, pruned or re-extracted: its records digest moved), their figures rest on
other videos than those in use, and nothing said so. Each file records `cache_id` and `cache_digest` (as
`saga evaluate` records them); a file written before they existed has neither: unknown, and passes in silence.
A held-out cache is where a fit on the run's own cache is meant to be measured: not warned about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saga.cache.store import FeatureCache
from saga.runs import RunInfo, cache_digest, heldout_tag

FIT_CACHE = ("cache_id", "cache_digest")  # the optional keys of calibration.json / openset.json


def fit_cache(cache: FeatureCache) -> dict[str, str]:
    """What a fit on `cache` records: its id and the digest of its ok records."""
    return {"cache_id": cache.cache_id, "cache_digest": cache_digest(cache)}


def fit_cache_problem(recorded: dict[str, Any]) -> str:
    """"" when each of `FIT_CACHE` is absent (an older file) or text; else what is wrong (the file is damaged)."""
    bad = next((k for k in FIT_CACHE if recorded.get(k) is not None and not isinstance(recorded[k], str)), None)
    return f"{bad} {recorded[bad]!r} is not text" if bad else ""


def other_cache(path: Path, recorded: dict[str, Any], cache: FeatureCache, info: RunInfo, fix: str) -> str:
    """One line when the file at `path` (its `recorded` FIT_CACHE) was fitted on another cache than `cache`, or on
    `cache` before it changed; "" when not, when it records none, or on a held-out cache it was not fitted on
    while it was fitted on the run's training cache."""
    fitted, digest = recorded.get("cache_id"), recorded.get("cache_digest")
    if not isinstance(fitted, str):
        return ""
    if fitted == cache.cache_id:
        if isinstance(digest, str) and digest != cache_digest(cache):
            return (f"{path}: fitted on {cache.root} before it changed (videos added, pruned or re-extracted "
                    f"since); {fix}")
        return ""
    if heldout_tag(info, cache) and fitted == (info.provenance or {}).get("cache_id"):
        return ""
    return f"{path}: fitted on cache {fitted[:12]}, not {cache.root} ({cache.cache_id[:12]}); {fix}"
