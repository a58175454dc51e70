"""Metrics of an `Inference`: accuracy, macro accuracy, per-class accuracy, confusion, AUC, 95 % intervals.

Pure functions of the model's (or the probe's) outputs, so tests compare them with sklearn.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from saga.explain.intervals import FEW, intervals, wilson
from saga.model.inference import Inference
from saga.taxonomy import FAKE


def scored_classes(records: Sequence[Any], level: str, classes: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """The classes to score on, and the videos of each class the model cannot output.

    A class with test videos but no training videos (it got no labelled video, or a generator
    with only test videos) is not among a run's (or a probe's) classes. Its videos still count,
    as errors, after the model's classes; leaving them out would raise accuracy silently.
    """
    known = set(classes)
    missing: dict[str, int] = {}
    for record in records:
        label = record.labels.get(level)
        if label is not None and label not in known:
            missing[label] = missing.get(label, 0) + 1
    return [*classes, *sorted(missing)], dict(sorted(missing.items()))


def compute_metrics(inference: Inference, classes: Sequence[str], level: str) -> dict[str, Any]:
    """Metrics of the records with a class (target >= 0); pure, so tests compare it with sklearn."""
    keep = inference.targets >= 0
    y, pred = inference.targets[keep], inference.preds[keep]
    c = len(classes)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    per_n = conf.sum(axis=1)
    per_acc = [float(conf[i, i] / per_n[i]) if per_n[i] else None for i in range(c)]
    present = [a for a in per_acc if a is not None]
    out: dict[str, Any] = {
        "level": level,
        "n": int(keep.sum()),
        "accuracy": float((y == pred).mean()) if len(y) else None,
        "macro_accuracy": float(np.mean(present)) if present else None,
        "per_class": dict(zip(classes, per_acc)),
        "per_class_n": {cls: int(k) for cls, k in zip(classes, per_n)},
        "confusion": conf.tolist(),
        "classes": list(classes),
        "auc": None,
    }
    ci = intervals(conf)
    out["accuracy_ci"], out["macro_accuracy_ci"], out["ci"] = ci["accuracy_ci"], ci["macro_accuracy_ci"], ci["ci"]
    out["per_class_ci"] = dict(zip(classes, ci["per_class_ci"]))
    out["few"] = [cls for cls, k in zip(classes, per_n) if 0 < k < FEW]
    if level == "BIN-L" and FAKE in classes[:inference.probs.shape[1]]:  # a model that outputs "fake"
        out["auc"] = binary_auc(inference.probs[keep][:, list(classes).index(FAKE)], y == list(classes).index(FAKE))
    return out


def source_metrics(inference: Inference, generators: Sequence[str], subclass_of: Sequence[int],
                   names: Sequence[str]) -> dict[str, Any] | None:
    """How often `saga predict`'s "most like its labelled generator" is the video's own generator.

    Counted over the videos it can be right for: class attributed correctly, the class has
    >= 2 labelled generators, and the video's generator is one of them. None when the run's
    head has no named generator rows. `chance` is the mean of 1 / (labelled generators of
    the video's class) over those videos.
    """
    if inference.row_probs is None or not names:
        return None
    groups = np.asarray(subclass_of)
    right, chance = [], []
    for probs, target, pred, gen in zip(inference.row_probs, inference.targets, inference.preds, generators):
        rows = np.flatnonzero(groups == target)
        own = [names[i] for i in rows]
        if target < 0 or pred != target or len(rows) < 2 or gen not in own:
            continue
        right.append(own[int(probs[rows].argmax())] == gen)
        chance.append(1 / len(rows))
    n, k = len(right), int(sum(right))
    return {"n": n, "accuracy": k / n if n else None, "accuracy_ci": list(wilson(k, n) or []) or None,
            "chance": float(np.mean(chance)) if chance else None}


def binary_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of p(fake); None when only one of the two classes is present (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive.astype(int), score))
