"""Temperature scaling (Guo et al. 2017): one scalar T, fitted on validation logits, saved with the run.

Why one scalar: it cannot change any prediction (argmax of z/T is argmax of z), so accuracy
and everything built on the ranking stay as they are, and with ~100 validation videos there
is no data for more parameters. T minimises the validation NLL of softmax(z / T), where z is
the run's window-averaged logits (`Inference.logits`); the 1-D search (golden section on
log T, then a fine grid around it) is deterministic and has no learning rate to tune.

Calibrated probabilities are softmax(z / T) of the mean logits. Note the uncalibrated
convention (`Inference.probs`) is the mean of per-window softmax; with one window per video
the two coincide at T = 1. With several windows they can rank two close classes differently,
so the predicted class is always the uncalibrated argmax (what `evaluate` scores), with its
calibrated probability. ECE uses 15 equal-width confidence bins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saga.errors import SagaError
from saga.explain.seen import seen_problem
from saga.fileio import read_json, write_json
from saga.openworld.fitcache import FIT_CACHE, fit_cache_problem
from saga.openworld.store import class_mismatch, finite
from saga.runs.files import CALIBRATION

BINS = 15
# The discriminant readout's logits are Gaussian log-likelihood differences in d_model dimensions:
# its fitted temperatures were 13-35 on the benchmark (TEAM-L runs hit the former cap of 20), hence the room.
T_RANGE = (0.01, 1000.0)  # every fit ever written lies inside (the first cap was 0.05-20)
FIX = "rerun `saga calibrate`"
SEEN = "seen_in_training"  # optional: only when some val videos were left out
OPTIONAL = (SEEN, *FIT_CACHE)  # absent from a file without them (FIT_CACHE: written before they were recorded)
EDGE = 1.05  # a fitted T within this factor of a bound is at the edge of the search


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row softmax of logits / T in float64 (stable)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    log_z = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float((log_z - z[np.arange(len(targets)), targets]).mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, bounds: tuple[float, float] = T_RANGE,
                    no_error: float = 1.0) -> float:
    """argmin_T NLL(softmax(z/T)) over T in `bounds`: golden section on log T, refined on a grid.

    Rows with target -1 (no class of the run) are left out; val without a single error has no
    minimum and gives `no_error` (1 for logits: leave them as they are). The result is in `bounds`.
    """
    keep = targets >= 0
    z, y = np.asarray(logits)[keep], np.asarray(targets)[keep]
    if len(y) == 0:
        raise SagaError("no validation videos with a class of the run: cannot fit a temperature")
    if (z.argmax(axis=1) == y).all():
        # Every val video right: the NLL falls as T -> 0 without a minimum, so the fit would only
        # sharpen (T = 0.1 on the demo's 45 BIN-L val videos). No evidence either way: the caller's default.
        return float(no_error)
    f = lambda u: nll(z, y, math.exp(u))  # noqa: E731
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    centre = (lo + hi) / 2
    grid = np.linspace(centre - 0.05, centre + 0.05, 41)  # guards against a flat or bumpy minimum
    best = min(np.clip(grid, math.log(bounds[0]), math.log(bounds[1])), key=f)  # at a bound: stay in range
    return float(np.clip(math.exp(best), *bounds))  # exp(log b) may round past b


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Per equal-width confidence bin: count, mean confidence, accuracy; and the ECE (count-weighted gap)."""
    keep = targets >= 0
    p, y = np.asarray(probs)[keep], np.asarray(targets)[keep]
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] bins, 0 in the first
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, conf, minlength=bins)
    acc_sum = np.bincount(idx, correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    gap = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    ece = float((count * gap).sum() / max(len(y), 1))
    as_list = lambda a: [None if not np.isfinite(v) else round(float(v), 6) for v in a]  # noqa: E731
    return {"ece": ece, "n": int(len(y)), "bins": bins, "edges": [round(float(e), 6) for e in edges],
            "count": count.astype(int).tolist(), "confidence": as_list(mean_conf), "accuracy": as_list(acc)}


def ece(probs: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error with `bins` equal-width bins (Guo et al. 2017)."""
    return reliability(probs, targets, bins)["ece"]


@dataclass
class Calibration:
    """A run's fitted temperature and the evidence for it (what calibration.json holds)."""

    temperature: float
    split: str
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    run_model: str  # blake2b of the run's model.safetensors: a retrained run invalidates the file
    classes: list[str]
    seen_in_training: dict[str, Any] | None = None  # val videos left out, the run was trained on (saga.explain.seen)
    cache_id: str | None = None  # the cache fitted on and the digest of the records read (None: older; `fitcache`)
    cache_digest: str | None = None  # all its splits: only in files written before fit_digest
    fit_digest: str | None = None

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities softmax(z / T) of window-averaged logits."""
        return softmax(logits, self.temperature).astype(np.float32)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CALIBRATION
        data = {k: v for k, v in asdict(self).items() if not (k in OPTIONAL and v is None)}
        write_json(path, {"method": "temperature scaling (1-D search on validation NLL)", **data})
        return path

    @classmethod
    def load(cls, folder: str | Path, run_model: str | None = None,
             classes: list[str] | None = None) -> "Calibration":
        """calibration.json of `folder`, every value checked (`check_calibration`); refused if it was fitted on
        other weights than `run_model` (or for other `classes`)."""
        path = Path(folder) / CALIBRATION
        data = read_json(path, missing="; run `saga calibrate RUN --cache CACHE` first", corrupt=f"; {FIX}")
        try:
            cal = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k not in OPTIONAL},
                      **{k: data.get(k) for k in OPTIONAL})
        except (KeyError, TypeError):
            raise SagaError(f"{path}: not a calibration file; {FIX}") from None
        problem = check_calibration(cal, classes)
        if problem:
            raise SagaError(f"{path}: damaged ({problem}); {FIX}")
        if run_model is not None and cal.run_model != run_model:
            raise SagaError(f"{path}: fitted on other weights than the run's model.safetensors; {FIX}")
        return cal


def check_calibration(cal: Calibration, classes: list[str] | None = None) -> str:
    """What no fit writes ("" when nothing): a temperature outside the search's bounds (1e300 made every
    probability uniform, 1e-30 one-hot), other classes than the run's, impossible NLL / ECE / n."""
    lo, hi = T_RANGE
    if not (finite(cal.temperature) and lo <= cal.temperature <= hi):
        return f"temperature {cal.temperature!r} is not a number in [{lo:g}, {hi:g}], the fit's range"
    if class_mismatch(cal.classes, classes):
        return class_mismatch(cal.classes, classes)
    if not (isinstance(cal.n, int) and not isinstance(cal.n, bool) and cal.n >= 1):
        return f"n {cal.n!r} is not a whole number >= 1"
    for key in ("nll_before", "nll_after"):
        if not (finite(getattr(cal, key)) and getattr(cal, key) >= 0):
            return f"{key} {getattr(cal, key)!r} is not a number >= 0"
    for key in ("ece_before", "ece_after"):
        if not (finite(getattr(cal, key)) and 0 <= getattr(cal, key) <= 1):
            return f"{key} {getattr(cal, key)!r} is not a share in [0, 1]"
    return seen_problem(cal.seen_in_training) or fit_cache_problem(asdict(cal))


def degenerate(cal: Calibration) -> str:
    """Why a fitted temperature says little ("" when it does not): at a bound of the search, the NLL had no
    minimum inside it (softmax(z / T) tends to uniform or one-hot), so T is an artefact of the bounds."""
    lo, hi = T_RANGE
    if cal.temperature >= hi / EDGE or cal.temperature <= lo * EDGE:
        return (f"T = {cal.temperature:.4g} is at the edge of the search ({lo:g}-{hi:g}): the validation NLL has "
                "no minimum inside it, so the calibration is degenerate (its probabilities "
                f"{'near uniform' if cal.temperature > 1 else 'near one-hot'})")
    return ""


def fit_calibration(logits: np.ndarray, targets: np.ndarray, probs_before: np.ndarray, run_model: str,
                    classes: list[str], split: str = "val") -> Calibration:
    """Fit T on (logits, targets) and record NLL / ECE before (the run's own probabilities) and after."""
    t = fit_temperature(logits, targets)
    keep = targets >= 0
    z, y = logits[keep], targets[keep]
    return Calibration(temperature=t, split=split, n=int(keep.sum()), nll_before=nll(z, y, 1.0),
                       nll_after=nll(z, y, t), ece_before=ece(probs_before[keep], y),
                       ece_after=ece(softmax(z, t), y), run_model=run_model, classes=list(classes))


def plot_reliability(diagrams: dict[str, dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """A reliability diagram (accuracy vs confidence per bin) for each named `reliability()` result, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saga.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, d in diagrams.items():
        pts = [(c, a) for c, a in zip(d["confidence"], d["accuracy"]) if c is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=f"{name} (ECE {100 * d['ece']:.1f} %)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title or "reliability")
    ax.legend(loc="upper left", fontsize=8)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
