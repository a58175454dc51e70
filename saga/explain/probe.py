"""`saga probe`: a linear baseline on pooled, shift-invariant statistics of the cached features.

A logistic regression that sees, per video, the mean frame feature plus content-free
temporal statistics of window 0's real frames, trained on exactly the labelled videos
the transformer's stage 2 uses (the seeded stratified subset of `saga.cache.fraction`,
or a run's own labelled.json). If the transformer does not beat it, it has not learned
more than "what the frames look like on average + how much they change".

Features of one video (`video_features`; the statistics alone: `temporal_statistics`):

- the mean of the real frames' features (D values);
- for the cosine distance between frames t and t+lag, and again for the norm of the
  feature difference x[t+lag] - x[t] (two sequences, 23 values each):
  for lag 1..4 the mean, std, min and max over t; the autocorrelation of the lag-1
  sequence at shifts 1..4; its 10 / 50 / 90 % quantiles.

Only pairs of *real* frames count (padding and dropped frames change nothing), and none
of the statistics depends on where in the clip a periodic artefact starts (up to the
clip's ends: a 16-frame clip holds a whole number of periods only for some phases).
Missing values (a clip too short for a lag) are 0. The frames are those of window 0:
all T cached frames by default, or the run's T' centred sub-window (`frames`), exactly
as `saga.model.inference.take_subwindow` selects them for the transformer.

Labels: with `sources` (the default of `saga probe`, and what `evaluate` uses beside a run
trained with `sources`) the regression is fitted on the labelled videos' generators and each
class's probability is the sum of its generators': the probe gets exactly the labels the run got.
The fit balances generators, so each generator's intercept is then lowered by log(its class's
labelled generators), as the run's readout does (`mixture_bias`): summed, a class of three
generators would otherwise start with three times the prior of a class of one.

Training: standardise (fit on the labelled train videos only), then sklearn's
LogisticRegression (lbfgs, multinomial, class_weight="balanced"). C is chosen from
`C_GRID` by the macro accuracy of the class decision (fitted on sources: the summed
classes) on the cache's val videos of the classes it can predict, as the run validates
(ties: the smaller C); without val videos C = 1.0. Scored on the val split itself (`--split val`), C is
chosen by stratified k-fold cross-validation on the labelled train videos instead (k = 5, or the fewest
labelled videos of a class; 1.0 when a class has one): picked on the videos it is scored on, the score
was optimistic. `selection` records which split chose C (`selected_on`: "val", "train" or null).
The fitted model is saved as safetensors (coefficients, intercepts, scaler mean and scale;
classes and the feature spec in its metadata), never pickle, and predicts with numpy alone.

What it is fitted on for a run, and the `saga probe` folder: `saga.explain.probe_runs`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from saga.cache.manifest import VideoRecord
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.scores import compute_metrics, scored_classes
from saga.explain.pooled_stats import (STAT_NAMES, cache_features, feature_spec,  # noqa: F401 - re-exported
                                      temporal_statistics, video_features)
from saga.fileio import loads, write_bytes
from saga.model.inference import Inference, record_targets
from saga.train.readout import mixture_bias, pool_rows, source_subclasses

C_GRID = (0.01, 0.1, 1.0, 10.0)
DEFAULT_C = 1.0
CV_FOLDS = 5
MAX_ITER = 2000
PROBE_FILE = "probe.safetensors"


# -- the model -----------------------------------------------------------------------------------
@dataclass
class Probe:
    """A fitted probe: standardise, then a linear layer; numpy only, so loading runs no code."""

    classes: list[str]
    coef: np.ndarray  # (C, F), or (1, F) for two classes (sklearn's binary form)
    intercept: np.ndarray  # (C,) or (1,)
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    spec: dict[str, Any]
    C: float
    subclass_of: list[int] = field(default_factory=list)  # fitted on sources: each row's class ([]: rows = classes)
    sources: list[str] = field(default_factory=list)  # the rows' generators, when fitted on sources

    def row_logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        s = z @ self.coef.T.astype(np.float64) + self.intercept.astype(np.float64)
        if self.coef.shape[0] == 1 and len(self.classes) == 2:
            s = np.concatenate([np.zeros_like(s), s], axis=1)
        return s

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (fitted on sources: each class's generators' summed)."""
        s = pool_rows(self.row_logits(x), self.subclass_of, len(self.classes))  # as the model pools its rows
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save

        from saga.runs.files import canonical_header

        tensors = {"coef": self.coef, "intercept": self.intercept, "mean": self.mean, "scale": self.scale}
        meta = {"classes": json.dumps(self.classes), "spec": json.dumps(self.spec), "C": json.dumps(self.C),
                "format": "saga-probe", "subclass_of": json.dumps(self.subclass_of), "sources": json.dumps(self.sources)}
        # serialised in memory, written like every other file (save_file made it 0600, unreadable to a group)
        write_bytes(path, canonical_header(save({k: np.ascontiguousarray(v, dtype=np.float64)
                                                 for k, v in tensors.items()}, metadata=meta)))

    @classmethod
    def load(cls, path: str | Path) -> "Probe":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        path = Path(path)
        if path.is_dir():
            path = path / PROBE_FILE
        if not path.is_file():
            raise SagaError(f"{path}: missing; pass a folder written by `saga probe`")
        try:
            with safe_open(str(path), framework="np") as fh:
                meta = dict(fh.metadata() or {})
            t = load_file(str(path))
            groups = [int(g) for g in loads(meta.get("subclass_of", "[]"))]
            probe = cls(loads(meta["classes"]), t["coef"], t["intercept"], t["mean"], t["scale"],
                        loads(meta["spec"]), float(loads(meta["C"])), groups,
                        [str(g) for g in loads(meta.get("sources", "[]"))])
        except (KeyError, ValueError, OSError, TypeError) as exc:
            raise SagaError(f"{path}: not a saga probe file ({exc})") from None
        if groups and (len(groups) != len(probe.coef) or sorted(set(groups)) != list(range(len(probe.classes)))):
            raise SagaError(f"{path}: its subclass_of does not fit its {len(probe.classes)} classes; the file is damaged")
        return probe


def _macro(y: np.ndarray, pred: np.ndarray) -> float:
    accs = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(accs)) if accs else 0.0


def fit_probe(x: np.ndarray, y: np.ndarray, classes: Sequence[str], spec: dict[str, Any],
              x_val: np.ndarray | None = None, y_val: np.ndarray | None = None, grid: Sequence[float] = C_GRID,
              subclass_of: Sequence[int] = (), sources: Sequence[str] = (),
              cross_validate: bool = False) -> tuple[Probe, dict[str, Any]]:
    """Standardise on x, fit the logistic regression (C chosen on the val videos), return it and how C was chosen.

    `y`: each video's class; with `subclass_of` (each row's class, `sources` its generator) each video's row.
    `y_val`: the val videos' classes: C is the one whose class decision (rows pooled) has the best macro accuracy.
    `cross_validate` (no val videos given): C by k-fold cross-validation on x instead (`_cross_validated`).
    """
    groups = [int(g) for g in subclass_of]
    present = np.unique(y)
    covered = {groups[i] for i in present} if groups else set(present.tolist())
    if len(covered) < 2:
        raise SagaError(f"the labelled train videos cover {len(covered)} class(es); the probe needs >= 2")

    def fit(c: float, rows: np.ndarray | slice = slice(None)) -> Probe:
        return _fit(x[rows], y[rows], c, classes, spec, groups, sources)

    use_val = x_val is not None and y_val is not None and len(y_val) > 0
    if not use_val and cross_validate:
        return _cross_validated(fit, x, np.array([groups[i] for i in y]) if groups else y, grid, bool(groups))
    scores: dict[str, float] = {}
    best: tuple[float, Probe] | None = None
    for c in grid if use_val else ():
        probe = fit(c)
        score = _macro(np.asarray(y_val), probe.predict(x_val))
        scores[repr(float(c))] = score
        if best is None or score > best[0] + 1e-12:  # ties: the smaller C (the grid ascends)
            best = (score, probe)
    probe = best[1] if best else fit(DEFAULT_C)
    choice = {"C": probe.C, "grid": list(map(float, grid)) if use_val else None,
              "val_macro_accuracy": scores or None,
              "selected_by": ("val macro accuracy" + (" of the summed classes" if groups else "")) if use_val
              else "default", "selected_on": "val" if use_val else None}
    return probe, choice


def _fit(x: np.ndarray, y: np.ndarray, c: float, classes: Sequence[str], spec: dict[str, Any], groups: list[int],
         sources: Sequence[str]) -> Probe:
    """Standardise on x (a feature of zero spread keeps scale 1), then the logistic regression at C = c."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    coef, intercept = _rows(_logistic((x - scaler.mean_) / scale, y, c), len(groups) or len(classes),
                            compact=not groups)
    if groups:  # each row weighted 1 / its class's rows: a class with many generators gets no head start
        intercept = mixture_bias(intercept, groups)
    return Probe(list(classes), coef, intercept, np.asarray(scaler.mean_, np.float64),
                 np.asarray(scale, np.float64), spec, float(c), groups, [str(g) for g in sources])


def _cross_validated(fit: Callable[..., Probe], x: np.ndarray, target: np.ndarray, grid: Sequence[float],
                     summed: bool) -> tuple[Probe, dict[str, Any]]:
    """C by the out-of-fold macro accuracy of the class decision over stratified k folds of the labelled train videos
    (seeded; ties: the smaller C), refitted on all of them; C = 1.0 when a class has a single labelled video.

    Why: when the val split is the one scored, choosing C on it too made the reported score optimistic."""
    from sklearn.model_selection import StratifiedKFold

    k = min(CV_FOLDS, int(np.unique(target, return_counts=True)[1].min()))
    if k < 2:
        return fit(DEFAULT_C), {"C": DEFAULT_C, "grid": None, "val_macro_accuracy": None, "selected_on": None,
                                "selected_by": "default (a class has a single labelled train video: no "
                                               "cross-validation; the val split, scored, does not choose C)"}
    folds = list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros((len(target), 1)), target))
    scores: dict[str, float] = {}
    best = float(grid[0])
    for c in grid:
        pred = np.empty_like(target)
        for train, held in folds:
            pred[held] = fit(c, train).predict(x[held])
        scores[repr(float(c))] = _macro(target, pred)
        if scores[repr(float(c))] > scores[repr(best)] + 1e-12:  # ties: the smaller C (the grid ascends)
            best = float(c)
    choice = {"C": float(best), "grid": list(map(float, grid)), "val_macro_accuracy": None,
              "cv_macro_accuracy": scores, "folds": k, "selected_on": "train",
              "selected_by": f"{k}-fold cross-validated macro accuracy on the labelled train videos"
                             + (" of the summed classes" if summed else "")}
    return fit(best), choice


def choice_text(choice: dict[str, Any]) -> str:
    """How C was chosen, for a line of output ("C = 0.1, chosen on the val videos")."""
    on = choice.get("selected_on")
    how = ("chosen on the val videos" if on == "val" else f"chosen by {choice.get('folds')}-fold cross-validation "
           "on the labelled train videos, as the val split is the one scored" if on == "train" else "the default")
    return f"C = {float(choice.get('C', DEFAULT_C)):g}, {how}"


def _logistic(z: np.ndarray, y: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER, class_weight="balanced")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on separable toy data: the fit is still usable
        return clf.fit(z, y)


def _rows(clf: Any, n_rows: int, compact: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """coef and intercept over all `n_rows` rows: a row absent from the training videos is never predicted.
    `compact` keeps sklearn's binary form (one row) for two rows."""
    if len(clf.classes_) == 2 and n_rows == 2 and compact:
        return np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
    coef = np.zeros((n_rows, clf.coef_.shape[1]))
    intercept = np.full(n_rows, -1e4)
    if len(clf.classes_) == 2:  # binary form of a longer list: expand to two rows
        coef[clf.classes_] = np.vstack([-clf.coef_ / 2, clf.coef_ / 2])
        intercept[clf.classes_] = [-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
    else:
        coef[clf.classes_] = clf.coef_
        intercept[clf.classes_] = clf.intercept_
    return coef, intercept


# -- fitting and evaluating ----------------------------------------------------------------------
def _records_of(cache: FeatureCache, subset: dict[str, list[str]]) -> tuple[list[VideoRecord], np.ndarray]:
    classes = list(subset)
    chosen = {p: i for i, c in enumerate(classes) for p in subset[c]}
    recs = [r for r in cache.ok_records("train") if r.path in chosen]
    return recs, np.array([chosen[r.path] for r in recs], np.int64)


def train_and_evaluate(cache: FeatureCache, level: str, subset: dict[str, list[str]], frames: int | None,
                       split: str = "test", classes: Sequence[str] | None = None,
                       keep_correct: bool = False, sources: bool = False,
                       leave_out: frozenset[str] = frozenset()) -> tuple[Probe, dict[str, Any]]:
    """Fit on `subset` (class -> train paths), select C on val (scoring val: by cross-validation on the
    labelled train videos), and compute metrics on `split`.

    `classes` fixes the output order (a run's class list, so the probe's metrics line up
    with the transformer's); default: the subset's classes. `sources`: fit on the labelled
    videos' generators and sum each class's (as stage 2 with `sources` trains), so a sources
    run is compared with a probe that had the same labels.
    """
    classes = list(classes) if classes is not None else list(subset)
    recs, y_sub = _records_of(cache, subset)
    if not recs:
        raise SagaError(f"{cache.root}: no labelled train videos at {level}; the probe needs a train split")
    index = {c: i for i, c in enumerate(classes)}
    sub_classes = list(subset)
    y = np.array([index.get(sub_classes[k], -1) for k in y_sub], np.int64)
    keep = y >= 0
    recs, y = [r for r, k in zip(recs, keep) if k], y[keep]
    spec = feature_spec(frames, cache.dim)
    x = cache_features(cache, recs, frames)
    cross_validate = split == "val"  # C is not chosen on the videos it is scored on
    val = [] if cross_validate else cache.ok_records("val")
    seen = set(y.tolist())
    val = [r for r, t in zip(val, record_targets(val, level, classes)) if t in seen]  # classes it can predict
    yv = record_targets(val, level, classes)
    xv = cache_features(cache, val, frames) if val else None
    sub, subclass_of, generators = source_subclasses(recs, y)
    if sources and len(subclass_of) > len(seen):
        probe, choice = fit_probe(x, sub, classes, spec, xv, yv if val else None,
                                  subclass_of=subclass_of, sources=generators, cross_validate=cross_validate)
    else:
        probe, choice = fit_probe(x, y, classes, spec, xv, yv if val else None, cross_validate=cross_validate)
    return probe, _train_metrics(probe, cache, level, split, keep_correct, y, classes, len(val), choice, leave_out)


def _train_metrics(probe: Probe, cache: FeatureCache, level: str, split: str, keep_correct: bool, y: np.ndarray,
                   classes: Sequence[str], n_val: int, choice: dict[str, Any],
                   leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    metrics = evaluate_probe(probe, cache, level, split, keep_correct, leave_out)
    metrics.update({"n_train": int(len(y)), "train_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)},
                    "n_val": n_val, "C": probe.C, "selection": choice, "sources": probe.sources or None})
    return metrics


def evaluate_probe(probe: Probe, cache: FeatureCache, level: str, split: str = "test",
                   keep_correct: bool = False, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """compute_metrics (with intervals) of a probe on a cache split's videos that have a class at `level`.

    `keep_correct` adds "correct" (per video, in the split's order) for a paired comparison; the
    caller removes it before writing the metrics. `leave_out`: paths not scored (those the run beside it
    was trained or validated on, `saga.explain.seen`), so both are scored on the same videos.
    """
    records = cache.ok_records(split)
    classes, unseen = scored_classes(records, level, probe.classes)
    targets = record_targets(records, level, classes)
    labelled = [r for r, t in zip(records, targets) if t >= 0 and r.path not in leave_out]
    classes, unseen = scored_classes(labelled, level, probe.classes)
    if not labelled:
        raise SagaError(f"{cache.root}: no '{split}' video has a class at {level}; pick another --split")
    x = cache_features(cache, labelled, probe.spec.get("frames"))
    probs = probe.predict_proba(x).astype(np.float32)
    n = len(labelled)
    inf = Inference(np.log(np.maximum(probs, 1e-30)), probs, np.zeros((n, 0), np.float32),
                    record_targets(labelled, level, classes), [r.path for r in labelled],
                    np.zeros((n, 0), bool))
    out = {"split": split, **compute_metrics(inf, classes, level), "excluded": len(records) - n,
           "untrained_classes": unseen, "cache_id": cache.cache_id}
    if keep_correct:
        out["correct"] = inf.preds == inf.targets
    return out


__all__ = ["Probe", "STAT_NAMES", "cache_features", "choice_text", "evaluate_probe", "fit_probe", "temporal_statistics",
           "train_and_evaluate", "video_features"]
