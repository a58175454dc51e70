"""Leave-one-generator-out evaluation: open set per level, enrollment vs retraining, calibration.

For each fake generator g of the cache's taxonomy, a GEN-L run is trained without g
(`logo/g`, see `holdout`), and optionally one whose only videos of g are the k enrollment
videos (`retrain{k}/g`: the retraining baseline). Neither reads any other video of g, labelled or
not, in any split (saga.train.withhold); with `two_stage` both adapt `stage1/g`, a stage-1 run
trained without any video of g. Then, on the test split:

- open set: known = test videos of the classes the run was trained on, unseen = test videos of g;
  per level, "unseen" means a class at that level none of the training generators has (g's team,
  SD backbone or task may well be known: then that level has no unseen class in that fold).
  Scores: prototype (level-L prototypes) and k-NN (level-independent); threshold = 95th
  percentile of the known val videos' score; AUROC (with a stratified bootstrap interval) and OSCR.
- enrollment: g enrolled into `logo/g` from the same k videos; accuracy on g's test videos (new)
  and on everyone else's (old), for the head alone (before), the gate and ncm rules, and the
  retrained run, at GEN-L and every coarser level.
- calibration: for given full runs, T fitted on val, ECE (15 bins) on test before / after.

Runs already finished are reused, so a killed evaluation resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from saga import fileio
from saga.cache.manifest import VideoRecord, seeded_hash
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.seen import FIT_AGAINST, SEEN_KEY, only_unseen
from saga.fileio import make_dir, write_text
from saga.model.inference import Inference
from saga.openworld.calibration import ece, fit_calibration, plot_reliability, reliability, softmax
from saga.openworld.embeddings import (Embedder, known_val, labelled_records, min_val_for, no_val_videos, normalise,
                                       split_records)
from saga.openworld.enroll import Enrollment, add_entry, predict_with_enrolled, prototype_tau
from saga.openworld.levels import aggregate, label_at, parents
from saga.openworld.logo_tables import LEVELS_OPEN, acc_pair, boot_ci, fmt, to_markdown
from saga.openworld.openset import auroc, dumps, knn_scores, prototype_scores, score_lists, summary, threshold
from saga.runs import MODEL, RunInfo, cache_digest, file_fingerprint
from saga.runs.files import (LOGO_CALIBRATION, LOGO_FOLDS, LOGO_RESULTS, LOGO_RESULTS_MD, LOGO_RUNS, LOGO_STAGE1,
                             MODEL_OPTIONS, CONFIG, finished, read_json, reliability_file)
from saga.taxonomy import LEVELS, REAL


def generators(cache: FeatureCache) -> list[str]:
    """Every fake generator of the cache's taxonomy with train videos (to leave out) and test videos (to measure)."""
    have = {r.labels.get("GEN-L") for r in cache.ok_records("train")} & held_out_tested(cache)
    return [g for g in cache.taxonomy.classes("GEN-L") if g != REAL and g in have]


def held_out_tested(cache: FeatureCache) -> set[str]:
    """The generators with test videos: a fold without any has no unseen video to measure."""
    return {r.labels.get("GEN-L") for r in cache.ok_records("test")}


def check_val_split(cache: FeatureCache, gens: list[str]) -> None:
    """Before any fold trains: refuse a cache whose val split has no video of some fold's classes (the
    generators with train videos but the held-out one), which could fit neither threshold nor τ."""
    trained = {r.labels.get("GEN-L") for r in cache.ok_records("train")}
    val = {r.labels.get("GEN-L") for r in cache.ok_records("val")} & trained
    for g in gens:
        if not val - {g}:
            raise no_val_videos(cache, f"fold {g}'s", "its unknown threshold or enrollment τ")


def train_folds(cache_path: str | Path, out: Path, options: dict[str, Any], gens: list[str], k: int,
                seed: int, retrain: bool, log: Callable[[str], None] = print, balanced: bool = False,
                two_stage: bool = False) -> None:
    """Train logo/g for every g (and retrain{k}/g when `retrain`), reusing finished runs.

    `balanced` also trains retrain{k}-balanced/g with class-balanced sampling: a stronger
    retraining baseline when the new class has k videos and the others dozens. `two_stage`: each
    fold adapts stage1/g, trained first without g, instead of training from scratch.
    """
    from saga.openworld.holdout import fold_withheld, train_holdout
    from saga.train.attribute import AttributeConfig

    cache = FeatureCache.open(cache_path)
    check_val_split(cache, gens)  # before hours of training, not after
    base = {**options, "level": "GEN-L", "seed": seed}
    base.setdefault("fraction", 1.0)
    base.setdefault("floor", 1)
    jobs = [(LOGO_RUNS, g, None) for g in gens]
    if retrain:
        jobs += [(f"retrain{k}", g, {g: enrollment_videos(cache, g, k, seed)}) for g in gens]
    if balanced:
        jobs += [(f"retrain{k}-balanced", g, {g: enrollment_videos(cache, g, k, seed)}) for g in gens]
    for kind, g, few in jobs:
        run = out / kind / g
        cfg = AttributeConfig.from_dict({**base, "balance": True} if kind.endswith("-balanced") else dict(base))
        stage1 = out / LOGO_STAGE1 / g if two_stage else None
        if finished(run):  # reused only when trained as asked (a cheap check, not a reload)
            _check_fold_options(run, cfg, fold_withheld("GEN-L", () if few else (g,), few).to_dict(), stage1)
            continue
        if stage1 is not None and not finished(stage1):
            t0 = time.time()
            train_fold_stage1(cache_path, stage1, base, g)
            log(f"trained {LOGO_STAGE1}/{g} in {time.time() - t0:.0f}s")
        t0 = time.time()
        train_holdout(cache_path, run, cfg, exclude=() if few else (g,), few=few, from_run=stage1)
        log(f"trained {kind}/{g} in {time.time() - t0:.0f}s")


STAGE1_SHARED = ("frames", "seed", "device", "eval_batch_size", "stream", "memory_budget_gb", "buffer_shards")


def train_fold_stage1(cache_path: str | Path, out: Path, options: dict[str, Any], held: str) -> Path:
    """Stage 1 without any video of `held`: the model options and seed of the folds, stage 1's own schedule."""
    from saga.train.stage1 import Stage1Config, train_stage1
    from saga.train.withhold import Withheld

    shared = {k: v for k, v in options.items() if k in MODEL_OPTIONS or k in STAGE1_SHARED}
    return train_stage1(cache_path, out, Stage1Config.from_dict(shared), withheld=Withheld("GEN-L", (held,)))


def _check_fold_options(run: Path, cfg: Any, withheld: dict | None = None, stage1: Path | None = None) -> None:
    """Refuse a finished fold run trained with other options or another seed than this call asks for, or
    one that read videos of its held-out generator (`withheld`: what it must have withheld), or adapted
    another stage-1 run than `stage1` (None: trained from scratch)."""
    cfg.check()
    config = read_json(run / CONFIG)
    if withheld is not None and config.get("withheld") != withheld:
        what = (f"withholding {config['withheld']}, this call withholds {withheld}" if config.get("withheld") else
                OLD_FOLD)
        raise SagaError(f"{run}: trained {what}; delete that fold's folder to train it again, or pass another --out")
    trained = config.get("train", {})
    base = trained.get("from_run")
    if (base is None) != (stage1 is None) or (base and Path(base).resolve() != stage1.resolve()):
        raise SagaError(f"{run}: trained {'from ' + str(base) if base else 'from scratch'}, this call asks for "
                        f"{'stage 1 ' + str(stage1) if stage1 else 'from scratch'}; pass another --out, or delete "
                        "that fold's folder to train it again")
    asked = json.loads(json.dumps({k: v for k, v in cfg.to_dict().items() if v is not None}, default=str))
    diff = next((k for k, v in asked.items() if k in trained and trained[k] != v), None)
    if diff is not None:
        raise SagaError(f"{run}: trained with {diff} = {trained[diff]!r}, this call asks for {asked[diff]!r}; "
                        "pass another --out, or delete that fold's folder to train it again")


OLD_FOLD = ("by an older saga, which read other videos of the generator it holds out (its content basis and "
            "self-training; a retrained fold's model selection too)")


def enrollment_videos(cache: FeatureCache, generator: str, k: int, seed: int) -> list[str]:
    """k train videos of `generator`, a seeded hash order (the same for enrollment and retraining)."""
    paths = sorted(r.path for r in cache.ok_records("train") if r.labels.get("GEN-L") == generator)
    return sorted(sorted(paths, key=lambda p: seeded_hash(seed, p))[:k])


# -- measurements --------------------------------------------------------------------------------


@dataclass
class FoldRecords:
    """The val videos a fold fits on (threshold, τ) and the test videos every one of its runs is scored on, without
    the videos the run was trained on (val) or trained or validated on (test), as `saga evaluate` scores
    (`saga.explain.seen`: a copy of a train video in test, a --cache sharing the runs' videos)."""

    val: list[VideoRecord]
    test: list[VideoRecord]
    seen: dict[str, Any] | None  # {"val": ..., "test": ...}: what was left out (None: nothing)


def fold_records(info: RunInfo, cache: FeatureCache, fits: str, figures: str) -> FoldRecords:
    """`FoldRecords` of a run (a fold's leave-one-out run: its retrained runs share its cache and splits), with the
    warnings naming `fits` and `figures` (what the val and the test videos are left out of)."""
    fix = "measure on a cache whose {} videos the run was not trained on (another --cache)"
    val, seen_val = only_unseen(info, cache, split_records(cache, "val"), "val", fits, FIT_AGAINST, fix.format("val"))
    test, seen_test = only_unseen(info, cache, split_records(cache, "test"), "test", figures, fix=fix.format("test"))
    seen = {split: x for split, x in (("val", seen_val), ("test", seen_test)) if x}
    return FoldRecords(val, test, seen or None)


def fold_val(emb: Embedder, cache: FeatureCache, held: str, warned: set[str] | None,
             records: list[VideoRecord] | None = None) -> Inference:
    """The known val videos a fold fits its threshold and τ on; a small split is warned about once per fold."""
    what = f"fold {held}'s unknown threshold at the 95th percentile (and its prototype temperature τ)"
    return known_val(emb, cache, what, min_val_for(95.0), warned, records)


def fold_openset(emb: Embedder, cache: FeatureCache, held: str, k: int, recs: FoldRecords,
                 warned: set[str] | None = None) -> dict:
    """One held-out generator: per level, AUROC / OSCR / rates for the prototype and k-NN scores."""
    train_recs = labelled_records(emb.info, cache)
    train = emb(cache, train_recs)
    val_recs, test_recs = recs.val, recs.test
    val = fold_val(emb, cache, held, warned, val_recs)
    test = emb(cache, test_recs)
    out = {}
    for level in LEVELS_OPEN:
        tr_lab = np.array([label_at(r.labels, level) for r in train_recs])
        known = sorted(set(tr_lab))
        protos = normalise(np.stack([train.embeddings[tr_lab == c].mean(0) for c in known]))
        parent = parents(cache.taxonomy, "GEN-L", emb.info.classes, level)
        names, p = aggregate(test.probs, parent)
        pred = np.array(names)[p.argmax(1)]
        te_lab = np.array([label_at(r.labels, level) for r in test_recs])
        va_lab = np.array([label_at(r.labels, level) for r in val_recs])
        is_known, va_known = np.isin(te_lab, known), np.isin(va_lab, known)
        correct = (pred == te_lab)[is_known]
        res = {"known_classes": len(known), "unseen_class": None if label_at(
            cache.taxonomy.labels(held), level) in known else label_at(cache.taxonomy.labels(held), level)}
        for kind in ("prototype", "knn"):
            if kind == "prototype":
                s_te, s_va = prototype_scores(test.embeddings, protos)[0], prototype_scores(val.embeddings, protos)[0]
            else:
                s_te, s_va = knn_scores(test.embeddings, train.embeddings, k), knn_scores(val.embeddings, train.embeddings, k)
            thr = threshold(s_va[va_known], 95.0)
            summ = summary(s_te[is_known], correct, s_te[~is_known], thr)
            summ["auroc_ci"] = boot_ci(auroc, [s_te[is_known], s_te[~is_known]])
            if res["unseen_class"] is not None:  # the curves of the report (`saga report --openworld EXP`)
                summ["scores"] = score_lists(s_te[is_known], correct, s_te[~is_known])
            res[kind] = summ
        out[level] = res
    return out


def fold_enroll(emb: Embedder, retrain: Path, cache: FeatureCache, held: str, k: int, seed: int, recs: FoldRecords,
                warned: set[str] | None = None) -> dict:
    """Enroll `held` from the k retraining videos into the LOGO run `emb`; compare with the retrained run(s)."""
    balanced = retrain.parent.with_name(retrain.parent.name + "-balanced") / retrain.name
    baselines = {"retrain": retrain, **({"retrain-balanced": balanced} if finished(balanced) else {})}

    protos, _ = emb.class_prototypes(cache)
    val = fold_val(emb, cache, held, warned, recs.val)
    enr = Enrollment("-", list(emb.info.classes), "GEN-L", prototype_tau(protos, val.embeddings, val.targets), protos)
    paths = enrollment_videos(cache, held, k, seed)
    enrolled = [r for r in cache.ok_records("train") if r.path in set(paths)]
    labels = {lv: label_at(cache.taxonomy.labels(held), lv) for lv in LEVELS}  # no SD backbone: "none"
    add_entry(enr, held, labels, emb(cache, enrolled).embeddings, paths, cache.cache_id)
    test_recs = recs.test  # the retrained runs too: every method on the same videos
    test = emb(cache, test_recs)
    res: dict = {"k": k, "tau": enr.tau, "levels": {}}
    base = {name: Embedder(path) for name, path in baselines.items()}
    base_inf = {name: e(cache, test_recs) for name, e in base.items()}
    for level in ("GEN-L", "TEAM-L", "SD-L", "TASK-L"):
        lab = np.array([label_at(r.labels, level) for r in test_recs])
        new = np.array([r.labels.get("GEN-L") == held for r in test_recs])
        row = {}
        for rule in ("gate", "ncm"):
            pred = np.array(predict_with_enrolled(emb.info, cache.taxonomy, enr, test, rule)[level]["pred"])
            row[rule] = acc_pair(pred == lab, new)
        for name, e in base.items():
            names, p = aggregate(base_inf[name].probs, parents(cache.taxonomy, "GEN-L", e.info.classes, level))
            row[name] = acc_pair(np.array(names)[p.argmax(1)] == lab, new)
        names, p = aggregate(test.probs, parents(cache.taxonomy, "GEN-L", emb.info.classes, level))
        row["before"] = acc_pair(np.array(names)[p.argmax(1)] == lab, new)  # the LOGO head alone
        res["levels"][level] = row
    return res


def fold_shots(emb: Embedder, cache: FeatureCache, held: str, recs: FoldRecords,
               shots: tuple[int, ...] = (3, 5, 10, 20), draws: int = 5, warned: set[str] | None = None) -> dict:
    """Enrollment alone (no retraining) at several k, each from `draws` seeded draws of g's train videos: GEN-L."""
    protos, _ = emb.class_prototypes(cache)
    val = fold_val(emb, cache, held, warned, recs.val)
    tau = prototype_tau(protos, val.embeddings, val.targets)
    pool = [r for r in cache.ok_records("train") if r.labels.get("GEN-L") == held]
    pool_emb = dict(zip([r.path for r in pool], emb(cache, pool).embeddings))
    test_recs = recs.test
    test = emb(cache, test_recs)
    lab = np.array([label_at(r.labels, "GEN-L") for r in test_recs])
    new = lab == held
    out: dict = {}
    for k in [k for k in shots if k <= len(pool)]:
        for seed in range(draws):
            paths = enrollment_videos(cache, held, k, seed)
            enr = Enrollment("-", list(emb.info.classes), "GEN-L", tau, protos)
            add_entry(enr, held, {"GEN-L": held}, np.stack([pool_emb[p] for p in paths]), paths, cache.cache_id)
            for rule in ("gate", "ncm"):
                pred = np.array(predict_with_enrolled(emb.info, cache.taxonomy, enr, test, rule)["GEN-L"]["pred"])
                out.setdefault(f"{rule}-{k}", []).append(acc_pair(pred == lab, new))
    return out


def calibration_rows(runs: list[Path], cache: FeatureCache, out: Path) -> list[dict]:
    """Temperature fitted on val, ECE (15 bins) on test before/after, for finished full runs."""
    rows = []
    for run in runs:
        emb = Embedder(run)
        where = f"{LOGO_RESULTS} calibration: {SEEN_KEY}"
        recs = fold_records(emb.info, cache, f"{run.name}'s temperature ({where})", f"{run.name}'s ECE ({where})")
        val = known_val(emb, cache, f"{run.name}'s temperature", records=recs.val)
        test = emb(cache, recs.test)
        cal = fit_calibration(val.logits, val.targets, val.probs, "-", emb.info.classes)
        after = cal.probs(test.logits)
        y = test.targets
        idx = np.arange(len(y))
        row = {"run": str(run), "temperature": cal.temperature, "n_val": cal.n, "n_test": int((y >= 0).sum()),
               "val_ece_before": cal.ece_before, "val_ece_after": cal.ece_after,
               "test_ece_before": ece(test.probs, y), "test_ece_after": ece(after, y),
               "test_ece_softmax_mean_logits": ece(softmax(test.logits), y),
               "test_accuracy": float((test.probs.argmax(1) == y).mean())}
        row["test_ece_before_ci"] = boot_ci(lambda i: ece(test.probs[i], y[i]), [idx])
        row["test_ece_after_ci"] = boot_ci(lambda i: ece(after[i], y[i]), [idx])
        if recs.seen:
            row[SEEN_KEY] = recs.seen
        rows.append(row)
        plot_reliability({"before": reliability(test.probs, y), "after (T=%.2f)" % cal.temperature:
                          reliability(after, y)}, out / reliability_file(run.name, ".png"), title=run.name)
    return rows


def evaluate_folds(cache: FeatureCache, runs: Path, out: Path, gens: list[str], k: int, seed: int,
                   calibrate: list[Path] = (), log: Callable[[str], None] = print, shots: bool = False
                   ) -> dict[str, Any]:
    """Measure every finished fold under `runs` (and calibrate `calibrate`); results.json/.md in `out`."""
    out = make_dir(out)
    results: dict[str, Any] = {"cache": str(cache.root), "seed": seed, "k": k, "openset": {}, "enroll": {}}
    tested = held_out_tested(cache)
    for g in gens:
        logo, retrain = runs / LOGO_RUNS / g, runs / f"retrain{k}" / g
        if not finished(logo):
            continue
        if g not in tested:
            log(f"{g}: skipped, no test video of {g} in {cache.root} (nothing unseen to measure)")
            continue
        for run in [r for r in (logo, retrain) if finished(r) and "withheld" not in read_json(r / CONFIG)]:
            # measured all the same: the user decides
            results.setdefault("not_withheld", []).append(str(run))
            log(f"{run}: trained {OLD_FOLD}: its figures are not those of an unseen generator; delete it to train "
                "it again")
        fold = measure_fold(logo, retrain, cache, g, k, seed, shots, make_dir(out / LOGO_FOLDS) / f"{g}.json")
        for key, value in fold.items():
            if key != STAMP:  # what the fold was measured on: bookkeeping of folds/<g>.json
                results.setdefault(key, {})[g] = value
        log(f"{g}: GEN-L AUROC {fmt(fold['openset']['GEN-L']['prototype']['auroc'])} (prototype)")
    results["calibration"] = calibration_rows(list(calibrate), cache, make_dir(out / LOGO_CALIBRATION))
    write_text(out / LOGO_RESULTS, dumps(results))
    write_text(out / LOGO_RESULTS_MD, to_markdown(results))
    return results


def measure_fold(logo: Path, retrain: Path, cache: FeatureCache, g: str, k: int, seed: int, shots: bool,
                 path: Path) -> dict[str, Any]:
    """One fold's measurements, kept in `path` so a rerun (more folds finished) only adds what is new.

    Kept only while measured on the same weights and cache records (`fold_stamp`): a fold trained again
    in place, another --cache, or a cache changed in place (pruned, appended to) is measured again
    (enrollment alone when only a retrained run changed).
    """
    fold = _kept(path)
    stamp, old = fold_stamp(logo, retrain, cache), fold.get(STAMP) or {}
    if any(old.get(key) != stamp[key] for key in ("cache_id", "cache_digest", "logo", "seen_rule")):
        fold = {}
    elif "enroll" in fold and any(old.get(key) != stamp[key] for key in ("retrain", "retrain-balanced")):
        del fold["enroll"]
    fold[STAMP] = stamp
    warned: set[str] = set()  # a small val split: one warning for the whole fold
    enrolled = fold.get("enroll", {})
    if enrolled.get("k", k) != k or enrolled.get("seed", seed) != seed:
        del fold["enroll"]  # measured for another enrollment size or draw: measure again
    todo = {"openset": "scores" not in fold.get("openset", {}).get("GEN-L", {}).get("knn", {}),  # older folds lack
            "shots": shots and "shots" not in fold, "enroll": "enroll" not in fold and finished(retrain)}  # scores
    if any(todo.values()):
        emb = Embedder(logo)
        where = f"{LOGO_FOLDS}/{g}.json: {SEEN_KEY}"
        recs = fold_records(emb.info, cache, f"fold {g}'s threshold and τ ({where})", f"fold {g}'s figures ({where})")
        fold.pop(SEEN_KEY, None)
        fold.update({SEEN_KEY: recs.seen} if recs.seen else {})
    if todo["openset"]:
        fold["openset"] = fold_openset(emb, cache, g, 5, recs, warned)
    if todo["shots"]:
        fold["shots"] = fold_shots(emb, cache, g, recs, warned=warned)
    if todo["enroll"]:
        fold["enroll"] = {**fold_enroll(emb, retrain, cache, g, k, seed, recs, warned), "seed": seed}
    write_text(path, dumps(fold))
    return fold


STAMP = "measured_on"


def _kept(path: Path) -> dict[str, Any]:
    """A fold's measurements as an earlier call kept them; {} (measure again) when absent or unreadable."""
    try:
        return fileio.read_json(path) if path.is_file() else {}
    except SagaError:  # a hand-edited or damaged file of logo's own: only bookkeeping
        return {}


def fold_stamp(logo: Path, retrain: Path, cache: FeatureCache) -> dict[str, str | None]:
    """The cache (id and records' digest: a prune or an appending extract keeps the id) and the weights
    (fingerprints) a fold's measurements come from; None for a run not finished."""
    balanced = retrain.parent.with_name(retrain.parent.name + "-balanced") / retrain.name
    fp = lambda run: file_fingerprint(run / MODEL) if finished(run) else None  # noqa: E731
    return {"cache_id": cache.cache_id, "cache_digest": cache_digest(cache), "logo": fp(logo),
            "retrain": fp(retrain), "retrain-balanced": fp(balanced), "seen_rule": SEEN_RULE}


SEEN_RULE = "v1"  # folds measured before saga.explain.seen left out seen videos lack it: measured again
