"""The open-world operations on a run folder (what the CLI and predict/evaluate call).

Each one loads the run, reads features from a cache (by default the run's own, recorded in its
config.json), fits what it fits on the *validation* split (calibration, open-set threshold,
prototype temperature) or the given videos (enrollment), and writes its files into the run
folder (or `out`, for a run folder that must stay read-only) atomically. A fit on val leaves out the val
videos the run was trained on, a reported split those it was trained or validated on (`saga.explain.seen`:
a held-out --cache sharing its videos, a copied video), recorded as `seen_in_training`.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from saga.cache.manifest import SPLITS, VideoRecord, seeded_hash
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.seen import FIT_AGAINST, SEEN_KEY, leave_out_seen, only_unseen
from saga.fileio import check_writable, make_dir, write_json
from saga.openworld.calibration import Calibration, degenerate, fit_calibration, plot_reliability, reliability
from saga.openworld.embeddings import Embedder, known_val, min_val_for, split_records
from saga.openworld.enroll import Enrollment, add_entry, generator_labels, level_classes, prototype_tau
from saga.openworld.fitcache import FIT_CACHE, fit_cache, labelled_paths, other_cache
from saga.openworld.openset import OpenSet, check_options, fit_openset
from saga.openworld.store import pair_lock
from saga.runs import MODEL, RunFolder, check_cache_seals, file_fingerprint
from saga.runs.files import CALIBRATION, ENROLLED, OPENSET, reliability_file
from saga.taxonomy import Taxonomy


RUN_CACHE = "--run-cache"  # enroll's option for the run's own cache (its --cache holds the new videos)
CALIBRATE, OPENSET_FIT, ENROLL = "`saga calibrate`", "`saga openset fit`", "`saga enroll`"  # named in refusals


def run_cache(emb: Embedder, cache: str | Path | None, flag: str = "--cache") -> FeatureCache:
    """The cache given (with `flag`), else the one the run was trained on (its config.json `cache`)."""
    path = cache or emb.info.config.get("cache")
    if not path:
        raise SagaError(f"{emb.info.path}: the run records no cache; pass {flag}")
    if not Path(path).is_dir():
        raise SagaError(f"{path}: cache folder not found; pass the run's feature cache with {flag}")
    return sealed_cache(path)


def sealed_cache(path: str | Path) -> FeatureCache:
    """The cache at `path`, refused in one line when a sealed part was edited or lost (`check_cache_seals`, as
    train and evaluate check it): a fit or an enrollment must not read relabelled or vanished videos in silence."""
    cache = FeatureCache.open(path)
    check_cache_seals(cache)
    return cache


def model_id(emb: Embedder) -> str:
    """The fingerprint of the weights `emb` embeds with (what the open-world files record as run_model)."""
    return emb.fingerprint


def open_run(run: str | Path, device: str, doing: str) -> Embedder:
    """The run loaded for `doing`; refused in one line while another process trains it (weights about to change)."""
    RunFolder(Path(run)).check_not_training(doing)
    return Embedder(run, device)


@contextmanager
def committing(emb: Embedder, folder: Path, doing: str) -> Iterator[None]:
    """The folder's open-world writer lock (`pair_lock`), the run checked again under it: a training started
    since the fit began (or finished meanwhile: other weights) would pair the new weights' name with figures
    of the old ones."""
    with pair_lock(make_dir(folder)):
        RunFolder(emb.info.path).check_not_training(doing)
        if file_fingerprint(emb.info.path / MODEL) != emb.fingerprint:
            raise SagaError(f"{emb.info.path / MODEL}: changed while {doing} ran (the run was trained again); "
                            f"rerun {doing} on the new weights")
        yield


def calibrate_run(run: str | Path, cache: str | Path | None = None, out: str | Path | None = None,
                  device: str = "cpu", report_split: str | None = "test",
                  write_report: bool = False) -> tuple[Calibration, dict[str, Any]]:
    """Fit the temperature on the val split, save calibration.json; ECE/reliability on `report_split` too.

    The reliability data records the weights and T it was made with, so the report can tell it is stale.
    `write_report` writes it (reliability-<split>.json and .png) under the same writer lock as calibration.json:
    written after it, a parallel calibrate's calibration.json could land between the two."""
    emb = open_run(run, device, CALIBRATE)
    folder = check_writable(Path(out or emb.info.path))
    c = run_cache(emb, cache)
    val_records, seen = unseen_val(emb, c, f"the temperature's fit ({CALIBRATION}: {SEEN_KEY})")
    val = known_val(emb, c, "the temperature", records=val_records)
    cal = fit_calibration(val.logits, val.targets, val.probs, model_id(emb), emb.info.classes)
    cal.seen_in_training = seen
    cal.cache_id, cal.fit_digest = fit_cache(c).values()  # a later use on another cache is warned about
    if degenerate(cal):  # written all the same (predict shows T): the fit did what it could
        warnings.warn(f"{folder / CALIBRATION}: {degenerate(cal)}; fit it on more val videos of the run's classes "
                      f"(extract more into {c.root}, then rerun `saga calibrate`), or delete {CALIBRATION} to keep "
                      "the run's own probabilities", stacklevel=2)
    diagrams: dict[str, Any] = {}
    if report_split:
        records, seen_here = only_unseen(emb.info, c, split_records(c, report_split), report_split,
                                    f"the {report_split} ECE ({reliability_file(report_split)}: {SEEN_KEY})",
                                    fix="report on videos it has not seen (another --split)")
        test = emb(c, records)
        diagrams = {"split": report_split, "run_model": cal.run_model, "temperature": cal.temperature,
                    "before": reliability(test.probs, test.targets),
                    "after": reliability(cal.probs(test.logits), test.targets),
                    **({SEEN_KEY: seen_here} if seen_here else {})}
    with committing(emb, folder, CALIBRATE):
        cal.save(folder)
        if diagrams and write_report:
            write_reliability(folder, diagrams, f"{Path(run).name}: {report_split}")
    return cal, diagrams


def write_reliability(folder: Path, diagrams: dict[str, Any], title: str) -> None:
    """reliability-<split>.json and its diagram (.png) from `calibrate_run`'s data."""
    split, b, a = diagrams["split"], diagrams["before"], diagrams["after"]
    write_json(folder / reliability_file(split), diagrams)
    plot_reliability({"before": b, f"after (T={diagrams['temperature']:.2f})": a},
                     folder / reliability_file(split, ".png"), title=title)


def fit_openset_run(run: str | Path, cache: str | Path | None = None, out: str | Path | None = None,
                    kind: str = "knn", k: int = 5, percentile: float = 95.0, device: str = "cpu") -> OpenSet:
    """Prototypes + k-NN bank from the run's labelled videos, threshold from its known val videos."""
    check_options(kind, k, percentile)
    emb = open_run(run, device, OPENSET_FIT)
    folder = check_writable(Path(out or emb.info.path))
    c = run_cache(emb, cache)
    protos, train = emb.class_prototypes(c)
    val_records, seen = unseen_val(emb, c, f"the threshold's fit ({OPENSET}: {SEEN_KEY})")
    val = known_val(emb, c, f"the unknown threshold at the {percentile:g}th percentile", min_val_for(percentile),
                    records=val_records)
    det = fit_openset(protos, train.embeddings, val.embeddings, val.targets, model_id(emb), emb.info.classes,
                      kind, k, percentile)
    det.seen_in_training = seen
    det.cache_id, det.fit_digest = fit_cache(c, labelled_paths(emb.info)).values()  # its bank: labelled videos
    with committing(emb, folder, OPENSET_FIT):
        det.save(folder)
    return det


def unseen_val(emb: Embedder, cache: FeatureCache, left_out_of: str) -> tuple[list[VideoRecord], dict[str, Any] | None]:
    """The val videos to fit on, without those the run was trained on (`saga.explain.seen`: a train video's logits
    are the sharpest it has, and it sits in the k-NN bank at distance 0), and what was left out."""
    return only_unseen(emb.info, cache, split_records(cache, "val"), "val", left_out_of, FIT_AGAINST,
                       fix="fit on val videos it was not trained on (another --cache)")


def select_videos(cache: FeatureCache, generator: str, videos: str | None, split: str | None,
                  limit: int | None, seed: int) -> list[VideoRecord]:
    """The cache's ok records to enroll: under folder `videos` (a path prefix), else labelled `generator`."""
    if split is not None and split not in SPLITS:
        raise SagaError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit < 1:
        raise SagaError(f"--limit must be >= 1, got {limit}")
    recs = list(cache.ok_records(split))
    if videos:
        prefix = str(videos).strip("/") + "/"
        recs = [r for r in recs if r.path.startswith(prefix)]
    else:
        recs = [r for r in recs if r.generator == generator or r.labels.get("GEN-L") == generator]
    if not recs:
        where = f"under {videos!r}" if videos else f"labelled {generator!r}"
        raise SagaError(f"{cache.root}: no extracted videos {where}{' in the ' + split + ' split' if split else ''}; "
                        "extract them first (`saga extract --videos DIR --out CACHE` with the run's encoder)")
    recs = sorted(recs, key=lambda r: seeded_hash(seed, r.path))[:limit] if limit else recs
    return sorted(recs, key=lambda r: r.path)


def enroll_run(run: str | Path, generator: str, cache: str | Path, videos: str | None = None,
               task: str | None = None, sd: str | None = None, team: str | None = None,
               run_cache_path: str | Path | None = None, split: str | None = None, limit: int | None = None,
               seed: int = 0, out: str | Path | None = None, device: str = "cpu", replace: bool = False
               ) -> Enrollment:
    """Enroll `generator` from cache videos into the run's enrolled.json (+ its tensors), no retraining.

    A name already enrolled is refused unless `replace`: its prototype (and the videos behind it) would
    silently give way to the new ones."""
    emb = open_run(run, device, ENROLL)
    folder = check_writable(Path(out or emb.info.path))
    new_cache = sealed_cache(cache) if Path(cache).is_dir() else None
    if new_cache is None:
        raise SagaError(f"{cache}: cache folder not found; extract the videos with the run's encoder first")
    records = select_videos(new_cache, generator, videos, split, limit, seed)
    labels = generator_labels(generator, task, sd, team)
    inf = emb(new_cache, records)  # refuses incompatible features in one line
    with committing(emb, folder, ENROLL):  # read, add, write: a parallel enroll waits, then adds to its file
        enr = load_or_start(emb, folder, run_cache_path)
        check_new_name(enr, generator, folder, replace)
        add_entry(enr, generator, labels, inf.embeddings, [r.path for r in records], new_cache.cache_id)
        tax = emb.info.provenance.get("taxonomy")  # what predict maps the levels with (OpenWorld.load)
        enr.answered = list(level_classes(Taxonomy.from_dict(tax), enr.level, enr)) if tax else []
        enr.save(folder)
    return enr


def check_new_name(enr: Enrollment, name: str, folder: Path, replace: bool) -> None:
    """Refuse a name already enrolled unless the caller asked to replace it (--replace)."""
    old = next((e for e in enr.entries if e.name == name), None)
    if old is not None and not replace:
        raise SagaError(f"{folder / ENROLLED}: {name!r} is already enrolled (from {len(old.paths)} videos); pass "
                        "--replace to replace it with these videos, or enroll them under another --generator name")


def load_or_start(emb: Embedder, folder: Path, run_cache_path: str | Path | None) -> Enrollment:
    """The run's enrollment file when it is current, else a fresh one (old prototypes and τ from its cache).

    A --run-cache given for an existing file must be the cache its prototypes came from: they are not
    recomputed (the enrolled sources were weighed against them)."""
    if (folder / ENROLLED).is_file():
        enr = Enrollment.load(folder, model_id(emb), emb.info.classes, emb.info.level)
        if run_cache_path is not None and run_cache(emb, run_cache_path, RUN_CACHE).cache_id != enr.run_cache_id:
            raise SagaError(f"{RUN_CACHE} {run_cache_path}: {folder / ENROLLED} holds the run's prototypes and τ "
                            f"from {'another cache' if enr.run_cache_id else 'its first enrollment'}; leave out "
                            f"{RUN_CACHE} to enroll with them, or delete {ENROLLED} (and its enrolled sources) "
                            "to start over from this cache")
        return enr
    c = run_cache(emb, run_cache_path, RUN_CACHE)
    protos, _ = emb.class_prototypes(c, RUN_CACHE)
    val_records, seen = unseen_val(emb, c, f"the prototype temperature τ's fit ({ENROLLED}: {SEEN_KEY})")
    val = known_val(emb, c, "the prototype temperature τ", records=val_records)
    return Enrollment(model_id(emb), list(emb.info.classes), emb.info.level,
                      prototype_tau(protos, val.embeddings, val.targets), protos, run_cache_id=c.cache_id,
                      seen_in_training=seen)


def evaluate_openworld(run: str | Path, cache: str | Path | None = None, split: str = "test",
                       device: str = "cpu") -> dict[str, Any]:
    """For `saga evaluate` (app layer: explain cannot import this layer): calibration and open-set figures.

    {} when the run has neither calibration.json nor openset.json; else `OpenWorld.evaluation` on
    `split`: ECE before/after with the reliability data, and the known videos' false-unknown rate
    (with videos of classes the run never saw: AUROC, OSCR and the per-video scores for the report).
    """
    from saga.openworld.extras import OpenWorld

    emb = Embedder(run, device)
    ow = OpenWorld.load(emb.info.path, emb.info, enrollment=False)
    if ow.calibration is None and ow.openset is None:
        return {}
    c = run_cache(emb, cache)
    warn_other_cache(ow, c, emb)
    records, seen = leave_out_seen(emb.info, c, split_records(c, split), split, quiet=True)  # evaluate warned
    level, known = emb.info.level, set(emb.info.classes)
    unseen = np.array([r.labels.get(level) is not None and r.labels.get(level) not in known for r in records], bool)
    return {"split": split, **ow.evaluation(emb(c, records), unseen), **({SEEN_KEY: seen} if seen else {})}


def warn_other_cache(ow: Any, cache: FeatureCache, emb: Embedder) -> None:
    """One line for each of calibration.json / openset.json fitted on another cache than `cache`, or on it before
    it changed (`fitcache.other_cache`), naming the command that refits it there."""
    run, where = emb.info.path, f"--cache {cache.root}"
    labelled = labelled_paths(emb.info) if ow.openset is not None else set()  # what its bank was built from
    for fitted, name, command, read in ((ow.calibration, CALIBRATION, "saga calibrate", set()),
                                        (ow.openset, OPENSET, "saga openset fit", labelled)):
        if fitted is not None and (line := other_cache(run / name, {k: getattr(fitted, k) for k in FIT_CACHE}, cache,
                                                       emb.info, f"refit it: `{command} {run} {where}`", read)):
            warnings.warn(line, stacklevel=3)
