"""`saga evaluate`: accuracy, macro accuracy, per-class accuracy, confusion and (BIN-L) AUC of a run.

Macro accuracy (the mean of per-class accuracies) is the headline next to plain
accuracy because attribution splits are unbalanced: a model that ignores a rare
generator can still score a high accuracy. Records without a class at the run's
level (SD-L: generators with no SD backbone) are excluded, as in the paper; videos of a class
the run was never trained on are not: they count as errors (`untrained_classes`).

Every accuracy comes with a 95 % interval and the number of videos behind it
(`saga.explain.intervals`): Wilson for accuracy and per-class accuracy; for macro accuracy the
wider of a stratified bootstrap over videos and a normal interval with Agresti-Coull per-class
variances (the bootstrap alone collapses when a class is all right or all wrong); classes with
fewer than 10 test videos are flagged.
The result records the weights it was made with ("run_model", the blake2b of model.safetensors, and
"run_finished": done.json was there), as the open-world files do: `saga report` drops an evaluation
of other weights (a run trained on after `--resume`, or retrained) instead of showing it as the run's.
Beside the run, `evaluate` fits the linear probe (`saga.explain.probe`) on the run's own
labelled train videos and reports its metrics under "probe", so one sees at once
whether the transformer learned more than a linear model on pooled statistics; "probe" →
"paired" is the transformer's accuracy minus the probe's on the same videos with a paired 95 %
interval, which says whether the data resolve "beats the probe" at all.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table

from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.intervals import FEW, format_ci, format_nearest_source, format_paired, paired_difference
from saga.explain.probe import choice_text
from saga.explain.probe_runs import probe_for_run
from saga.explain.scores import binary_auc, compute_metrics, scored_classes, source_metrics
from saga.explain.seen import SEEN_KEY, only_unseen
from saga.explain.split_flags import (CHOSEN_KEY, FITTED_KEY, HELDOUT_KEY, PAIRED_OPTIMISTIC, SPLIT,
                                      TRAINED_KEY, chosen_on_val, mark_openworld, mark_probe, openworld_label,
                                      probe_mark, split_flag, split_label, split_mark, split_warning, warn_split)
from saga.fileio import make_dir
from saga.fileio import write_json as write_json_atomic
from saga.model.inference import infer, record_targets
from saga.runs import (DONE, MODEL, RunFolder, cache_digest, check_cache, evaluation_file, file_fingerprint,
                       heldout_tag, load_model)

__all__ = ["binary_auc", "check_cache", "compute_evaluation", "compute_metrics", "evaluate", "metrics_table",
           "other_weights", "probe_metrics", "run_weights", "save_evaluation", "stored_evaluation", "warn_unfinished",
           "weights_stamp", "data_stamp", "data_label", "SPLIT", "CACHE_ID", "CACHE_DIGEST", "HELDOUT_KEY",
           "CHOSEN_KEY", "TRAINED_KEY", "FITTED_KEY", "chosen_on_val", "split_label", "openworld_label",
           "mark_openworld", "mark_probe", "probe_mark", "split_mark", "PAIRED_OPTIMISTIC", "split_flag",
           "split_warning", "warn_split",
           "write_json_atomic"]

RUN_MODEL, RUN_FINISHED = "run_model", "run_finished"


def run_weights(run_dir: str | Path) -> str | None:
    """blake2b of the run's model.safetensors (None without one: a probe folder): what every file made
    from the weights records as "run_model", so a reader can tell a file of older weights."""
    model = Path(run_dir) / MODEL
    return file_fingerprint(model) if model.is_file() else None


def other_weights(data: Any, weights: str | None) -> bool:
    """`data` (a file's JSON) was made with other weights than `weights`; one recording none (an older
    saga) cannot be told, so it passes."""
    return bool(weights) and isinstance(data, dict) and data.get(RUN_MODEL) not in (None, weights)


def weights_stamp(run_dir: str | Path) -> dict[str, Any]:
    """{"run_model", "run_finished"} of the run's weights. Taken before loading them: weights replaced
    meanwhile are then flagged as other weights later, never passed off as the current ones."""
    return {RUN_MODEL: run_weights(run_dir), RUN_FINISHED: (Path(run_dir) / DONE).is_file()}


CACHE_ID, CACHE_DIGEST = "cache_id", "cache_digest"


def data_stamp(cache: FeatureCache, split: str) -> dict[str, str]:
    """The data a T-Sig / t-SNE file shows (split, cache id), recorded beside its weights: a figure alone
    cannot tell a train-split map from a test-split one, nor the run's cache from a held-out one. The records
    digest too: an appending extract keeps the id, and a rerun of `saga demo` reuses a figure only on the same
    videos (`saga.demo_reuse`)."""
    return {SPLIT: split, CACHE_ID: cache.cache_id, CACHE_DIGEST: cache_digest(cache)}


def data_label(stamp: dict[str, Any], run_cache: Any) -> str:
    """'test split', plus the cache when it is not the run's `run_cache` (titles and report captions)."""
    split, cache = stamp.get(SPLIT), stamp.get(CACHE_ID)
    text = f"{split} split{split_mark(stamp)}" if split else "split not recorded (made by an older saga)"
    if cache and run_cache and cache != run_cache:
        text += f" of cache {str(cache)[:12]}, not the run's training cache {str(run_cache)[:12]}"
    return text


def warn_unfinished(run_dir: str | Path, stamp: dict[str, Any], what: str) -> None:
    """One warning when the run has no done.json: `what` is then of its best weights so far."""
    if not stamp.get(RUN_FINISHED):
        warnings.warn(f"{run_dir}: the run is unfinished (no {DONE}): {what} of its best weights so far; "
                      "rerun once it has finished", stacklevel=3)


def probe_metrics(run_dir: Path, cache: FeatureCache, split: str, classes: Sequence[str],
                  max_train: int | None = 20000, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The probe fitted on the run's own labelled videos, or {"skipped": why} when it cannot be; scored on the
    videos the run is scored on (`leave_out`: the paths left out of both, `saga.explain.seen`)."""
    try:
        return probe_for_run(run_dir, cache, split, classes, max_train, keep_correct=True, leave_out=leave_out)
    except (SagaError, ValueError) as exc:  # e.g. no train split, or one class only: the run still evaluates
        return {"skipped": str(exc)}


def evaluate(run_dir: str | Path, cache_path: str | Path, split: str = "test", batch_size: int = 256,
             device: str = "cpu", probe: bool = True, probe_max_train: int | None = 20000,
             out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a run on a cache split; writes metrics-<split>.json and metrics.json into `out` (default: the run),
    or metrics-<split>@<cache>-<id8>.json on a held-out cache (not the run's training cache).

    With `probe`, the linear probe is fitted on the run's labelled train videos (at most
    `probe_max_train`, a stratified seeded draw beyond) and its metrics go under "probe".
    """
    result = compute_evaluation(run_dir, cache_path, split, batch_size, device, probe, probe_max_train)
    save_evaluation(result, Path(out) if out is not None else Path(run_dir))
    return result


def stored_evaluation(run_dir: str | Path, current: dict[str, Any] | None,
                      split: str = "test") -> dict[str, Any] | None:
    """The run's metrics-<split>.json while `evaluate` (with the probe) would write the same, else None: made of
    the run's finished weights as they are now (`run_model`) on the cache `current` names (its `cache_id` and
    records digest `cache_digest`: an appending extract or a prune keeps the id). Why: a rerun of `saga ablate`
    evaluated every finished cell again. A file of an older saga (no `cache_digest`) is never reused."""
    run = Path(run_dir)
    stored = RunFolder(run).read_optional(evaluation_file(split))
    if not current or not isinstance(stored, dict) or not _complete(stored) or stored.get(SPLIT) != split:
        return None
    same_data = stored.get(CACHE_ID) == current.get(CACHE_ID) and stored.get(CACHE_DIGEST) == current.get(CACHE_DIGEST)
    same_weights = (stored.get(RUN_FINISHED) is True and (run / DONE).is_file()
                    and stored.get(RUN_MODEL) == run_weights(run))
    return stored if same_data and same_weights and HELDOUT_KEY not in stored else None


def _complete(stored: dict[str, Any]) -> bool:
    """What the grid reads from an evaluation is there, with its type (an edited or truncated file: evaluate)."""
    numbers = all(isinstance(stored.get(k), (int, float)) for k in ("accuracy", "macro_accuracy", "n"))
    tables = all(isinstance(stored.get(k), dict) for k in ("per_class", "per_class_n", "probe"))
    return numbers and tables and all(isinstance(stored.get(k), str) for k in (RUN_MODEL, CACHE_ID, CACHE_DIGEST))


def compute_evaluation(run_dir: str | Path, cache_path: str | Path, split: str = "test", batch_size: int = 256,
                       device: str = "cpu", probe: bool = True,
                       probe_max_train: int | None = 20000, warn: bool = True) -> dict[str, Any]:
    """The metrics of `evaluate`, written nowhere: a read-only run folder can still be evaluated. Without `warn`,
    the caller says what the split flatters (`warn_split`), once it has added the open-world figures."""
    run_dir = Path(run_dir)
    stamp = weights_stamp(run_dir)
    model, info = load_model(run_dir)
    warn_unfinished(run_dir, stamp, "these are the metrics")
    cache = FeatureCache.open(cache_path)
    check_cache(info, cache)
    records = cache.ok_records(split)
    if not records:
        raise SagaError(f"{cache.root}: no extracted videos in split '{split}'; pick another --split")
    classes, unseen = scored_classes(records, info.level, info.classes)
    targets = record_targets(records, info.level, classes)
    labelled = [r for r, t in zip(records, targets) if t >= 0]
    if not labelled:
        raise SagaError(f"{cache.root}: no '{split}' video has a class at {info.level} "
                        f"({', '.join(info.classes)}); is this the run's taxonomy?")
    excluded = len(records) - len(labelled)
    scored, seen = only_unseen(info, cache, labelled, split)
    left_out = frozenset(r.path for r in labelled) - {r.path for r in scored}
    labelled = scored
    classes, unseen = scored_classes(labelled, info.level, info.classes)
    if unseen:
        warnings.warn(f"{run_dir}: {sum(unseen.values())} {split} video(s) of class(es) it was never trained on "
                      f"({', '.join(f'{c}: {n}' for c, n in unseen.items())}) count as errors", stacklevel=2)
    inference = infer(model, info, cache, labelled, batch_size, device)
    inference.targets = record_targets(labelled, info.level, classes)
    result = {"level": info.level, "split": split, **compute_metrics(inference, classes, info.level),
              CACHE_ID: cache.cache_id, CACHE_DIGEST: cache_digest(cache), "excluded": excluded, "run": str(run_dir),
              "untrained_classes": unseen, **stamp}
    tag = heldout_tag(info, cache)
    if tag:
        result.update({HELDOUT_KEY: tag, "cache": str(cache.root)})
    else:  # the run's own val videos chose these weights, or its train videos trained them
        result.update(split_flag(run_dir, split))
    if seen:
        result[SEEN_KEY] = seen
    nearest = source_metrics(inference, [r.generator for r in labelled], model.config.subclass_of,
                             model.config.subclass_names)
    if nearest is not None:
        result["nearest_source"] = nearest
    if probe:
        result["probe"] = probe_metrics(run_dir, cache, split, info.classes, probe_max_train, left_out)
        probe_correct = result["probe"].pop("correct", None)
        if probe_correct is not None and len(probe_correct) == len(labelled):  # the same videos, in the same order
            result["probe"]["paired"] = paired_difference(inference.preds == inference.targets, probe_correct)
        mark_probe(result)  # on the run's train split the probe was fitted there too
    if warn:
        warn_split(run_dir, result)
    return result


def save_evaluation(result: dict[str, Any], folder: Path) -> Path:
    """metrics-<split>.json and metrics.json in `folder` (created), or, for a held-out cache's result,
    metrics-<split>@<tag>.json alone; the file to name. A WriteError names the folder when it is not writable."""
    make_dir(folder)
    tag = result.get(HELDOUT_KEY)
    return RunFolder(folder).write_evaluation(str(result["split"]), result, tag if isinstance(tag, str) else None)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _with_ci(value: float | None, ci: Any) -> str:
    """'90.00 % [69.9–97.2]'."""
    text = f"{_pct(value)} %"
    return f"{text} {format_ci(ci)}" if ci else text


def metrics_table(metrics: dict[str, Any]) -> Table:
    """Per-class accuracy (95 % Wilson interval, n; the probe beside it) as a rich table.

    The caption carries accuracy, macro accuracy (with intervals), AUC and the probe's
    figures; classes with fewer than 10 videos are flagged "few".
    """
    caption = (f"accuracy {_with_ci(metrics.get('accuracy'), metrics.get('accuracy_ci'))}  ·  "
               f"macro {_with_ci(metrics.get('macro_accuracy'), metrics.get('macro_accuracy_ci'))}")
    if metrics.get("auc") is not None:
        caption += f"  ·  AUC {metrics['auc']:.4f}"
    probe = metrics.get("probe") or {}
    has_probe = "accuracy" in probe
    if has_probe:
        by = f" by their {len(probe['sources'])} generators" if probe.get("sources") else ""
        if (probe.get("selection") or {}).get("selected_on") == "train":  # not the usual val: say so
            by += f"; {choice_text(probe['selection'])}"
        caption += (f"\nlinear probe ({probe.get('n_train')} labelled videos{by}){escape(probe_mark(metrics))}: "
                    f"accuracy {_with_ci(probe.get('accuracy'), probe.get('accuracy_ci'))}  ·  "
                    f"macro {_with_ci(probe.get('macro_accuracy'), probe.get('macro_accuracy_ci'))}")
        if probe.get("paired"):
            caption += "\n" + format_paired(probe["paired"])
            caption += f" ({PAIRED_OPTIMISTIC})" if metrics.get(CHOSEN_KEY) else ""
    elif probe.get("skipped"):
        caption += f"\nlinear probe skipped: {escape(str(probe['skipped']))}"
    if nearest := format_nearest_source(metrics.get("nearest_source") or {}):
        caption += "\n" + nearest
    caption += f"\n(95 % intervals; * = fewer than {FEW} videos: read as anecdote, not a result)"
    held = (f" · held-out cache {escape(str(metrics.get('cache')))} ({str(metrics.get('cache_id'))[:12]})"
            if metrics.get(HELDOUT_KEY) else "")
    table = Table(title=f"{metrics.get('level')} · {escape(split_label(metrics))} · n={metrics.get('n')}{held}",
                  caption=caption)
    table.add_column("class")
    table.add_column("n", justify="right")
    table.add_column("accuracy %", justify="right")
    table.add_column("95 % CI", justify="right")
    if has_probe:
        table.add_column("probe %", justify="right")
    cis = metrics.get("per_class_ci") or {}
    for cls in metrics.get("classes", []):
        n = metrics["per_class_n"].get(cls, 0)
        row = [escape(cls), f"{n}{' *' if 0 < n < FEW else ''}", _pct(metrics["per_class"].get(cls)), format_ci(cis.get(cls))]
        if has_probe:
            row.append(_pct((probe.get("per_class") or {}).get(cls)))
        table.add_row(*row)
    return table
