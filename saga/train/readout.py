"""Stage 2's final classifier: a Gaussian discriminant on φ fitted to the labelled videos (readout = "lda").

A head trained by gradient descent on 2–5 videos per class stops where the training loss does,
not where the classes separate. The discriminant uses the same videos differently: the class
means of their embeddings, compared through the within-class covariance, which is shrunk halfway
to the covariance of the pool's real videos (abundant, labelled real/fake only: their spread is
the content variation every class shares) and then a little to the identity. It is linear in φ
per mean, so it replaces the head's rows (`VideoTransformer.set_head`): every reader of the run
(evaluate, predict, calibration, open set) uses it without knowing. Measured in docs/ablation.md.

Self-training (`self_training = True`, the default) then refits the discriminant with the
unlabelled train videos it is surest of, in growing rounds: the few labels place the class means,
the unlabelled pool fills in each class's spread. It needs no source label, only the pool, and
is skipped where an unlabelled video may belong to no class of the level (SD-L: generators
without an SD backbone). Measured in docs/ablation.md, on two held-out benchmark seeds too.

With `sources = True` (the default; stage 2 then also trains on the sources,
`saga.train.attribute.training_targets`) each class is fitted as a mixture of its labelled sources:
one mean per (class, generator) pair of the labelled videos, the class's logit the log-sum-exp
of its sources' (each weighted 1 / its class's sources). A level's class may pool several
generators (a team, a task, "fake"), and one mean between them is a poor model of any. Only
the labelled videos' generators are used: they are what a source label is, the level's class
derived from it by the taxonomy. Self-training then pseudo-labels sources, not classes. At GEN-L
a class is one source and nothing changes. Measured in docs/ablation.md (`bench/readout.py`).

Either way the validation macro accuracy of both is recorded in done.json. With readout = "auto"
the validation videos decide (`choose_readout` keeps whichever validates better). Measured
before the sources existed, auto is not the default: it chose the discriminant in all 42 runs
of the ablation grid, and on the demo it changed one level of five (SD-L, 29 val videos) for a
lower test macro accuracy (docs/ablation.md).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from saga.cache.manifest import VideoRecord, source_key
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.model import VideoTransformer
from saga.model.inference import record_targets, take_subwindow
from saga.taxonomy import REAL, Taxonomy

REAL_SHARE = 0.5  # weight of the real videos' covariance in the pooled one
SHRINK = 0.05  # then towards the identity (scaled to the mean variance)
MAX_REAL = 5_000  # real videos for their covariance: a seeded sample beyond this
SELF_TRAINING_SHARES = (0.25, 0.5, 0.75, 1.0)  # per round: pseudo-labels per class, × (unlabelled / classes)
MAX_UNLABELLED = 20_000  # unlabelled videos for self-training: a seeded sample beyond this


@torch.no_grad()
def embed(model: VideoTransformer, cache: FeatureCache, records: Sequence[VideoRecord], frames: int,
          batch_size: int, device: torch.device) -> np.ndarray:
    """(n, d) float64 φ before normalisation, under the evaluation convention (window 0, centred T')."""
    was_training = model.training
    model.eval()
    out = [np.zeros((0, model.config.d_model))]
    for lo in range(0, len(records), batch_size):
        data = cache.read(records[lo:lo + batch_size])
        x, m = take_subwindow(data["features"][:, 0], data["mask"][:, 0], frames)
        emb = model(torch.from_numpy(x.astype(np.float32)).to(device), torch.from_numpy(m).to(device)).embedding
        out.append(emb.double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def discriminant(emb: np.ndarray, targets: np.ndarray, n_classes: int,
                 real_emb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights (C, d) and biases (C,) of the Gaussian discriminant with a shared, shrunk covariance.

    logit_c = φ·Pμ_c − ½ μ_c·Pμ_c: the class log-likelihood up to a term common to all classes.
    """
    present = np.unique(targets)
    if len(present) < n_classes or (targets < 0).any():
        raise SagaError(f"the discriminant needs labelled videos of all {n_classes} classes")
    means, cov = shared_covariance(emb, targets, n_classes, real_emb)
    weights = np.linalg.solve(cov, means.T).T  # P μ_c, P symmetric
    return weights, -0.5 * (weights * means).sum(axis=1)


def shared_covariance(emb: np.ndarray, targets: np.ndarray, n_classes: int,
                      real_emb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The class means and the discriminant's covariance: within-class, shrunk to the real videos', then the identity."""
    means = np.stack([emb[targets == c].mean(axis=0) for c in range(n_classes)])
    resid = emb - means[targets]
    cov = resid.T @ resid / max(len(emb) - n_classes, 1)
    if real_emb is not None and len(real_emb) >= 2:
        cov = (1 - REAL_SHARE) * cov + REAL_SHARE * np.cov(real_emb, rowvar=False)
    dim = cov.shape[0]
    scale = np.trace(cov) / dim
    if scale <= 1e-8 * max(float(np.mean(emb ** 2)), 1e-12):  # one video per class and no real ones: no spread
        scale = max(float(emb.var(axis=0).mean()), 1e-12)  # the labelled videos' own, so weights stay of ordinary size
    return means, (1 - SHRINK) * cov + SHRINK * scale * np.eye(dim)


def self_train(emb: np.ndarray, targets: np.ndarray, n_classes: int, unlabelled: np.ndarray,
               real_emb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The discriminant refitted on the labelled plus its most confident unlabelled videos, round by round.

    Each round pseudo-labels, per predicted class, at most share × (unlabelled / classes) videos,
    those with the widest margin between their top two logits, so no class floods the fit and a
    wrong early guess is re-decided by the next, better-informed round. Returns weights, biases
    and the number pseudo-labelled in each round.
    """
    weights, bias = discriminant(emb, targets, n_classes, real_emb)
    if len(unlabelled) == 0:
        return weights, bias, []
    per_class = len(unlabelled) / n_classes
    picked: list[int] = []
    for share in SELF_TRAINING_SHARES:
        logits = unlabelled @ weights.T + bias
        guess = logits.argmax(axis=1)
        top_two = np.sort(logits, axis=1)[:, -2:]
        margin = top_two[:, 1] - top_two[:, 0]
        keep = max(int(round(share * per_class)), 1)
        chosen = np.concatenate([members[np.argsort(-margin[members], kind="stable")[:keep]]
                                 for members in (np.flatnonzero(guess == c) for c in range(n_classes))])
        weights, bias = discriminant(np.concatenate([emb, unlabelled[chosen]]),
                                     np.concatenate([targets, guess[chosen]]), n_classes, real_emb)
        picked.append(int(len(chosen)))
    return weights, bias, picked


def unlabelled_pool(train: Sequence[VideoRecord], labelled: set[str], level: str, taxonomy: Taxonomy,
                    seed: int) -> tuple[list[VideoRecord], str | None]:
    """Train videos self-training may pseudo-label (not labelled, not an augmented copy), or why none may be.

    Decided by the taxonomy, not by the hidden labels: a level where some generator has no class
    (SD-L) would let an unlabelled video of it be forced into a class it does not belong to.
    """
    orphans = [g for g in taxonomy.generators if taxonomy.labels(g)[level] is None]
    if orphans:
        return [], f"{level} gives no class to {len(orphans)} generator(s) (e.g. {orphans[0]})"
    pool = [r for r in train if r.path not in labelled and not source_key(r.path)[0]]
    if len(pool) > MAX_UNLABELLED:
        keep = np.sort(np.random.default_rng(seed).choice(len(pool), MAX_UNLABELLED, replace=False))
        pool = [pool[i] for i in keep]
    return pool, None if pool else "every train video is labelled"


def source_subclasses(labelled: Sequence[VideoRecord], targets: np.ndarray) -> tuple[np.ndarray, list[int], list[str]]:
    """Each labelled video's subclass (its class and generator), each subclass's class and generator, in class order."""
    keys = sorted({(int(t), r.generator) for r, t in zip(labelled, targets)})
    number = {k: i for i, k in enumerate(keys)}
    return (np.array([number[(int(t), r.generator)] for r, t in zip(labelled, targets)], np.int64),
            [c for c, _ in keys], [g for _, g in keys])


def mixture_bias(bias: np.ndarray, subclass_of: Sequence[int]) -> np.ndarray:
    """Biases with each subclass weighted 1 / (its class's subclasses): a class with many sources gets no head start."""
    groups = np.asarray(subclass_of)
    return bias - np.log(np.bincount(groups)[groups])


def readout_embeddings(model: VideoTransformer, cache: FeatureCache, labelled: Sequence[VideoRecord],
                       pool: Sequence[VideoRecord], unlabelled: Sequence[VideoRecord], frames: int, batch_size: int,
                       device: torch.device, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """φ of what the readout is fitted on: the labelled videos, the pool's real videos (sampled), the unlabelled ones."""
    is_real = np.flatnonzero(record_targets(pool, "BIN-L", [REAL, "fake"]) == 0)
    if len(is_real) > MAX_REAL:
        is_real = np.sort(np.random.default_rng(seed).choice(is_real, MAX_REAL, replace=False))
    reals = list(pool.take(is_real)) if hasattr(pool, "take") else [pool[i] for i in is_real]
    emb = embed(model, cache, labelled, frames, batch_size, device)
    real_emb = embed(model, cache, reals, frames, batch_size, device) if reals else None
    return emb, real_emb, embed(model, cache, unlabelled, frames, batch_size, device)


def readout_rows(emb: np.ndarray, targets: np.ndarray, n_classes: int, unlabelled: np.ndarray,
                 real_emb: np.ndarray | None, subclasses: tuple[np.ndarray, list[int]] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """The head's rows: weights, biases, each row's class ([]: one row per class) and the self-training rounds.

    `subclasses` (each labelled video's subclass, each subclass's class) makes the rows those of
    the subclasses, with the mixture's weights in the biases; one subclass per class is the plain fit.
    """
    sub, subclass_of = subclasses if subclasses is not None else (targets, [])
    if len(subclass_of) == n_classes:
        sub, subclass_of = targets, []
    weights, bias, picked = self_train(emb, np.asarray(sub), len(subclass_of) or n_classes, unlabelled, real_emb)
    return weights, mixture_bias(bias, subclass_of) if subclass_of else bias, list(subclass_of), picked


def class_logits(emb: np.ndarray, weights: np.ndarray, bias: np.ndarray, subclass_of: Sequence[int],
                 n_classes: int) -> np.ndarray:
    """(n, classes) logits of the rows from `readout_rows`, pooled per class as the model's head pools them."""
    return pool_rows(emb @ weights.T + bias, subclass_of, n_classes)


def pool_rows(rows: np.ndarray, subclass_of: Sequence[int], n_classes: int) -> np.ndarray:
    """(n, classes) logits: each class's rows pooled by log-sum-exp (its softmax share is the sum of its rows')."""
    if not len(subclass_of):
        return rows
    groups = np.asarray(subclass_of)
    out = np.empty((len(rows), n_classes))
    for c in range(n_classes):
        part = rows[:, groups == c]
        top = part.max(axis=1, keepdims=True)
        out[:, c] = top[:, 0] + np.log(np.exp(part - top).sum(axis=1))
    return out


def fit_readout(model: VideoTransformer, cache: FeatureCache, labelled: Sequence[VideoRecord], targets: np.ndarray,
                pool: Sequence[VideoRecord], frames: int, batch_size: int, device: torch.device,
                seed: int, unlabelled: Sequence[VideoRecord] = (), sources: bool = True) -> dict[str, object]:
    """Replace `model`'s head by the discriminant of the labelled videos (self-trained on `unlabelled`, if any)."""
    emb, real_emb, unlab = readout_embeddings(model, cache, labelled, pool, unlabelled, frames, batch_size, device,
                                              seed)
    sub, groups, generators = source_subclasses(labelled, np.asarray(targets))
    n_classes = model.config.n_classes
    weights, bias, subclass_of, picked = readout_rows(emb, np.asarray(targets), n_classes, unlab, real_emb,
                                                      (sub, groups) if sources else None)
    model.set_head(torch.from_numpy(weights), torch.from_numpy(bias), subclass_of, generators if subclass_of else [])
    by_class = [[g for g, c in zip(generators, groups) if c == k] for k in range(n_classes)]
    return {"readout": "lda", "labelled_videos": len(labelled), "real_videos": 0 if real_emb is None else len(real_emb),
            "real_share": REAL_SHARE, "shrink": SHRINK, "unlabelled_videos": len(unlab), "pseudo_labelled": picked,
            "sources": by_class if subclass_of else "off" if not sources else "one per class"}


def choose_readout(model: VideoTransformer, fit: Callable[[VideoTransformer], dict[str, Any]],
                   validate: Callable[[VideoTransformer], dict[str, Any]] | None,
                   head_score: float | None = None, switch: bool = True) -> dict[str, object]:
    """Fit the discriminant; with `switch`, keep the trained head instead if its validation macro accuracy is higher.

    `head_score`: the trained head's val macro accuracy when the caller already has it (the kept
    epoch's, from training), so it is not validated twice. Both scores are returned either way.
    Ties keep the discriminant (better on average across the measured grid); without validation
    videos the discriminant is kept untested.
    """
    if validate is None:
        return {**fit(model), "chosen_by": "no validation videos"}
    head = validate(model)["macro_accuracy"] if head_score is None else head_score
    trained = (model.head.weight.detach().clone(), model.head.bias.detach().clone(), list(model.config.subclass_of),
               list(model.config.subclass_names))
    info = fit(model)
    lda_val = validate(model)
    scores = {"head": head, "lda": lda_val["macro_accuracy"]}
    if switch and scores["head"] > scores["lda"]:
        model.set_head(*trained)
        info = {**info, "readout": "head", "discriminant": "fitted, not kept"}
    return {**info, "chosen_by": "val_macro_accuracy" if switch else "readout = lda", "val_macro_accuracy": scores,
            "val_videos": int(lda_val.get("n", 0))}
