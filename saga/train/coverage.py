"""Classes of a run's level without a val video.

Why: a small dataset plans its splits before extraction, so a video that then fails to decode can leave a
class with no val video (syn-pika: 3 train / 0 val / 1 test). The checkpoint is then chosen, and the val macro
accuracy averaged, without that class, and nothing said so: one warning at training start names them, and
done.json records them (`val_missing`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np

from saga import distributed
from saga.cache.store import FeatureCache


def warn_missing_val(cache: FeatureCache, level: str, classes: Sequence[str], y: np.ndarray) -> list[str]:
    """The classes with no val video among the targets `y` (indices into `classes`); one warning on rank 0."""
    missing = [c for i, c in enumerate(classes) if not (y == i).any()]
    if missing and distributed.context().is_main:
        many = len(missing) > 1
        them, their = ("them", "their") if many else ("it", "its")
        warnings.warn(f"{cache.root}: no val video of {level} class{'es' * many} {', '.join(missing)}: the "
                      f"checkpoint is chosen without {them} and {their} val accuracy is unknown; re-extract with "
                      f"another --split-seed or --split, or add val videos of {them}", stacklevel=3)
    return missing


def val_missing(validate: Callable[..., Any] | None) -> dict[str, list[str]]:
    """done.json's `val_missing` (only when some class had no val video): what the warning named."""
    missing = getattr(validate, "missing", None)
    return {"val_missing": list(missing)} if missing else {}
