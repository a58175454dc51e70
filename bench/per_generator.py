"""Does labelling every generator of a class pay? Paired stage-2 runs, default draw against `--per-generator`.

    python bench/per_generator.py --cache CACHE --base RUN [RUN ...] --variant RUN [RUN ...] [--out results.json]

`--base` and `--variant` are finished stage-2 runs on the same cache, paired in the order given
(same seed, same options but the labelled subset's rule, e.g. `--per-generator 0` against `1`).
Each run is loaded and scored on the test split as `saga evaluate` does. Per pair: the accuracy of
both, the labels each used, the generators with test videos the base run had no labelled video of
(a class's unlabelled generators, docs/ablation.md) and the accuracy of both on those generators'
test videos alone. Then the mean of each with its 95 % t-interval over pairs and the paired gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from saga.ablate import half_text, interval95
from saga.cache.store import FeatureCache
from saga.fileio import read_json
from saga.model.inference import infer
from saga.runs import LABELLED, load_model


def score(run: Path, cache: FeatureCache) -> tuple[np.ndarray, list[Any], dict[str, Any]]:
    """Per test video: right or not (the videos with a class at the run's level), those records, labelled.json."""
    model, info = load_model(run)
    test = [r for r in cache.ok_records("test") if r.labels.get(info.level) in info.classes]
    result = infer(model, info, cache, test)
    return result.probs.argmax(1) == result.targets, test, read_json(run / LABELLED)


def pair(base: Path, variant: Path, cache: FeatureCache) -> dict[str, Any]:
    right_b, test, lab_b = score(base, cache)
    right_v, test_v, lab_v = score(variant, cache)
    if [r.path for r in test] != [r.path for r in test_v]:
        raise SystemExit(f"{base} and {variant} are not at the same level; pair runs of one level")
    generator = {r.path: r.generator for r in cache.ok_records("train")}
    labelled = {generator[p] for paths in lab_b["classes"].values() for p in paths}
    missing = sorted({r.generator for r in test} - labelled)
    on = np.array([r.generator in missing for r in test])
    pct = lambda right, mask: float(100 * right[mask].mean()) if mask.any() else None  # noqa: E731
    everything = np.ones(len(test), bool)
    return {"base": str(base), "variant": str(variant), "test_videos": len(test),
            "labels": [sum(map(len, lab_b["classes"].values())), sum(map(len, lab_v["classes"].values()))],
            "per_generator": [lab_b.get("per_generator", 0), lab_v.get("per_generator", 0)],
            "accuracy": [pct(right_b, everything), pct(right_v, everything)],
            "unlabelled_generators": missing, "their_test_videos": int(on.sum()),
            "accuracy_on_them": [pct(right_b, on), pct(right_v, on)]}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_ci(values: list[float]) -> list[float]:
        return [statistics.fmean(values), interval95(values)]

    out = {name: mean_ci([r["accuracy"][i] for r in rows]) for i, name in enumerate(("base", "variant"))}
    out["gain"] = mean_ci([r["accuracy"][1] - r["accuracy"][0] for r in rows])
    on = [r for r in rows if r["accuracy_on_them"][0] is not None]
    if on:
        out["on_them"] = [mean_ci([r["accuracy_on_them"][i] for r in on]) for i in (0, 1)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--base", type=Path, nargs="+", required=True)
    ap.add_argument("--variant", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if len(args.base) != len(args.variant):
        raise SystemExit(f"{len(args.base)} --base runs but {len(args.variant)} --variant runs; pair them one to one")
    cache = FeatureCache.open(args.cache)
    rows = [pair(b, v, cache) for b, v in zip(args.base, args.variant)]
    for r in rows:
        print(f"{Path(r['variant']).name}: {r['accuracy'][0]:.1f} -> {r['accuracy'][1]:.1f} "
              f"({r['labels'][0]} -> {r['labels'][1]} labels); {r['their_test_videos']} test videos of "
              f"{', '.join(r['unlabelled_generators']) or 'no unlabelled generator'}")
    result = {"cache": str(args.cache), "pairs": rows, "summary": summarise(rows)}
    s = result["summary"]
    print(f"base {s['base'][0]:.1f} ± {half_text(s['base'][1])}, variant {s['variant'][0]:.1f} ± "
          f"{half_text(s['variant'][1])}, gain {s['gain'][0]:+.1f} ± {half_text(s['gain'][1])} "
          f"(mean ± 95 % t-interval over {len(rows)} pairs)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
