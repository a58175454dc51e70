"""The probe's run-facing side: which videos a run was labelled with, the probe beside a run in
`saga evaluate`, and the `saga probe` run folder. The model, its features and its fitting are
`saga.explain.probe`; this module only decides what it is fitted on and where it is written.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from saga.cache.fraction import draw, labelled_subset, read_labelled, saved_settings, settings, write_labelled
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.probe import PROBE_FILE, train_and_evaluate
from saga.explain.seen import SEEN_KEY, only_unseen
from saga.explain.split_flags import PROBE_FIT, TRAINED_KEY
from saga.provenance import now, versions
from saga.runs import CONFIG, LABELLED, PROVENANCE, RunFolder, RunInfo, check_cache_seals, read_json, write_json
from saga.taxonomy import check_level


# -- the labelled subset -------------------------------------------------------------------------
def run_subset(run_dir: Path, cache: FeatureCache) -> tuple[str, dict[str, list[str]], dict[str, Any], int | None]:
    """The labelled videos a run was trained on: (level, class -> paths, settings, frames).

    Stage 2: its labelled.json (checked against the cache's train split). Stage 1 / BIN-L
    without a labelled.json: every labelled train video at the run's level.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise SagaError(f"{run_dir}: not a saga run folder (no {CONFIG})")
    config = read_json(run_dir / CONFIG)
    level = check_level(str(config.get("level")))
    prov = read_json(run_dir / PROVENANCE) if (run_dir / PROVENANCE).is_file() else {}
    if prov.get("cache_id") not in (None, cache.cache_id):
        raise SagaError(f"{run_dir}: trained on cache {str(prov['cache_id'])[:12]}, not {cache.cache_id[:12]}; "
                        "the probe is fitted on the run's own cache's labelled videos only")
    frames = config.get("frames")
    train = cache.ok_records("train")
    path = run_dir / LABELLED
    if path.is_file():
        data = read_json(path)
        if data.get("cache_id") != cache.cache_id:
            raise SagaError(f"{path}: the run's labelled videos are from cache {str(data.get('cache_id'))[:12]}, "
                            f"not {cache.cache_id[:12]}; pass the run's own cache")
        wanted = saved_settings(data)
        subset = read_labelled(path, wanted, train, cache.taxonomy)
        return level, subset or {}, wanted, frames
    if config.get("stage") == 2:
        raise SagaError(f"{run_dir}: a stage-2 run without {LABELLED}; cannot tell which videos it was trained on")
    subset = labelled_subset(train, level, cache.taxonomy, 1.0, 1, 0) if train else {}
    return level, subset, settings(level, 1.0, 1, 0, cache.cache_id), frames


def cap_subset(subset: dict[str, list[str]], level: str, cache: FeatureCache, cap: int | None,
               seed: int = 0) -> dict[str, list[str]]:
    """At most `cap` videos, drawn per class with the labelled-subset rule (stratified, seeded)."""
    total = sum(len(p) for p in subset.values())
    if cap is None or total <= cap:
        return subset
    keep = {p for paths in subset.values() for p in paths}
    recs = [r for r in cache.ok_records("train") if r.path in keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return labelled_subset(recs, level, cache.taxonomy, cap / total, 1, seed)


def trained_on_sources(run_dir: Path) -> bool:
    """Whether a run was trained with `sources` (older runs and stage 1: no)."""
    config = read_json(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else None
    train = config.get("train") if isinstance(config, dict) else None
    return isinstance(train, dict) and train.get("sources") is True


def probe_for_run(run_dir: str | Path, cache: FeatureCache, split: str, classes: Sequence[str],
                  max_train: int | None = 20000, keep_correct: bool = False,
                  leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The probe beside a run in `saga evaluate`: fit on the run's own labelled videos (and, for a run
    trained on sources, their generators), metrics on `split` without the `leave_out` paths (as the run's)."""
    level, subset, wanted, frames = run_subset(Path(run_dir), cache)
    used = cap_subset(subset, level, cache, max_train, int(wanted.get("seed") or 0))
    _, metrics = train_and_evaluate(cache, level, used, frames, split, classes, keep_correct,
                                    trained_on_sources(Path(run_dir)), leave_out)
    total = sum(len(p) for p in subset.values())
    metrics["subset"] = {**wanted, "source": LABELLED if (Path(run_dir) / LABELLED).is_file() else "all train labels",
                         "videos": total, "capped": total > (max_train or total)}
    metrics["frames"] = frames
    return metrics


def seen_by_probe(cache: FeatureCache, out: Path, level: str, split: str) -> tuple[frozenset[str], dict | None]:
    """The `split` videos `saga probe` leaves out, as `saga evaluate` does for a run on its own cache: copies of
    train or val videos (the probe fits on train and picks C on val), and what was left out (None: nothing)."""
    records = [r for r in cache.ok_records(split) if r.labels.get(level) is not None]
    info = RunInfo(out, {"cache": str(cache.root)}, [], level, 0, {"cache_id": cache.cache_id}, True)
    kept, seen = only_unseen(info, cache, records, split, f"the probe's scores (metrics-{split}.json: {SEEN_KEY})",
                             fix="score the probe on another --split")
    return frozenset(r.path for r in records) - {r.path for r in kept}, seen


# -- the `saga probe` run folder -----------------------------------------------------------------
def _check_out(out: Path) -> None:
    """Refuse an --out that is not empty and not a probe folder; change nothing (a refit may still fail)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SagaError(f"{out}: exists and is not a folder; choose another --out")
    cfg = out / CONFIG
    if cfg.is_file():
        if read_json(cfg).get("kind") != "probe":
            raise SagaError(f"{out}: holds a training run, not a probe; choose another --out")
        return
    extra = sorted(p.name for p in out.iterdir())
    if extra:
        raise SagaError(f"{out}: not empty and not a probe folder ({extra[0]}, ...); choose another --out")


def run_probe(cache_path: str | Path, out: str | Path, level: str | None = None, fraction: float | None = None,
              floor: int | None = None, seed: int | None = None, like: str | Path | None = None,
              frames: int | None = None, split: str = "test", sources: bool | None = None,
              per_generator: int | None = None) -> dict[str, Any]:
    """`saga probe`: fit on the stage-2 labelled subset (or `like`'s), save the folder, return test metrics.

    `sources`: fit on the labelled videos' generators, sum each class's; None: as `like` was
    trained, or on (stage 2's default) without `like`. A cache whose sealed parts were edited or lost is refused
    before anything is read or written (`check_cache_seals`, as train and evaluate do), for API callers too.
    """
    cache = FeatureCache.open(cache_path)
    check_cache_seals(cache)
    out = Path(out)
    given = {"level": level, "fraction": fraction, "floor": floor, "seed": seed, "per_generator": per_generator}
    if like is not None:
        run_level, subset, wanted, run_frames = run_subset(Path(like), cache)
        clash = [f"--{k} {v!r} (the run: {wanted[k]!r})" for k, v in given.items()
                 if v is not None and v != wanted[k]]
        if clash:
            raise SagaError(f"--like {like}: {', '.join(clash)}; drop the flag or the --like")
        wanted = {**wanted, "cache_id": cache.cache_id}
        frames = frames if frames is not None else run_frames
        level = run_level
        sources = trained_on_sources(Path(like)) if sources is None else sources
    else:
        level = check_level(level or "GEN-L")
        wanted = settings(level, 0.005 if fraction is None else fraction, 2 if floor is None else floor,
                          0 if seed is None else seed, cache.cache_id, per_generator or 0)
        subset = draw(cache.ok_records("train"), cache.taxonomy, wanted)
    if frames is not None and not 1 <= frames <= cache.frames:
        raise SagaError(f"--frames must be in [1, {cache.frames}] (the cache's T), got {frames}")
    if len(subset) < 2:
        raise SagaError(f"{cache.root}: the train split has {len(subset)} labelled class(es) at {level}; need >= 2")
    _check_out(out)
    started = now()
    leave_out, seen = seen_by_probe(cache, out, level, split)
    probe, metrics = train_and_evaluate(cache, level, subset, frames, split, sources=sources is not False,
                                        leave_out=leave_out)
    if seen:
        metrics[SEEN_KEY] = seen
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("metrics-*.json"):  # refitted in place (cheap, deterministic): no split's metrics of the
        old.unlink()                        # previous probe stand beside the new one; only once the fit succeeded
    probe.save(out / PROBE_FILE)
    write_labelled(out / LABELLED, subset, wanted, cache.ok_records("train"))
    config = {"kind": "probe", "stage": "probe", "level": level, "classes": probe.classes, "frames": frames,
              **{k: wanted[k] for k in ("fraction", "floor", "per_generator", "seed")}, "cache_id": cache.cache_id,
              "cache": str(Path(cache_path).resolve()), "like": str(Path(like).resolve()) if like else None,
              "features": probe.spec, "sources": probe.sources or None,
              "model": {"kind": "logistic regression", "solver": "lbfgs",
                                                 "class_weight": "balanced", "C": probe.C,
                                                 "selection": metrics["selection"], "standardised": True},
              "train": {**{k: wanted[k] for k in ("fraction", "floor", "per_generator", "seed")},
                        "loss": "logistic"},
              "n_train": metrics["n_train"], "versions": versions(), "started": started, "finished": now()}
    write_json(out / CONFIG, config)
    result = {"level": level, **metrics, "run": str(out)}
    if split == "train":  # scored on the videos it was fitted on (some or all of them): said, and recorded
        result[TRAINED_KEY] = "train"
        warnings.warn(f"{out}: {PROBE_FIT.format(n_train=metrics['n_train'], n=metrics['n'])}", stacklevel=2)
    RunFolder(out).write_evaluation(split, result)
    return result


__all__ = ["cap_subset", "probe_for_run", "run_probe", "run_subset", "trained_on_sources"]
