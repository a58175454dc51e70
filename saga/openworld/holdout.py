"""Training without a class (leave-one-generator-out) or with only a few of its videos.

Stage 2 draws its labelled subset and saves it as `labelled.json`; a rerun with the same
settings reuses the saved file (saga/cache/fraction.py). So a filtered subset written there
*before* training is the filtered labelled view; the file records what was left out under `openworld`.
Labels are not all training reads: the content basis, the readout's real videos and self-training's
unlabelled pool come from the whole train split, model selection from the val split, and a stage-1
run from all of them. So the fold also passes `train_attribution` a `Withheld` (saga.train.withhold):
every video of the left-out classes, in every split, except the few train videos a class keeps, is
removed from each of those, and a stage-1 run (`from_run`) that did not withhold them too is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from saga.cache.fraction import draw, write_labelled
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.fileio import make_dir, read_json, write_json
from saga.runs import LABELLED
from saga.train.attribute import AttributeConfig, train_attribution
from saga.train.loop import Progress
from saga.train.withhold import Withheld


def filtered_subset(cache: FeatureCache, cfg: AttributeConfig, exclude: Sequence[str] = (),
                    few: dict[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """The subset stage 2 would draw, minus `exclude` classes, with `few` classes restricted to given paths."""
    train = cache.ok_records("train")
    subset = draw(train, cache.taxonomy, cfg.labelled_settings(cache.cache_id))
    unknown = [c for c in [*exclude, *(few or {})] if c not in subset]
    if unknown:
        raise SagaError(f"{cache.root}: no train videos of {unknown[0]!r} at {cfg.level}; "
                        f"choose among {', '.join(subset)}")
    out = {c: p for c, p in subset.items() if c not in set(exclude)}
    for cls, paths in (few or {}).items():
        known = {r.path for r in train if r.labels.get(cfg.level) == cls}
        bad = [p for p in paths if p not in known]
        if bad:
            raise SagaError(f"{bad[0]}: not a train video of {cls!r} in {cache.root}; pick its train videos")
        out[cls] = sorted(paths)
    return out


def train_holdout(cache_path: str | Path, out: str | Path, cfg: AttributeConfig, exclude: Sequence[str] = (),
                  few: dict[str, Sequence[str]] | None = None, from_run: str | Path | None = None,
                  progress: Progress | None = None) -> Path:
    """Train a stage-2 run in `out` that never reads a video of `exclude` (nor of class c but `few[c]`'s)."""
    cfg.check()
    cache = FeatureCache.open(cache_path)
    out = make_dir(out)
    path = out / LABELLED
    wanted = cfg.labelled_settings(cache.cache_id)
    subset = filtered_subset(cache, cfg, exclude, few)
    filtered = {"exclude": sorted(exclude), "few": {c: sorted(p) for c, p in (few or {}).items()}}
    if path.is_file():
        if read_json(path).get("openworld", {}) != filtered:
            raise SagaError(f"{path}: this folder was filtered differently; use another --out folder")
    else:
        write_filtered(path, subset, wanted, cache, filtered)
    return train_attribution(cache_path, out, cfg, from_run=from_run, progress=progress,
                             withheld=fold_withheld(cfg.level, exclude, few))


def fold_withheld(level: str, exclude: Sequence[str] = (), few: dict[str, Sequence[str]] | None = None) -> Withheld:
    """What a fold never reads: every video of `exclude` and of the `few` classes, but those few train videos."""
    few = few or {}
    return Withheld(level, tuple(sorted({*exclude, *few})), tuple(sorted(p for paths in few.values() for p in paths)))


def write_filtered(path: Path, subset: dict[str, list[str]], wanted: dict, cache: FeatureCache,
                   filtered: dict) -> None:
    """labelled.json with its `openworld` key in one atomic write: a kill leaves no file, or the whole one
    (a file without the key made the fold refuse its own rerun as "filtered differently")."""
    with tempfile.TemporaryDirectory(prefix="saga-labelled-") as tmp:
        draft = Path(tmp) / LABELLED  # write_labelled's format, then the key, then one write in place
        write_labelled(draft, subset, wanted, cache.ok_records("train"))
        write_json(path, {**read_json(draft), "openworld": filtered})
