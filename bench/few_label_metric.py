"""Why 5 labels per class stall: does a metric exist in which they suffice, and can it be found without source labels?

    python bench/few_label_metric.py --cache CACHE [--level GEN-L] [--floor 5] [--seeds 0 1 2]

Features: the probe's pooled statistics of each video (`saga.explain.pooled_stats`, centred
T' = 16 window), standardised on the train split. Labels: `labelled_subset(fraction=0.005,
floor=N, seed)` per seed, the rule `saga ablate` uses. Every row classifies the test split's
fakes (real videos excluded: the question is which generator) and reports the macro accuracy per
seed. The "oracle" rows learn the metric from every train label: they show what a metric can do,
not something a user can run. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from saga.cache.fraction import labelled_subset
from saga.cache.store import FeatureCache
from saga.explain.pooled_stats import cache_features
from saga.taxonomy import REAL

Classifier = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def load(cache: FeatureCache, level: str, frames: int) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    out = {}
    for split in ("train", "test"):
        recs = list(cache.ok_records(split))
        out[split] = (cache_features(cache, recs, frames).astype(np.float64),
                      np.array([r.labels.get(level, "") for r in recs]), [r.path for r in recs])
    return out


def macro(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def within_scatter(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    means = {c: x[y == c].mean(0) for c in np.unique(y)}
    r = x - np.stack([means[c] for c in y])
    return r.T @ r / len(x)


def shrink(s: np.ndarray, amount: float) -> np.ndarray:
    return (1 - amount) * s + amount * np.trace(s) / len(s) * np.eye(len(s))


def whitener(s: np.ndarray, eps: float) -> np.ndarray:
    w, v = np.linalg.eigh(s + eps * np.eye(len(s)))
    return v / np.sqrt(np.maximum(w, 1e-12))


def nearest_mean(x: np.ndarray, y: np.ndarray, q: np.ndarray) -> np.ndarray:
    classes = np.unique(y)
    mu = np.stack([x[y == c].mean(0) for c in classes])
    d = (q * q).sum(1)[:, None] - 2 * q @ mu.T + (mu * mu).sum(1)[None]
    return classes[d.argmin(1)]


def logistic(x: np.ndarray, y: np.ndarray, q: np.ndarray) -> np.ndarray:
    sc = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(x), y).predict(sc.transform(q))


def lda(cov: np.ndarray) -> Classifier:
    """Linear discriminant with a given (shrunk) covariance; only the class means come from the labels."""
    precision = np.linalg.inv(cov)

    def classify(x: np.ndarray, y: np.ndarray, q: np.ndarray) -> np.ndarray:
        classes = np.unique(y)
        mu = np.stack([x[y == c].mean(0) for c in classes])
        score = 2 * q @ precision @ mu.T - np.einsum("cd,de,ce->c", mu, precision, mu)[None]
        return classes[score.argmax(1)]
    return classify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--level", default="GEN-L")
    ap.add_argument("--floor", type=int, default=5)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    cache = FeatureCache.open(args.cache)
    data = load(cache, args.level, args.frames)
    xtr, ytr, ptr = data["train"]
    xte, yte, _ = data["test"]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    fake_tr, fake_te = ytr != REAL, yte != REAL
    reals = xtr[~fake_tr]
    oracle = whitener(within_scatter(xtr[fake_tr], ytr[fake_tr]), 0.01)
    real_white = whitener(np.cov(reals.T), 0.01)
    real_cov = np.cov(reals.T)
    dim = cache.dim  # the probe's input: [mean feature (dim) | temporal statistics]
    _, _, vt = np.linalg.svd(xtr[:, :dim] - xtr[:, :dim].mean(0), full_matrices=False)

    def stats_and_pca(x: np.ndarray) -> np.ndarray:  # what θ's default inputs are made of
        return np.hstack([x[:, dim:], x[:, :dim] @ vt[:32].T])
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subset = labelled_subset(cache.records(), args.level, cache.taxonomy, 0.005, args.floor, seed)
        chosen = {p for c, paths in subset.items() if c != REAL for p in paths}
        idx = np.array([i for i, p in enumerate(ptr) if p in chosen])
        x, y, q = xtr[idx], ytr[idx], xte[fake_te]
        s5 = within_scatter(x, y)
        cells: dict[str, np.ndarray] = {
            "standardised, logistic regression": logistic(x, y, q),
            "standardised, nearest class mean": nearest_mean(x, y, q),
            "temporal statistics only, logistic regression": logistic(x[:, dim:], y, q[:, dim:]),
            "temporal statistics + 32 principal components of the mean feature, logistic regression":
                logistic(stats_and_pca(x), y, stats_and_pca(q)),
            "oracle within-class whitening (all train labels), nearest class mean": nearest_mean(x @ oracle, y, q @ oracle),
            "the labelled videos' within-class covariance (shrunk 0.05), LDA": lda(shrink(s5, 0.05))(x, y, q),
            "the same mixed 0.5 with the real videos' covariance, LDA": lda(shrink(0.5 * s5 + 0.5 * real_cov, 0.05))(x, y, q),
            "real videos' covariance whitened (no source labels), nearest class mean": nearest_mean(x @ real_white, y, q @ real_white),
        }
        for name, pred in cells.items():
            rows.setdefault(name, []).append(round(100 * macro(yte[fake_te], pred), 1))
    print(json.dumps({"cache": str(args.cache), "level": args.level, "floor": args.floor, "seeds": args.seeds,
                      "n_test": int(fake_te.sum()), "macro_accuracy_per_seed": rows,
                      "mean": {k: round(float(np.mean(v)), 1) for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
