"""Open-set attribution: a video far from every known class in φ space is "unknown source".

Two scores (higher = more unknown), both on the run's L2-normalised φ:

- `prototype`: 1 − max cosine to the class prototypes (mean φ of each class's labelled train videos);
- `knn`: 1 − mean cosine to the k nearest labelled train videos (an exact FAISS inner-product index).

The threshold is the `percentile` (default 95) of the score over the *known* validation videos:
by construction about 5 % of known videos are called unknown (the false-unknown rate), whatever
the unseen generators look like: the only choice that needs no unknown data to tune. Evaluation
reports what it costs and buys: AUROC known vs unseen (threshold-free) and OSCR (Dhamija et al.
2018: the area under correct-classification rate of known videos vs false-acceptance rate of
unknown ones, as the threshold moves), plus the rates at the calibrated threshold.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saga.errors import SagaError
from saga.explain.seen import seen_problem
from saga.openworld.fitcache import FIT_CACHE, fit_cache_problem
from saga.openworld.store import class_mismatch, edited, finite, read_pair, save_pair
from saga.runs.files import OPENSET, OPENSET_STEM

STEM = OPENSET_STEM  # OPENSET = "openset.json" + openset.<hash>.safetensors (prototypes, k-NN bank)
KINDS = ("prototype", "knn")
SCORE_RANGE = (0.0, 2.0)  # both scores are 1 - a cosine of unit vectors
ROUNDING = 1e-4  # float32 cosines of unit vectors may pass 1 by a few ulps


def prototype_scores(embeddings: np.ndarray, protos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 − max cosine to a prototype, index of the nearest prototype) per row; zero prototypes never win."""
    sims = embeddings @ protos.T
    sims[:, ~np.any(protos != 0, axis=1)] = -np.inf
    return (1.0 - sims.max(axis=1)).astype(np.float32), sims.argmax(axis=1)


def knn_scores(embeddings: np.ndarray, bank: np.ndarray, k: int = 5) -> np.ndarray:
    """1 − mean cosine to the k nearest rows of `bank` (exact FAISS inner product on unit vectors)."""
    import faiss

    if len(bank) == 0:
        raise SagaError("the labelled pool is empty: no k-NN score without labelled train videos")
    k = min(k, len(bank))
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(np.ascontiguousarray(bank, np.float32))
    sims, _ = index.search(np.ascontiguousarray(embeddings, np.float32), k)
    return (1.0 - sims.mean(axis=1)).astype(np.float32)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of an unknown > score of a known), ties counting one half (Mann–Whitney); NaN if a side is empty."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    allv = np.concatenate([known, unknown])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    _, start, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1.0  # average 1-based rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    r_unknown = ranks[len(known):].sum()
    n1 = len(unknown)
    return float((r_unknown - n1 * (n1 + 1) / 2.0) / (n1 * len(known)))


def oscr(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Area under CCR(θ) vs FPR(θ) (Dhamija et al. 2018), accepting a video when its score <= θ.

    CCR(θ): known videos accepted *and* correctly classified / all known; FPR(θ): unknown videos
    accepted / all unknown. θ sweeps every score (ties move together); the curve runs from (0, 0)
    to (1, closed-set accuracy). 1.0 = perfect rejection and classification; NaN if a side is empty.
    """
    ks, kc, us = np.asarray(known_scores), np.asarray(known_correct, bool), np.asarray(unknown_scores)
    if len(ks) == 0 or len(us) == 0:
        return float("nan")
    thresholds = np.unique(np.concatenate([ks, us]))
    ccr = np.array([0.0] + [float((kc & (ks <= t)).sum()) / len(ks) for t in thresholds])
    fpr = np.array([0.0] + [float((us <= t).sum()) / len(us) for t in thresholds])
    return float(np.sum((fpr[1:] - fpr[:-1]) * (ccr[1:] + ccr[:-1]) / 2.0))


def threshold(known_val_scores: np.ndarray, percentile: float = 95.0) -> float:
    """The score below which `percentile` % of known validation videos fall (numpy's linear interpolation)."""
    if len(known_val_scores) == 0:
        raise SagaError("no known validation videos: cannot calibrate the unknown threshold (the cache's val "
                        "split is empty for the run's classes)")
    check_percentile(percentile)
    return float(np.percentile(known_val_scores, percentile))


def check_percentile(percentile: float) -> None:
    if not 0.0 < percentile <= 100.0:  # NaN fails too
        raise SagaError(f"percentile must be in (0, 100], got {percentile}")


def check_options(kind: str, k: int, percentile: float) -> None:
    """Refuse a bad --kind / --k / --percentile in one line, before any video is embedded."""
    if kind not in KINDS:
        raise SagaError(f"open-set score {kind!r}: use one of {', '.join(KINDS)}")
    if int(k) < 1:
        raise SagaError(f"--k must be >= 1 (neighbours of the knn score), got {k}")
    check_percentile(percentile)


def rates(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray, thr: float) -> dict:
    """At one threshold: false-unknown rate, unknown detection rate, and accuracy of the accepted known."""
    accepted = known_scores <= thr
    return {"threshold": thr, "false_unknown": float((~accepted).mean()) if len(known_scores) else None,
            "unknown_detected": float((unknown_scores > thr).mean()) if len(unknown_scores) else None,
            "ccr": float((accepted & known_correct).mean()) if len(known_scores) else None}


@dataclass
class OpenSet:
    """A fitted unknown-source detector for one run (what openset.json and its tensors hold)."""

    kind: str
    k: int
    percentile: float
    threshold: float
    run_model: str
    classes: list[str]
    n_val: int
    prototypes: np.ndarray = field(repr=False)
    bank: np.ndarray = field(repr=False)
    val_false_unknown: float | None = None  # share of the known val videos above the threshold (None: older file)
    k_requested: int | None = None  # the k asked for when the bank had fewer videos (k: the one used)
    seen_in_training: dict[str, Any] | None = None  # val videos left out: the run was trained on them
    cache_id: str | None = None  # the cache fitted on and the digest of the records read (None: older; `fitcache`)
    cache_digest: str | None = None  # all its splits: only in files written before fit_digest
    fit_digest: str | None = None

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Unknown-ness of L2-normalised φ rows (higher = farther from the known classes)."""
        if self.kind == "knn":
            return knn_scores(embeddings, self.bank, self.k)
        return prototype_scores(embeddings, self.prototypes)[0]

    def unknown(self, embeddings: np.ndarray) -> np.ndarray:
        """True where the video is called "unknown source" (score above the calibrated threshold)."""
        return self.score(embeddings) > self.threshold

    def save(self, folder: str | Path) -> Path:
        """openset.json + its content-addressed tensors file, committed together (`store`)."""
        optional = ("k_requested", "seen_in_training", *FIT_CACHE)  # left out when None (FIT_CACHE: `fitcache`)
        meta = {k: v for k, v in asdict(self).items()
                if k not in ("prototypes", "bank") and not (k in optional and v is None)}
        return save_pair(Path(folder), STEM, {"prototypes": self.prototypes, "bank": self.bank}, meta, seal=True)

    @classmethod
    def load(cls, folder: str | Path, run_model: str | None = None, classes: list[str] | None = None) -> "OpenSet":
        """openset.json and its tensors, every value checked (`check_openset`) and compared with the values the
        fit sealed in the tensors file (`store.edited`); refused if fitted on other weights than `run_model`
        (or for other `classes`)."""
        folder = Path(folder)
        meta, tensors, sealed = read_pair(folder, STEM, "; run `saga openset fit RUN --cache CACHE`")
        if run_model is not None and meta.get("run_model") != run_model:
            raise SagaError(f"{folder / OPENSET}: fitted on other weights than the run's; rerun `saga openset fit`")
        try:
            fields = {k: meta[k] for k in ("kind", "k", "percentile", "threshold", "run_model", "classes", "n_val")}
            det = cls(**fields, prototypes=tensors["prototypes"], bank=tensors["bank"],
                      val_false_unknown=meta.get("val_false_unknown"), k_requested=meta.get("k_requested"),
                      seen_in_training=meta.get("seen_in_training"), **{k: meta.get(k) for k in FIT_CACHE})
        except KeyError as exc:
            raise SagaError(f"{folder / OPENSET}: missing {exc}; rerun `saga openset fit`") from None
        problem = check_openset(det, classes) or edited(meta, sealed)
        if problem:
            raise SagaError(f"{folder / OPENSET}: damaged ({problem}); rerun `saga openset fit`")
        return det


def check_openset(det: OpenSet, classes: list[str] | None = None) -> str:
    """What is wrong with a loaded detector's values ("" when nothing): each used to become a traceback in
    predict / evaluate, or a silently wrong score."""
    if det.kind not in KINDS:
        return f"kind {det.kind!r} is not one of {', '.join(KINDS)}"
    if not whole(det.k, 1):
        return f"k {det.k!r} is not a whole number >= 1"
    if det.k_requested is not None and not whole(det.k_requested, det.k + 1):
        return f"k_requested {det.k_requested!r} is not a whole number > k"
    if not finite(det.threshold):
        return f"threshold {det.threshold!r} is not a number"
    low, high = SCORE_RANGE
    if not low - ROUNDING <= det.threshold <= high + ROUNDING:
        return f"threshold {det.threshold!r} is outside the {det.kind} score's range [{low:g}, {high:g}]"
    if not whole(det.n_val, 1):
        return f"n_val {det.n_val!r} is not a whole number >= 1"
    if not (finite(det.percentile) and 0 < det.percentile <= 100):
        return f"percentile {det.percentile!r} is not in (0, 100]"
    if det.val_false_unknown is not None and not (finite(det.val_false_unknown) and 0 <= det.val_false_unknown <= 1):
        return f"val_false_unknown {det.val_false_unknown!r} is not a share in [0, 1]"
    if class_mismatch(det.classes, classes):
        return class_mismatch(det.classes, classes)
    if problem := seen_problem(det.seen_in_training) or fit_cache_problem({k: getattr(det, k) for k in FIT_CACHE}):
        return problem
    p, b = det.prototypes, det.bank
    if p.ndim != 2 or b.ndim != 2 or p.shape[1] != b.shape[1] or len(p) != len(det.classes):
        return f"tensors of shapes {p.shape} / {b.shape} for {len(det.classes)} classes"
    if det.kind == "knn" and len(b) == 0:
        return "empty k-NN bank"
    if len(b) and det.k > len(b):  # the fit keeps k within the bank (`fit_openset`)
        return f"k {det.k} is more than the {len(b)} videos of its k-NN bank"
    if det.k_requested is not None and det.k != len(b):
        return f"k_requested {det.k_requested} with k {det.k}, not the bank's {len(b)} videos"
    return ""


def whole(x: Any, least: int) -> bool:
    """A whole number >= `least` from a JSON file (not a bool, not "5")."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


def fit_openset(protos: np.ndarray, bank: np.ndarray, val_embeddings: np.ndarray, val_targets: np.ndarray,
                run_model: str, classes: list[str], kind: str = "knn", k: int = 5,
                percentile: float = 95.0) -> OpenSet:
    """A detector whose threshold is the `percentile` of the known val videos' scores.

    k is what the k-NN score uses: at most the bank's size (`knn_scores`); a larger request is kept
    as `k_requested`, so the file says which neighbours the threshold was fitted with."""
    check_options(kind, k, percentile)
    used = min(int(k), len(bank)) or int(k)  # an empty bank: knn_scores refuses it (prototype: unused)
    det = OpenSet(kind, used, float(percentile), 0.0, run_model, list(classes), 0, protos, bank,
                  k_requested=int(k) if used < int(k) else None)
    known = val_targets >= 0
    val_scores = det.score(val_embeddings[known])
    det.threshold = threshold(val_scores, percentile)
    det.n_val = int(known.sum())
    # what the stored threshold does on val: with few videos far from 100 - percentile (1 video: 0 % at any)
    det.val_false_unknown = float((val_scores > det.threshold).mean())
    return det


def summary(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray,
            thr: float) -> dict[str, Any]:
    """AUROC, OSCR and the rates at `thr`, with the counts behind them."""
    return {"auroc": auroc(known_scores, unknown_scores), "oscr": oscr(known_scores, known_correct, unknown_scores),
            "closed_accuracy": float(np.mean(known_correct)) if len(known_correct) else None,
            "n_known": int(len(known_scores)), "n_unknown": int(len(unknown_scores)),
            **rates(known_scores, known_correct, unknown_scores, thr)}


SCORE_CAP = 2000  # values kept per group by `score_lists`


def score_lists(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray,
                cap: int = SCORE_CAP) -> dict[str, Any]:
    """The per-video scores behind AUROC / OSCR, compact enough to keep in a results or metrics file.

    Three sorted groups (known and correctly classified, known and misclassified, unknown), each
    rounded to 5 decimals; a group of more than `cap` videos is kept as `cap` evenly spaced
    quantiles of its scores (its empirical distribution, which is all a ROC or OSCR curve needs),
    with the true count in `n`. The report draws the curves from these (docs/beyond.md).
    """
    kc = np.asarray(known_correct, bool)
    groups = {"known_correct": np.asarray(known_scores)[kc], "known_wrong": np.asarray(known_scores)[~kc],
              "unknown": np.asarray(unknown_scores)}
    out: dict[str, Any] = {"n": {k: int(len(v)) for k, v in groups.items()}, "decimals": 5, "cap": cap}
    for name, v in groups.items():
        v = np.sort(np.asarray(v, np.float64))
        if len(v) > cap:
            v = np.quantile(v, np.linspace(0.0, 1.0, cap))
        out[name] = [round(float(x), 5) for x in v]
    return out


def dumps(obj: Any) -> str:
    """JSON with NaN as null (results files must parse everywhere); lists of numbers stay on one line."""
    flat: list[str] = []

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            items = [clean(x) for x in v]
            if items and all(x is None or isinstance(x, (int, float)) for x in items):
                flat.append(json.dumps(items, separators=(", ", ": ")))
                return f"\0flat{len(flat) - 1}\0"
            return items
        return v
    text = json.dumps(clean(obj), indent=2)
    return re.sub(r'"\\u0000flat(\d+)\\u0000"', lambda m: flat[int(m.group(1))], text)
