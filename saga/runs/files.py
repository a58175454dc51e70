"""A run folder's file names and the readers and writers of its JSON and safetensors files.

This is the only place that knows the names (docs/run-folder.md). Everything is JSON or
safetensors, never pickle, so opening someone's run cannot run code; every write goes
through `saga.fileio` (temporary name, then `os.replace`), so a killed run never leaves
half a file, and a full disk or a read-only folder is one line naming the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from saga import fileio
from saga.errors import SagaError
from saga.fileio import atomic_path
from saga.options import HNM_OPTIONS, IGNORED_OPTIONS, MODEL_OPTIONS  # noqa: F401 - re-exported
from saga.model import VideoTransformer

CONFIG, PROVENANCE, MODEL, DONE = "config.json", "provenance.json", "model.safetensors", "done.json"
LAST, OPTIMIZER, STATE = "last.safetensors", "optimizer.safetensors", "state.json"
METRICS, LABELLED = "metrics.jsonl", "labelled.json"
RESUME_FILES = (LAST, OPTIMIZER, STATE)
# Recovery advice that works. Damaged resume state: restart the run (every epoch is seeded from (seed,
# epoch) alone, so it ends with the same weights). Damaged model.safetensors: a finished run without it
# is trained again by its own command (`RunFolder.done`); an unfinished one then asks for a restart.
RESTART = f"delete {', '.join(RESUME_FILES)} and {METRICS} to restart this run from its first epoch"
RETRAIN = "delete it and rerun the run's training command to train it again"
# save_state writes the three resume files into CKPT_NEW, renames it to CKPT_COMMIT (the one atomic
# switch: from then on the new checkpoint wins), then moves them into place; `recover` rolls a
# kill at any point forward (CKPT_COMMIT) or back (CKPT_NEW), so the three files always agree.
CKPT_NEW, CKPT_COMMIT = ".checkpoint.new", ".checkpoint.commit"
EVALUATION = "metrics.json"  # the latest `saga evaluate` on the run's own cache; metrics-<split>.json per split
# `saga tsig` / `saga tsne` of the test split (what the docs and the report present); another split's
# files carry it in their name (`by_split`), so `--split train` never replaces the test figures.
TSIG, TSIG_CSV, TSIG_MAPS, TSIG_PROFILES = "tsig.npz", "tsig_profiles.csv", "tsig_maps.png", "tsig_profiles.png"
TSNE_GLOB = "tsne*.png"
DEFAULT_SPLIT, FIGURE_SPLITS = "test", ("test", "val", "train")
# Beyond the paper (saga.openworld, saga.robustness; docs/beyond.md), beside the run or in `--out`.
# A JSON named `<stem>.json` is committed together with its `<stem>.<hash>.safetensors` (openworld.store).
CALIBRATION = "calibration.json"  # `saga calibrate`: the temperature fitted on val, NLL / ECE before and after
OPENSET_STEM, ENROLLED_STEM = "openset", "enrolled"  # `saga openset fit`, `saga enroll`
OPENSET, ENROLLED = f"{OPENSET_STEM}.json", f"{ENROLLED_STEM}.json"
OPENWORLD_LOCK = ".openworld.lock"  # flock'ed while `enroll` / `openset fit` / `calibrate` write: a second one waits
ROBUSTNESS, ROBUSTNESS_MD = "robustness.json", "robustness.md"  # `saga robustness`: accuracy per perturbation and level
PREDICT = "predict"  # `saga predict --tsig` plots without --out: RUN/predict/<video>_tsig.png (derived, deletable)
RELIABILITY_GLOB = "reliability-*.json"
# A `saga openset logo` experiment folder (not a run folder): runs under logo/<g> and retrain<k>/<g>.
LOGO_RESULTS, LOGO_RESULTS_MD, LOGO_FOLDS, LOGO_RUNS = "results.json", "results.md", "folds", "logo"
LOGO_CALIBRATION = "calibration"  # reliability-<run>.png of the calibrated full runs
LOGO_STAGE1 = "stage1"  # `--two-stage`: stage1/<g>, the stage-1 run trained without g that logo/<g> adapts


def reliability_file(split: str, suffix: str = ".json") -> str:
    """reliability-<split>.json (the bins before / after calibration) or, with suffix ".png", its plot."""
    return f"reliability-{split}{suffix}"


# HNM_OPTIONS, IGNORED_OPTIONS, MODEL_OPTIONS: defined in saga.options (torch-free: the CLI checks flags with them).


def recorded_options(train: dict[str, Any]) -> dict[str, Any]:
    """A stage-2 run's training options without those its loss never reads (ce: the triplet term's)."""
    if str(train.get("loss")) != "ce":
        return train
    return {k: v for k, v in train.items() if k not in HNM_OPTIONS}


def identity_options(train: dict[str, Any]) -> dict[str, Any]:
    """What tells two stage-2 runs apart: `recorded_options`, and on a stage-1 θ (`from_run`) not the model
    options, which its `model` and the stage-1 fingerprint fix (older runs recorded the defaults there).
    Never the IGNORED_OPTIONS: a run recorded with another mine_k trained the very same weights."""
    train = {k: v for k, v in recorded_options(train).items() if k not in IGNORED_OPTIONS}
    if not train.get("from_run"):
        return train
    return {k: v for k, v in train.items() if k not in MODEL_OPTIONS}


def evaluation_file(split: str | None = None) -> str:
    """metrics-<split>.json, or metrics.json (the latest evaluation) without a split."""
    return EVALUATION if split is None else f"metrics-{split}.json"


# Files made on a held-out cache (`--cache` another cache than the run's training cache): the own-cache name
# with `@<cache folder>-<first 8 of its cache id>` before the suffix (metrics-test@seed1-3f9a2b7c.json,
# tsig@seed1-3f9a2b7c.npz), so they never replace the run's own results nor each other; readers of the run's
# own results skip every name holding HELDOUT.
HELDOUT = "@"
HELDOUT_EVALUATION_GLOB = f"metrics-*{HELDOUT}*.json"
HELDOUT_ROBUSTNESS_GLOB = f"robustness*{HELDOUT}*.json"  # robustness[-<split>]@<tag>.json of `saga robustness`


def cache_tag(cache_root: str | Path, cache_id: str) -> str:
    """`<cache folder>-<id8>` naming a held-out cache in file names: readable, and apart for two caches of one
    folder name; characters other than letters, digits, `_` and `-` become `_` (no dot: names split on it)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(cache_root).resolve().name).strip("_")[:40] or "cache"
    return f"{name}-{str(cache_id)[:8]}"


def on_cache(name: str, tag: str | None) -> str:
    """`name` itself for the run's own cache (tag None), `<stem>@<tag><suffix>` for a held-out cache's file."""
    if not tag:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}{HELDOUT}{tag}{dot}{suffix}"


def by_split(name: str, split: str = DEFAULT_SPLIT) -> str:
    """A `saga tsig` / `saga tsne` file name for `split`: the name itself for the test split,
    `<stem>-<split><suffix>` for another (tsig_maps-train.png)."""
    if split == DEFAULT_SPLIT:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}-{split}{dot}{suffix}"


def tsne_file(level: str, split: str = DEFAULT_SPLIT) -> str:
    """tsne_<level>.png (test split) or tsne_<level>-<split>.png."""
    return by_split(f"tsne_{level}.png", split)


def read_json(path: Path) -> Any:
    """A run folder's JSON file; errors say what to do about the folder."""
    return fileio.read_json(path, missing=f"; is {path.parent} a saga run folder?",
                            corrupt="; delete the run folder and train again")


def finished(run: Path) -> bool:
    """The run finished: done.json is there and is what `RunFolder.finish` writes (a JSON object). A damaged
    one is one line: any file of that name used to pass mid-training weights off as the final classifier."""
    if not (run / DONE).is_file():
        return False
    fileio.read_json(run / DONE, corrupt=f"; it marks the run finished, so its weights cannot be taken as final: "
                                         f"{RETRAIN}")
    return True


PROVENANCE_FIX = "restore the run's provenance.json or train the run again"  # it alone records encoder and sampling


def file_fingerprint(path: Path) -> str:
    """blake2b of a file's bytes: names the exact stage-1 weights a stage-2 run started from."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Serialised in memory, then written and fsync'ed by Python.

    safetensors' own file writer reports a full disk as its own error type; writing the
    bytes ourselves turns it into an OSError that `fileio` names ("the disk is full").
    """
    data = canonical_header(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def canonical_header(data: bytes) -> bytes:
    """The safetensors bytes with the JSON header's keys sorted.

    safetensors writes the metadata in a random (hash map) order, so the same weights gave
    another file, and another fingerprint (a finished stage-2 run was then refused after
    its stage 1 was retrained to identical weights). Offsets count from the data section, so
    only the header changes; it stays padded to 8 bytes with spaces, as the format asks.
    """
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    size = -(-len(text) // 8) * 8
    return size.to_bytes(8, "little") + text.ljust(size, b" ") + data[8 + n:]


def load_tensors(path: Path, fix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file and its metadata; missing or damaged is one line naming it, with `fix` (the
    caller's recovery advice: the file's role decides what works), by default `RETRAIN`."""
    fix = fix or RETRAIN
    if not path.is_file():
        raise SagaError(f"{path}: missing; {fix}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise SagaError(f"{path}: unreadable safetensors file ({exc}); {fix}") from None


def save_weights(path: Path, model: VideoTransformer, **meta: Any) -> None:
    """Weights plus the model config in the metadata, so the file alone rebuilds the model."""
    metadata = {"config": json.dumps(model.config.to_dict()), **{k: json.dumps(v) for k, v in meta.items()}}
    save_tensors(path, model.state_dict(), metadata)


def whole_number(value: Any, least: int = 0) -> bool:
    """An int (not a bool) >= least: the counters of state.json and metrics.jsonl, which may have been edited."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
