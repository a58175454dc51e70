"""What a leave-one-out fold must never train on: every video of its held-out classes (saga.openworld.holdout).

An open-set figure asks how a run treats a generator it has never seen. Leaving the generator out of
the labelled subset is not enough: training also reads the train split without source labels (the
content basis and window statistics, the readout's real videos, self-training's unlabelled pool,
stage 1's real/fake labels) and the val split (model selection). A `Withheld` is removed from every
one of those record lists (`apply`) and recorded in the run's config.json (`withheld`), so a stage-2
fold can tell whether the stage-1 run it adapts withheld the same videos (`check_base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saga.cache.index import lazy
from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.model.inference import record_targets

CONFIG_KEY = "withheld"  # in a run's config.json: what it was trained without (absent: nothing withheld)


@dataclass(frozen=True)
class Withheld:
    """Every video whose class at `level` is one of `classes`, in every split, except the train videos `keep`."""

    level: str
    classes: tuple[str, ...]
    keep: tuple[str, ...] = ()  # the k train videos a retrained fold is given of its held-out generator

    def hides(self, records: Sequence[VideoRecord]) -> np.ndarray:
        """(n,) bool: which of `records` training must not read."""
        hit = record_targets(records, self.level, list(self.classes)) >= 0
        if self.keep and hit.any():
            kept = set(self.keep)
            paths = records.paths() if lazy(records) else [r.path for r in records]  # type: ignore[attr-defined]
            hit &= np.array([p not in kept for p in paths], bool)
        return hit

    def apply(self, records: Sequence[VideoRecord]) -> Sequence[VideoRecord]:
        """`records` without the withheld ones (a lazy view stays lazy)."""
        keep = np.flatnonzero(~self.hides(records))
        if keep.size == len(records):
            return records
        return records.take(keep) if hasattr(records, "take") else [records[i] for i in keep.tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "classes": sorted(self.classes), "keep": sorted(self.keep)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Withheld | None":
        """What a run's config.json says it was trained without (None: nothing, e.g. a run of an older saga)."""
        data = config.get(CONFIG_KEY)
        if not isinstance(data, dict):
            return None
        return cls(str(data.get("level")), tuple(data.get("classes") or ()), tuple(data.get("keep") or ()))


def apply(withheld: Withheld | None, records: Sequence[VideoRecord]) -> Sequence[VideoRecord]:
    """`records` without what `withheld` hides (all of them without one)."""
    return records if withheld is None else withheld.apply(records)


def record(config: dict[str, Any], withheld: Withheld | None) -> dict[str, Any]:
    """`config` with the withheld videos recorded (unchanged without any: other runs keep their identity)."""
    return config if withheld is None else {**config, CONFIG_KEY: withheld.to_dict()}


def check_base(withheld: Withheld | None, base_config: dict[str, Any], base_path: Path, cache: FeatureCache) -> None:
    """Refuse a stage-1 run that trained (real/fake labels) or validated on a video the fold withholds:
    the fold would inherit a θ that has seen the generator it is meant never to have seen."""
    if withheld is None:
        return
    read = cache.ok_records("train") + cache.ok_records("val")  # what stage 1 reads
    theirs = Withheld.from_config(base_config)
    seen = withheld.hides(read) & ~(theirs.hides(read) if theirs else np.zeros(len(read), bool))
    if seen.any():
        example = read[int(np.flatnonzero(seen)[0])].path
        raise SagaError(f"{base_path}: this stage-1 run trained on {int(seen.sum())} video(s) of "
                        f"{', '.join(withheld.classes)} (real/fake labels, e.g. {example}), which this fold holds "
                        "out; train stage 1 without them (saga openset logo --two-stage does, per fold) or train "
                        "the fold from scratch")
