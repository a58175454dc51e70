"""φ of cache records under the evaluation convention, and class prototypes in φ space.

Everything open-world in saga works on the run's L2-normalised embedding φ as `infer` returns
it (window 0, centred T' sub-window), so a prototype, a k-NN neighbour and a scored video are
always points of the same space. A class prototype is the mean of its videos' φ, renormalised:
the direction that maximises the mean cosine to them.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.fileio import read_json
from saga.model.inference import Inference, infer
from saga.runs import LABELLED, MODEL, RunInfo, file_fingerprint, load_model

# Known val videos below which a fitted temperature or threshold is noise (one video gives the same
# threshold at every percentile); a percentile P also needs 1 / (1 - P/100) of them to leave one above it.
MIN_VAL = 30


def check_features(info: RunInfo, cache: FeatureCache) -> None:
    """Refuse, in one line, a cache whose features the run cannot read (encoder, sampling, dim, frames)."""
    differ = info.encoder.differences(cache.encoder_spec)
    if differ:
        raise SagaError(f"{cache.root}: its features differ from run {info.path}'s ({', '.join(differ)}); "
                        f"extract the videos with the run's encoder ({info.encoder.encoder}) and sampling")
    if cache.frames < info.frames:
        raise SagaError(f"{cache.root}: {cache.frames} frames per window, run {info.path} needs {info.frames}; "
                        "extract with at least as many frames")


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def prototypes(embeddings: np.ndarray, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, d) renormalised mean φ per class index 0..C-1; a class without videos is a zero row."""
    out = np.zeros((n_classes, embeddings.shape[1]), np.float32)
    for c in range(n_classes):
        rows = embeddings[targets == c]
        if len(rows):
            out[c] = rows.mean(axis=0)
    return normalise(out)


def labelled_records(info: RunInfo, cache: FeatureCache, flag: str = "--cache") -> list[VideoRecord]:
    """The train videos the run was fitted on (its labelled.json), as records of `cache` (given with `flag`)."""
    path = info.path / LABELLED
    if not path.is_file():
        raise SagaError(f"{path}: missing; prototypes need a stage-2 run's labelled subset")
    subset: dict[str, list[str]] = read_json(path).get("classes", {})
    wanted = {p for paths in subset.values() for p in paths}
    records = [r for r in cache.ok_records("train") if r.path in wanted]
    if len(records) < len(wanted):
        missing = wanted - {r.path for r in records}
        failed = sorted(r.path for r in cache.records() if r.path in missing and not r.ok)
        if failed:  # in this cache, but its record says extraction failed: not a wrong --cache
            raise SagaError(f"{cache.root}: {len(failed)} of the run's labelled videos failed extraction there "
                            f"(e.g. {failed[0]}); extract them again (`saga extract ... --retry-failed`)")
        raise SagaError(f"{cache.root}: {len(missing)} of the run's labelled videos are not in "
                        f"this cache; pass the run's own cache ({flag})")
    return records


def split_records(cache: FeatureCache, split: str) -> list[VideoRecord]:
    if split not in ("train", "val", "test"):
        raise SagaError(f"split {split!r}: use train, val or test")
    return list(cache.ok_records(split))


class Embedder:
    """A loaded run that embeds cache records (features checked once per cache)."""

    def __init__(self, run: str | Path, device: str = "cpu", batch_size: int = 256) -> None:
        self.model, self.info = load_model(run)
        self.fingerprint = file_fingerprint(self.info.path / MODEL)  # the weights embedded with (files record it)
        self.device, self.batch_size = device, batch_size
        self._checked: set[str] = set()

    def __call__(self, cache: FeatureCache, records: Sequence[VideoRecord]) -> Inference:
        if cache.cache_id not in self._checked:
            check_features(self.info, cache)
            self._checked.add(cache.cache_id)
        return infer(self.model, self.info, cache, records, self.batch_size, self.device)

    def class_prototypes(self, cache: FeatureCache, flag: str = "--cache") -> tuple[np.ndarray, Inference]:
        """The run's classes' prototypes from its labelled train videos, and that inference."""
        inf = self(cache, labelled_records(self.info, cache, flag))
        return prototypes(inf.embeddings, inf.targets, len(self.info.classes)), inf


def no_val_videos(cache: FeatureCache, whose: str, what: str) -> SagaError:
    """The one-line refusal of a cache whose val split has no video of `whose` classes."""
    return SagaError(f"{cache.root}: no val videos of {whose} classes: cannot fit {what}; extract more videos of "
                     "its classes into this cache (the val split takes its share)")


def known_val(emb: Embedder, cache: FeatureCache, what: str, minimum: int = MIN_VAL,
              warned: set[str] | None = None, records: Sequence[VideoRecord] | None = None) -> Inference:
    """The val split's inference (or of `records`, val videos already chosen); refused without a video of the run's
    classes, a warning below `minimum`. `warned`: the warnings already given (added to), each given once (a LOGO
    fold fits several things on one split)."""
    val = emb(cache, split_records(cache, "val") if records is None else records)
    n = int((val.targets >= 0).sum())
    if n == 0:
        raise no_val_videos(cache, f"run {emb.info.path}'s", what)
    message = (f"{cache.root}: only {n} known val video{'s' * (n > 1)}: {what} is unreliable (fitted on fewer "
               f"than {minimum}); extract more videos of the run's classes into this cache")
    if n < minimum and message not in (warned or set()):
        warnings.warn(message, stacklevel=2)
        if warned is not None:
            warned.add(message)
    return val


def min_val_for(percentile: float) -> int:
    """Known val videos for a meaningful `percentile` threshold: MIN_VAL, and enough to leave one above it."""
    return MIN_VAL if percentile >= 100 else max(MIN_VAL, math.ceil(round(100 / (100 - percentile), 6)))
