"""The linear probe given the same generator labels as a `sources` run, beside the probe `saga evaluate` shows.

    python bench/probe_sources.py --cache CACHE RUN [RUN ...]

Stage 2 with `sources = True` (the default) trains on the labelled videos' generators and reads
each class out as their mixture; `saga evaluate`'s probe sees only the level's classes. This
fits the same logistic regression (`saga.explain.probe.fit_probe`, C chosen on val) on the run's
labelled videos labelled by generator, sums its probabilities over each class's generators, and
prints its test accuracy beside the class-level probe's: the fair linear baseline for a sources run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from saga.cache.store import FeatureCache
from saga.explain.probe import cache_features, feature_spec, fit_probe
from saga.model.inference import record_targets
from saga.train.readout import source_subclasses


def sources_probe_accuracy(run: Path, cache: FeatureCache) -> tuple[str, float, int]:
    """(level, test accuracy of the generator-labelled probe summed to the level, generators)."""
    config = json.loads((run / "config.json").read_text())
    level, classes, frames = config["level"], config["classes"], config["frames"]
    subset = json.loads((run / "labelled.json").read_text())["classes"]
    chosen = {p: classes.index(c) for c, paths in subset.items() for p in paths}
    recs = [r for r in cache.ok_records("train") if r.path in chosen]
    sub, subclass_of, generators = source_subclasses(recs, np.array([chosen[r.path] for r in recs]))
    number = {g: i for i, g in enumerate(generators)}  # a generator has one class: its name is the subclass
    val = [r for r in cache.ok_records("val") if r.generator in number]
    probe, _ = fit_probe(cache_features(cache, recs, frames), sub, generators, feature_spec(frames, cache.dim),
                         cache_features(cache, val, frames), np.array([number[r.generator] for r in val]))
    test = cache.ok_records("test")
    y = record_targets(test, level, classes)
    keep = [r for r, t in zip(test, y) if t >= 0]
    probs = probe.predict_proba(cache_features(cache, keep, frames))
    groups = np.asarray(subclass_of)
    per_class = np.stack([probs[:, groups == c].sum(axis=1) for c in range(len(classes))], axis=1)
    return level, float((per_class.argmax(axis=1) == y[y >= 0]).mean()), len(generators)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    cache = FeatureCache.open(args.cache)
    for run in args.runs:
        level, accuracy, generators = sources_probe_accuracy(run, cache)
        shown = json.loads((run / "metrics-test.json").read_text()) if (run / "metrics-test.json").is_file() else {}
        beside = shown.get("probe", {}).get("accuracy")
        print(f"{run} {level}: probe on {generators} generators, summed per class {100 * accuracy:.1f} %"
              + (f"; class-level probe {100 * beside:.1f} %, run {100 * shown['accuracy']:.1f} %" if beside else ""),
              flush=True)


if __name__ == "__main__":
    main()
