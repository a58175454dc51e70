"""What a split did for a run's weights, said wherever a figure made on it is shown.

The val split of the run's own cache chose its weights (the kept epoch, the readout), its train split trained
them, and `saga calibrate` / `saga openset fit` fit their temperature and threshold on val: figures on those
splits are optimistic or measure fit. `saga evaluate` records it in the metrics (`CHOSEN_KEY`, `TRAINED_KEY`,
`FITTED_KEY` under "openworld"; the probe beside it on train: `TRAINED_KEY` under "probe"), `saga probe --split
train` in the probe's metrics, `saga tsig` / `saga tsne` in their files' stamp and `saga robustness` in
robustness.json; each warns in one line, and titles, tables and the report mark the split (`split_label`). An
evaluation written before these keys existed is marked by the report from the split and the run (`inferred`).
A held-out cache's splits chose and trained nothing: never flagged.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from saga.runs import CONFIG, DONE, RunFolder

SPLIT = "split"
# An evaluation on a held-out cache records it (`HELDOUT_KEY`: the tag its file is named with, "cache": the
# folder), and goes to metrics-<split>@<tag>.json: the run's own metrics.json / metrics-<split>.json stay.
HELDOUT_KEY = "heldout"

# An evaluation on the val split that chose the run's weights (the kept epoch, the readout) records how, under
# CHOSEN_KEY: its accuracy is optimistic, and is said to be wherever it is shown (`split_label`).
CHOSEN_KEY = "checkpoint_chosen_on_split"
OPTIMISTIC = "the checkpoint was chosen on val: this accuracy is optimistic; use --split test"


def chosen_on_val(run_dir: str | Path) -> dict[str, Any] | None:
    """How the val split chose the run's weights, from done.json (`metric` val_macro_accuracy under `select`
    accuracy or loss; a readout `chosen_by` val_macro_accuracy); None when it chose nothing (`select` last, no val
    videos). An unfinished run: its best weights so far, chosen on val once an epoch was validated."""
    folder = RunFolder(Path(run_dir))
    done = folder.read_optional(DONE)
    if isinstance(done, dict):
        select, epoch, readout = done.get("select"), done.get("best_epoch"), done.get("chosen_by")
        by_epoch = done.get("metric") == "val_macro_accuracy" and select != "last"
    else:
        config = folder.read_optional(CONFIG)
        train = config.get("train") if isinstance(config, dict) else None
        select = train.get("select", "accuracy") if isinstance(train, dict) else "accuracy"
        best = [row.get("epoch") for row in folder.read_metrics(tolerant=True)
                if isinstance(row, dict) and row.get("val_macro_accuracy") is not None and row.get("best")]
        epoch, readout, by_epoch = (best[-1] if best else None), None, bool(best) and select != "last"
    if not by_epoch and readout != "val_macro_accuracy":
        return None
    return {"selected_on": "val", "select": select if by_epoch else None, "best_epoch": epoch,
            **({"readout_chosen_by": readout} if readout == "val_macro_accuracy" else {})}


# An evaluation of the train split of the run's own cache records it under TRAINED_KEY: the run was trained on those
# videos (stage 1, the labelled subset, the content basis, self-training), so its figures measure fit.
TRAINED_KEY = "trained_on_split"
FIT_ONLY = "the run trained on these videos: this accuracy measures fit, not generalisation; use --split test"
# Open-world figures (metrics "openworld") on the val split whose temperature / unknown threshold were fitted on it
# (`saga calibrate`, `saga openset fit` fit on val) record what was fitted under FITTED_KEY: optimistic too.
FITTED_KEY = "fitted_on_split"
FITTED = {"calibration": "the temperature", "openset": "the unknown threshold"}
# Under FITTED_KEY: the files among them that record no cache (`fitted_on_cache`; written before saga recorded it):
# they were fitted on val, but which cache's is unknown; the run's own is presumed (calibrate's default cache).
CACHE_UNKNOWN = "cache_unknown"
FIT_FILES = {"calibration": "calibration.json", "openset": "openset.json"}


def split_flag(run_dir: str | Path, split: str) -> dict[str, Any]:
    """What the run's own `split` did for its weights: {CHOSEN_KEY: how} (val chose them), {TRAINED_KEY: "train"}."""
    if split == "train":
        return {TRAINED_KEY: "train"}
    chosen = chosen_on_val(run_dir) if split == "val" else None
    return {CHOSEN_KEY: chosen} if chosen else {}


def mark_openworld(metrics: dict[str, Any]) -> None:
    """Record under "openworld" what was fitted on the evaluated split: `saga calibrate` and `saga openset fit` fit
    the temperature and the threshold on a cache's val videos, the one each file records (`fitted_on_cache`): this
    very cache, the run's own or a held-out one. A file that records none (an older saga) is presumed fitted on the
    run's own cache, and said to be presumed (`CACHE_UNKNOWN`)."""
    ow = metrics.get("openworld")
    if metrics.get(SPLIT) != "val" or not isinstance(ow, dict):
        return
    fitted, unknown = [], []
    for key, name in FITTED.items():
        on = ow[key].get("fitted_on_cache") if isinstance(ow.get(key), dict) else False
        if on is None and not metrics.get(HELDOUT_KEY):
            fitted.append(name)
            unknown.append(FIT_FILES[key])
        elif on and on == metrics.get("cache_id"):
            fitted.append(name)
    if fitted:
        ow[FITTED_KEY] = {SPLIT: "val", "fitted": fitted, **({CACHE_UNKNOWN: unknown} if unknown else {})}


def _presumed(flag: dict[str, Any]) -> str:
    """What the fitted files that record no cache leave open (`CACHE_UNKNOWN`); "" when every one records it."""
    unknown = flag.get(CACHE_UNKNOWN) if isinstance(flag.get(CACHE_UNKNOWN), list) else []
    if not unknown:
        return ""
    files, one = " and ".join(map(str, unknown)), len(unknown) == 1
    return (f" (presumably this cache's val: {files}, written by an older saga, {'does' if one else 'do'} not record "
            f"which cache {'it was' if one else 'they were'} fitted on; refit to record it)")


def split_warning(metrics: dict[str, Any]) -> str | None:
    """One sentence for every figure the evaluated split flatters (`CHOSEN_KEY`, `TRAINED_KEY`, `FITTED_KEY`)."""
    ow = metrics.get("openworld") if isinstance(metrics.get("openworld"), dict) else {}
    flag = ow.get(FITTED_KEY) if isinstance(ow.get(FITTED_KEY), dict) else {}
    fitted, presumed = flag.get("fitted"), _presumed(flag)
    if metrics.get(TRAINED_KEY):
        if (metrics.get("probe") or {}).get(TRAINED_KEY):  # `mark_probe`: the probe beside it was fitted there too
            return (f"the run and the probe beside it trained on these videos: these accuracies"
                    f"{' and the open-world figures' if ow else ''} measure fit, not generalisation; use --split test")
        return (FIT_ONLY if not ow else "the run trained on these videos: this accuracy and the open-world figures "
                "measure fit, not generalisation; use --split test")
    if not fitted:
        return OPTIMISTIC if metrics.get(CHOSEN_KEY) else None
    what = " and ".join(fitted)
    if metrics.get(CHOSEN_KEY):
        return (f"the checkpoint was chosen on val and {what} fitted on it{presumed}: this accuracy and the "
                "open-world figures are optimistic; use --split test")
    return (f"{what} {'were' if len(fitted) > 1 else 'was'} fitted on val{presumed}: the open-world figures are "
            f"{'then ' if presumed else ''}optimistic; use --split test")


def warn_split(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """The one warning of `split_warning`, if any (after "openworld" is in: one line, not one per figure)."""
    if text := split_warning(metrics):
        warnings.warn(f"{run_dir}: {text}", stacklevel=3)


def split_mark(flags: dict[str, Any]) -> str:
    """' (chose the checkpoint: optimistic)' when `flags` (metrics, a figure's stamp) carry `CHOSEN_KEY`,
    ' (trained on: fit, not generalisation)' with `TRAINED_KEY`, else ''."""
    if flags.get(TRAINED_KEY):
        return " (trained on: fit, not generalisation)"
    return " (chose the checkpoint: optimistic)" if flags.get(CHOSEN_KEY) else ""


def split_label(metrics: dict[str, Any]) -> str:
    """The split an evaluation shows, marked when it chose the run's weights (`CHOSEN_KEY`) or trained them
    (`TRAINED_KEY`)."""
    return f"{metrics.get(SPLIT) or ''}{split_mark(metrics)}"


def openworld_label(metrics: dict[str, Any]) -> str:
    """The split of an evaluation's open-world figures, marked when it fitted them (`FITTED_KEY`) or the run
    trained on it."""
    ow = metrics.get("openworld") if isinstance(metrics.get("openworld"), dict) else {}
    split = str(ow.get(SPLIT) or metrics.get(SPLIT) or "")
    flag = ow.get(FITTED_KEY) if isinstance(ow.get(FITTED_KEY), dict) else {}
    fitted = flag.get("fitted")
    if fitted and isinstance(fitted, list):
        presumed = ", presumably" if flag.get(CACHE_UNKNOWN) else ""
        return f"{split} (fitted {' and '.join(map(str, fitted))}{presumed}: optimistic)"
    return f"{split} (trained on: fit, not generalisation)" if metrics.get(TRAINED_KEY) else split


PROBE_FIT = ("the probe was fitted on {n_train} of these {n} videos: its accuracy measures fit, not generalisation; "
             "use --split test")
PAIRED_OPTIMISTIC = "the run's side is optimistic: val chose its checkpoint"


def mark_probe(metrics: dict[str, Any]) -> None:
    """The probe beside a run scored on the run's own train split was fitted on its labelled train videos: record
    `TRAINED_KEY` under "probe" too. (On val it is not flagged: C is chosen by cross-validation on train there.)"""
    probe = metrics.get("probe")
    if metrics.get(TRAINED_KEY) and isinstance(probe, dict) and "accuracy" in probe:
        probe[TRAINED_KEY] = "train"


def probe_mark(metrics: dict[str, Any]) -> str:
    """What the probe's caption adds: ' on train (trained on: fit, not generalisation)' when it was fitted there."""
    probe = metrics.get("probe") if isinstance(metrics.get("probe"), dict) else {}
    return f" on {metrics.get(SPLIT)}{split_mark(probe)}" if probe.get(TRAINED_KEY) else ""


def figure_flag(run_dir: str | Path, split: str, heldout: Any) -> dict[str, Any]:
    """`split_flag` for figures and tables made on the run's own cache (`saga tsig`, `saga tsne`,
    `saga robustness`: recorded with them); {} on a held-out cache (`heldout`: its tag), which chose nothing."""
    return {} if heldout else split_flag(run_dir, split)


def warn_figures(run_dir: str | Path, flags: dict[str, Any], what: str) -> None:
    """One warning that `what` ("the T-Sigs are") rest on videos that chose or trained the weights (`flags`)."""
    if flags.get(TRAINED_KEY):
        text = f"the run trained on these videos: {what} of fit, not generalisation; use --split test"
    elif flags.get(CHOSEN_KEY):
        text = f"the checkpoint was chosen on val: {what} optimistic; use --split test"
    else:
        return
    warnings.warn(f"{run_dir}: {text}", stacklevel=3)


def inferred(run_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """An evaluation of the run's own cache with the flags a current `saga evaluate` would record: a file written
    before they existed (no `CHOSEN_KEY` / `TRAINED_KEY` / `FITTED_KEY`) is marked from its split and the run's
    done.json, so an old metrics-val.json of a run chosen on val is not shown like a test figure."""
    split = metrics.get(SPLIT)
    if metrics.get(HELDOUT_KEY) or split not in ("train", "val"):
        return metrics
    out = {**metrics}
    if not (out.get(CHOSEN_KEY) or out.get(TRAINED_KEY)):
        out.update(split_flag(run_dir, str(split)))
    if isinstance(out.get("openworld"), dict) and FITTED_KEY not in out["openworld"]:
        out["openworld"] = {**out["openworld"]}
        mark_openworld(out)
    return out
