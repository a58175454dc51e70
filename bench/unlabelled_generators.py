"""What a team's unlabelled generator costs at few labels, and what recovers it: the same θ, its readout five ways.

    python bench/unlabelled_generators.py --cache CACHE RUN [RUN ...] [--out results.json]

With 2 labels per team, a team of 3 generators always has one with no labelled video, so the
readout on sources has no mean for it (`saga.train.readout`). For each finished stage-2 run
(TEAM-L, TASK-L, ...: any level whose classes pool generators), θ is loaded once and its readout
refitted as stage 2 does, on sources and self-trained, in five ways, all scored on the test split:

- `default`: the run's own readout (sources + self-training);
- `split`: label-free: in each class with k unlabelled generators (the taxonomy's generators of the
  class that have train videos in the cache, less the labelled ones),
  split its widest component k times along its principal axis in the whitened space, then
  Lloyd iterations with the labelled videos fixed, before each self-training round;
- `discover`: label-free: k-means on the unlabelled pool with (labelled generators + unlabelled
  ones) centres; the clusters no labelled mean claims (Hungarian) become new rows, each given to
  a class that lacks a generator (Hungarian on the class log-probability), then self-training;
- `one_label_each`: one more labelled video (a seeded draw) for each unlabelled generator;
- `oracle`: the unlabelled generators' rows seeded with their true unlabelled videos (a bound).

Prints, per run, the accuracy of each and on the unlabelled generators' test videos alone; then
the mean with its 95 % t-interval and the paired gain over `default`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from saga.ablate import half_text, interval95
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.model.inference import record_targets
from saga.runs import load_model
from saga.train import readout as R

CPU = torch.device("cpu")
VARIANTS = ("default", "split", "discover", "one_label_each", "oracle")


def whitener(emb: np.ndarray, rows: np.ndarray, n_rows: int, real_emb: np.ndarray | None) -> np.ndarray:
    """W with (x W) Euclidean = the discriminant's Mahalanobis distance (its shared, shrunk covariance)."""
    vals, vecs = np.linalg.eigh(R.shared_covariance(emb, rows, n_rows, real_emb)[1])
    return vecs / np.sqrt(np.maximum(vals, 1e-12))


def self_train(emb, sub, row_class, unl, real_emb, seeded=None, regroup=None):
    """readout.self_train's rounds over rows that may grow: `seeded` = (row per unlabelled video, -1 = none)
    starts extra rows; `regroup(guess, round)` may re-partition the guesses (and add rows) before each fit.
    Returns weights, mixture biases and each row's class."""
    row_class = list(row_class)
    ids = list(range(len(row_class)))
    start = seeded >= 0 if seeded is not None else np.zeros(len(unl), bool)
    w, b = R.discriminant(np.concatenate([emb, unl[start]]), np.concatenate([sub, seeded[start] if seeded is not None
                                                                              else sub[:0]]), len(ids), real_emb)
    per_class = len(unl) / len(set(row_class))
    for k, share in enumerate(R.SELF_TRAINING_SHARES):
        logits = unl @ w.T + b
        guess = np.asarray(ids)[logits.argmax(axis=1)]
        if regroup is not None:
            guess, row_class = regroup(guess, row_class, k)
        top2 = np.sort(logits, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        keep = max(int(round(share * per_class)), 1)
        chosen = np.concatenate([m[np.argsort(-margin[m], kind="stable")[:keep]]
                                 for m in (np.flatnonzero(guess == r) for r in range(len(row_class)))])
        ids = sorted(set(sub.tolist()) | set(guess[chosen].tolist()))
        pos = {r: i for i, r in enumerate(ids)}
        w, b = R.discriminant(np.concatenate([emb, unl[chosen]]),
                              np.array([pos[t] for t in np.concatenate([sub, guess[chosen]])]), len(ids), real_emb)
    kept = [row_class[r] for r in ids]
    return w, R.mixture_bias(b, kept), kept


def lloyd(pts, assign, fixed, rows, iters=20):
    for _ in range(iters):
        live = [r for r in rows if (assign == r).any()]
        d = ((pts[:, None, :] - np.stack([pts[assign == r].mean(axis=0) for r in live])[None]) ** 2).sum(-1)
        new = np.asarray(live)[d.argmin(axis=1)]
        new[fixed] = assign[fixed]
        if (new == assign).all():
            return assign
        assign = new
    return assign


def splitter(z_lab, sub, z_unl, missing):
    """The `split` variant's regroup: in round 0 split each short class's widest rows, every round Lloyd."""
    def regroup(guess, row_class, round_):
        rows_out, row_class = guess.copy(), list(row_class)
        for c, m in missing.items():
            own = [r for r, k in enumerate(row_class) if k == c]
            idx, lab = np.flatnonzero(np.isin(guess, own)), np.flatnonzero(np.isin(sub, own))
            if len(idx) < 2 * m + 2:
                continue
            pts, assign = np.concatenate([z_lab[lab], z_unl[idx]]), np.concatenate([sub[lab], guess[idx]])
            fixed = np.arange(len(pts)) < len(lab)
            for _ in range(m if round_ == 0 else 0):
                live = [r for r in own if (assign == r).any()]
                widest = max(live, key=lambda r: ((pts[assign == r] - pts[assign == r].mean(0)) ** 2).sum())
                members = np.flatnonzero(assign == widest)
                x = pts[members] - pts[members].mean(axis=0)
                side = x @ np.linalg.svd(x, full_matrices=False)[2][0] > 0
                stay = bool(side[fixed[members]].mean() >= 0.5) if fixed[members].any() else True
                row_class.append(c)
                own.append(len(row_class) - 1)
                assign[members[(side != stay) & ~fixed[members]]] = own[-1]
            rows_out[idx] = lloyd(pts, assign, fixed, own)[len(lab):]
        return rows_out, row_class
    return regroup


def discovered_rows(z_lab, sub, z_unl, class_logp, missing, seed):
    """The `discover` variant's seed rows: unclaimed k-means clusters given to the classes that lack generators."""
    n = int(sub.max()) + 1
    total = sum(missing.values())
    if total == 0:  # no class lacks a generator: nothing to discover (and no free cluster to score)
        return np.full(len(z_unl), -1), []
    km = KMeans(n + total, n_init=10, random_state=seed).fit(z_unl)
    lab_means = np.stack([z_lab[sub == r].mean(axis=0) for r in range(n)])
    _, claimed = linear_sum_assignment(((lab_means[:, None] - km.cluster_centers_[None]) ** 2).sum(-1))
    free = [k for k in range(n + total) if k not in set(claimed.tolist())]
    slots = [c for c, m in sorted(missing.items()) for _ in range(m)]
    score = np.array([[class_logp[km.labels_ == k, c].mean() for c in slots] for k in free])
    rows, new_class = np.full(len(z_unl), -1), []
    for k, s in zip(*linear_sum_assignment(-score)):
        rows[km.labels_ == free[k]] = n + len(new_class)
        new_class.append(slots[s])
    return rows, new_class


def unlabelled_generators(train: list, lab: list, y: np.ndarray, classes: list[str], level: str,
                          cache: FeatureCache) -> dict[int, list[str]]:
    """Per labelled class, its generators with train videos in the cache but no labelled video."""
    gens = set(R.source_subclasses(lab, y)[2])
    tax = cache.taxonomy
    present = {r.generator for r in train}  # the taxonomy may list generators this cache has no video of
    return {c: [g for g in sorted(tax.generators) if g in present and g not in gens
                and tax.labels(g)[level] == classes[c]] for c in sorted(set(y.tolist()))}


def measure(run: Path, cache: FeatureCache) -> dict[str, object] | None:
    """The five readouts of one run; None when every generator has a labelled video (nothing to recover)."""
    model, info = load_model(run)
    labelled = json.loads((run / "labelled.json").read_text())["classes"]
    chosen = {p: info.classes.index(c) for c, paths in labelled.items() for p in paths}
    train = list(cache.ok_records("train"))
    lab = [r for r in train if r.path in chosen]
    y = np.array([chosen[r.path] for r in lab], np.int64)
    absent = unlabelled_generators(train, lab, y, info.classes, info.level, cache)
    missing = {c: len(v) for c, v in absent.items() if v}
    if not missing:
        return None
    seed = int(info.config["train"]["seed"])
    pool, _ = R.unlabelled_pool(train, set(chosen), info.level, cache.taxonomy, seed)
    emb, real_emb, unl = R.readout_embeddings(model, cache, lab, train, pool, info.frames, 256, CPU, seed)
    test = [r for r in cache.ok_records("test") if record_targets([r], info.level, info.classes)[0] >= 0]
    y_test = record_targets(test, info.level, info.classes)
    test_emb = R.embed(model, cache, test, info.frames, 256, CPU)
    n = len(info.classes)
    sub, groups, gens = R.source_subclasses(lab, y)
    on_absent = np.array([any(r.generator in v for v in absent.values()) for r in test])

    def score(fit) -> list[float]:
        w, b, rc = fit
        ok = R.class_logits(test_emb, w, b, rc, n).argmax(axis=1) == y_test
        return [100 * float(ok.mean()), 100 * float(ok[on_absent].mean()) if on_absent.any() else float("nan")]

    w, b, rc, _ = R.readout_rows(emb, y, n, unl, real_emb, (sub, groups))
    out: dict[str, object] = {"run": str(run), "level": info.level, "labelled": len(lab), "test": len(test),
                              "unlabelled_generators": {info.classes[c]: v for c, v in absent.items() if v},
                              "their_test_videos": int(on_absent.sum()), "default": score((w, b, rc))}
    W = whitener(emb, sub, len(groups), real_emb)
    out["split"] = score(self_train(emb, sub, groups, unl, real_emb, regroup=splitter(emb @ W, sub, unl @ W, missing)))
    logits = R.class_logits(unl, w, b, rc, n)
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    rows, new_class = discovered_rows(emb @ W, sub, unl @ W, logp, missing, seed)
    out["discover"] = score(self_train(emb, sub, list(groups) + new_class, unl, real_emb, seeded=rows))
    row_of = {g: i for i, g in enumerate(gens)}
    true_class = list(groups)
    for c, names in absent.items():
        for g in names:
            row_of[g] = len(true_class)
            true_class.append(c)
    truth = np.array([row_of.get(r.generator, -1) for r in pool])
    out["oracle"] = score(self_train(emb, sub, true_class, unl, real_emb,
                                     seeded=np.where(truth >= len(groups), truth, -1)))
    rng = np.random.default_rng(seed)
    extra = [int(rng.choice(np.flatnonzero(truth == r))) for r in range(len(groups), len(true_class))
             if (truth == r).any()]
    lab2, y2 = lab + [pool[i] for i in extra], np.concatenate([y, [true_class[truth[i]] for i in extra]]).astype(np.int64)
    sub2, groups2, _ = R.source_subclasses(lab2, y2)
    w, b, rc, _ = R.readout_rows(np.concatenate([emb, unl[extra]]), y2, n, np.delete(unl, extra, axis=0), real_emb,
                                 (sub2, groups2))
    out["one_label_each"] = score((w, b, rc))
    out["extra_labels"] = len(extra)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cache = FeatureCache.open(args.cache)
    rows = []
    for run in (r for r in args.runs if (r / "done.json").is_file()):
        row = measure(run, cache)
        if row is None:
            print(f"{run}: skipped: every generator of its classes has a labelled video (a --per-generator run?)",
                  file=sys.stderr, flush=True)
        else:
            rows.append(row)
    if not rows:
        raise SagaError(f"no run among {' '.join(map(str, args.runs))} has an unlabelled generator: pass "
                        "finished runs trained with few labels per class (not --per-generator ones)")
    for row in rows:
        print(f"{Path(str(row['run'])).name}: " + "  ".join(f"{v} {row[v][0]:.1f} ({row[v][1]:.0f})" for v in VARIANTS)
              + f"  [accuracy (on the {row['their_test_videos']} test videos of unlabelled generators)]", flush=True)
    summary = {}
    for v in VARIANTS:
        acc = [row[v][0] for row in rows]
        gain = [row[v][0] - row["default"][0] for row in rows]
        summary[v] = {"mean": statistics.fmean(acc), "ci95": interval95(acc), "gain": statistics.fmean(gain),
                      "gain_ci95": interval95(gain), "gain_range": [min(gain), max(gain)],
                      "unlabelled_generators_mean": statistics.fmean(row[v][1] for row in rows)}
        print(f"{v}: {summary[v]['mean']:.1f} ± {half_text(summary[v]['ci95'])}  gain {summary[v]['gain']:+.1f} ± "
              f"{half_text(summary[v]['gain_ci95'])}  on unlabelled generators' videos "
              f"{summary[v]['unlabelled_generators_mean']:.1f}  ({len(rows)} runs)")
    if args.out:
        args.out.write_text(json.dumps({"cache": str(args.cache), "runs": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except SagaError as exc:
        sys.exit(f"error: {exc}")
