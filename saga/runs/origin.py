"""What a run was trained on: the cache's identity, its records' digest, its seals.

A run records the cache id, the number of ok records and their digest, so a rerun
notices when the cache changed under it (videos added or re-extracted) instead of
silently mixing data; continuing anyway is an explicit choice (`accept_changed_cache`,
the CLI's --resume). Caches written before parts were sealed cannot be checked for
edits; they still load, with one warning that says how to check them.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, Sequence

from saga.cache.index import identity_line, lazy
from saga.cache.manifest import VideoRecord
from saga.cache.sealcheck import check_seals, seal_warnings, unsealed_warning
from saga.cache.store import FeatureCache
from saga.provenance import machine, now, source_digest, versions
from saga.runs.files import PROVENANCE

# (continue an unfinished run on a changed cache, keep a finished one as it is): the explicit --resume
_ACCEPT_CHANGED = ContextVar("saga_accept_changed_cache", default=(False, False))
_WARNED_UNSEALED: set[str] = set()  # cache roots already warned about in this process (warn once)


def encoder_provenance(cache: FeatureCache) -> dict[str, Any]:
    """The cache's encoder: the fields that make features comparable, plus how to load it again."""
    return cache.encoder_spec.to_dict()


def cache_digest(cache: FeatureCache) -> str:
    """blake2b of the cache's ok records (path, split, checksum): changes when videos are added or re-extracted."""
    return records_digest(cache.ok_records())


def records_digest(records: Sequence[VideoRecord]) -> str:
    """blake2b of `records`' identities (path, split, checksum), in their order: `cache_digest` of a subset."""
    h = hashlib.blake2b(digest_size=16)
    lines = records.identity_lines() if lazy(records) else map(identity_line, records)
    for line in lines:
        h.update(line)
    return h.hexdigest()


def make_provenance(cache: FeatureCache, seed: int, from_run: dict[str, Any] | None = None) -> dict[str, Any]:
    check_cache_seals(cache)
    return {
        "cache_id": cache.cache_id,
        "cache_records": len(cache.ok_records()),
        "cache_digest": cache_digest(cache),
        "cache_path": str(cache.root.resolve()),
        "encoder": encoder_provenance(cache),
        "taxonomy": cache.attrs.get("taxonomy"),
        "seed": seed,
        "from_run": from_run,
        "versions": versions(),
        "machine": machine(),
        "world_sizes": [world_size()],  # one per session (start, then each resume): dropout masks depend on it
        "started": now(),
        "finished": None,
    }


def world_size() -> int:
    """The processes that train this session (torchrun's WORLD_SIZE; 1 without torchrun)."""
    from saga.distributed import context

    return context().world_size


def check_cache_seals(cache: FeatureCache) -> None:
    """Refuse a cache whose sealed parts were edited or lost (`check_seals`, one line); one warning per cache
    and process when parts are unsealed (a cache from an older saga, or an extraction killed or still running:
    edits to them cannot be detected, but they still load) or a prune was interrupted."""
    state = check_seals(cache)
    key = str(cache.root.resolve())
    if key in _WARNED_UNSEALED:
        return
    for line in seal_warnings(cache, state):
        _WARNED_UNSEALED.add(key)
        warnings.warn(line, stacklevel=3)
    unsealed = unsealed_warning(cache, state)
    if unsealed is not None:
        _WARNED_UNSEALED.add(key)
        warnings.warn(unsealed, stacklevel=3)


@contextmanager
def accept_changed_cache(accept: bool = True, keep_finished: bool = False) -> Iterator[None]:
    """Within this block, reopening an unfinished run whose cache changed continues it (the CLI's explicit
    --resume). A finished run on a changed cache is refused even then: it is never retrained in place, and
    its provenance must keep naming the cache its weights saw. With `keep_finished` (saga ablate, whose
    --resume keeps the finished cells) an accepted change reuses it as it is, its provenance untouched."""
    token = _ACCEPT_CHANGED.set((accept, keep_finished))
    try:
        yield
    finally:
        _ACCEPT_CHANGED.reset(token)


def changed_cache_accepted() -> bool:
    """Whether an unfinished run may continue on a changed cache (an explicit --resume)."""
    return _ACCEPT_CHANGED.get()[0]


def finished_kept_on_changed_cache() -> bool:
    """Whether the caller keeps finished runs on a changed cache once accepted (saga ablate --resume)."""
    return _ACCEPT_CHANGED.get()[1]


def cache_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """How the cache differs from the one a run recorded (another cache, other records), or None."""
    if old.get("cache_id") != new.get("cache_id"):
        return f"was trained on another cache ({str(old.get('cache_id'))[:12]}, now {str(new.get('cache_id'))[:12]})"
    if old.get("cache_digest") and new.get("cache_digest") and old["cache_digest"] != new["cache_digest"]:
        return (f"was trained on {old.get('cache_records')} records of this cache, which now holds "
                f"{new.get('cache_records')} (videos added or re-extracted)")
    return None


def trained_by_other_code(run: Path) -> bool:
    """The run was reused (or resumed) from a finished folder that other saga code trained: runs are reused by
    their settings, so an upgrade or an edit since leaves its cell computed by the earlier code (the table says
    which). A run from before saga recorded its code (no `saga_source`) counts as other code too."""
    try:
        prov = json.loads((Path(run) / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prov = None
    versions_ = prov.get("versions") if isinstance(prov, dict) else None
    return (versions_.get("saga_source") if isinstance(versions_, dict) else None) != source_digest()
