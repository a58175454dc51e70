"""The finished stage-1 run that stage 2 adapts (`--from`): loaded, and checked against the cache.

Another cache (other features) is refused. The same cache in a later state (videos added, pruned or
re-extracted since stage 1 was trained) is accepted with one warning: θ is still this encoder's, and
adapting it after extracting more videos is the usual course, but it has not seen the changes, and a
demanding user must know that the 2-stage result is not what retraining stage 1 would give.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saga.cache.store import FeatureCache
from saga.errors import SagaError, shown
from saga.model import VideoTransformer
from saga.runs import MODEL, RunInfo, cache_digest, file_fingerprint, load_model

_WARNED_EARLIER: set[tuple[str, str]] = set()  # (stage-1 run, cache digest) already warned about in this process


@dataclass(frozen=True)
class BaseRun:
    """The finished stage-1 run that stage 2 adapts: its model, what it was, and where it came from."""

    model: VideoTransformer
    info: RunInfo
    origin: dict[str, Any]  # recorded in the stage-2 run's provenance

    @property
    def frames(self) -> int:
        return int(self.info.frames)

    @property
    def path(self) -> str:
        return str(self.origin["path"])


def load_base(from_run: str | Path, cache: FeatureCache) -> BaseRun:
    """A finished stage-1 run's model, refused unless it was trained on this cache's features."""
    model, info = load_model(from_run)
    if (stage := info.config.get("stage")) != 1:  # a stage-2 θ learnt another level: not the 2-stage method
        what = f"a stage-2 run ({info.level})" if stage == 2 else f"not a stage-1 run (config.json stage: {stage!r})"
        raise SagaError(f"{info.path}: {what}; --from takes a stage-1 run (saga train --stage 1)")
    if not info.finished:
        raise SagaError(f"{info.path}: that run has not finished; rerun its command to complete it first")
    prov = info.provenance
    if prov.get("cache_id") != cache.cache_id or not info.encoder.compatible_with(cache.encoder_spec):
        raise SagaError(f"{info.path}: trained on cache {str(prov.get('cache_id'))[:12]}, not on "
                        f"{cache.root} ({cache.cache_id[:12]}); its features (encoder, sampling) may differ. "
                        "Train stage 1 on this cache first")
    if model.config.in_dim != cache.dim:
        raise SagaError(f"{info.path}: model input dim {model.config.in_dim} != cache dim {cache.dim}")
    warn_if_earlier_state(info, cache)
    origin = {"path": str(info.path.resolve()), "fingerprint": file_fingerprint(info.path / MODEL),
              "stage": info.config.get("stage"), "level": info.level, "cache_id": prov.get("cache_id"),
              "cache_records": prov.get("cache_records"), "cache_digest": prov.get("cache_digest")}
    return BaseRun(model, info, origin)


def warn_if_earlier_state(info: RunInfo, cache: FeatureCache) -> None:
    """One warning (per run and cache state, in a process) when the stage-1 run's recorded digest of the cache's
    ok records is not the cache's now; a run that recorded none (an older saga) cannot be checked."""
    then = info.provenance.get("cache_digest")
    now = cache_digest(cache) if then else None
    key = (str(info.path.resolve()), str(now))
    if not then or then == now or key in _WARNED_EARLIER:
        return
    _WARNED_EARLIER.add(key)
    records = info.provenance.get("cache_records")
    warnings.warn(f"{shown(info.path)}: this stage-1 run was trained on an earlier state of {shown(cache.root)} "
                  f"({records if records is not None else '?'} ok records then, {len(cache.ok_records())} now: "
                  "videos added, pruned or re-extracted since); its θ has not seen those changes: retrain stage 1 "
                  "(saga train --stage 1) to include them", stacklevel=3)
