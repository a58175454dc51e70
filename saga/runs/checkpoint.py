"""The resume point of a run: weights, AdamW state and schedule after a completed epoch, as one unit.

The three resume files are written into `.checkpoint.new/`, which is renamed to
`.checkpoint.commit/` (the one atomic switch), then moved into place. `recover` rolls a
kill at any point forward or back, so the three files always agree. A write that fails
(a full disk) removes what it wrote before the switch, so the last committed checkpoint
stays in place and the rerun resumes from it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from saga import fileio
from saga.errors import SagaError, reason
from saga.fileio import write_error, write_json, writing
from saga.model import VideoTransformer
from saga.runs.files import (
    CKPT_COMMIT,
    CKPT_NEW,
    LAST,
    MODEL,
    OPTIMIZER,
    RESTART,
    RESUME_FILES,
    STATE,
    fsync,
    load_tensors,
    save_tensors,
    save_weights,
    whole_number,
)

Scheduler = torch.optim.lr_scheduler.LRScheduler


def save_state(folder: Path, model: VideoTransformer, optimizer: torch.optim.Optimizer, scheduler: Scheduler,
               state: dict[str, Any]) -> None:
    """Commit the resume point after a completed epoch; on any error nothing but the old checkpoint remains."""
    recover(folder)
    new = folder / CKPT_NEW
    try:
        new.mkdir()
        epoch = json.dumps(state["epoch"])
        save_weights(new / LAST, model, epoch=state["epoch"])
        tensors, opt_meta = flatten_optimizer(optimizer)
        save_tensors(new / OPTIMIZER, tensors, {"epoch": epoch})
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        write_json(new / STATE, {**state, "optimizer": opt_meta, "scheduler": sched})
        for name in RESUME_FILES:
            fsync(new / name)
    except BaseException as exc:
        shutil.rmtree(new, ignore_errors=True)  # never committed: the files in place stay the last checkpoint
        error = write_error(exc, folder / "checkpoint") if isinstance(exc, OSError) else None
        if error is None:
            raise
        raise error from None
    with writing(folder / "checkpoint"):
        os.replace(new, folder / CKPT_COMMIT)  # the commit point
    fsync(folder)
    recover(folder)


def recover(folder: Path) -> None:
    """Finish or undo a checkpoint switch cut short by a kill, and remove temporary files left behind."""
    commit, new = folder / CKPT_COMMIT, folder / CKPT_NEW
    if commit.is_dir():
        for name in RESUME_FILES:  # roll forward: the committed set replaces the old one
            if (commit / name).exists():
                os.replace(commit / name, folder / name)
        shutil.rmtree(commit, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)  # never committed: the files in place are the last checkpoint
    # atomic writes of killed processes; not those of a live writer beside the trainer (`saga evaluate`,
    # `tsig` writing their files), here or on another host sharing the disk: they were deleted under it
    fileio.sweep_temps(folder, recursive=False)


def load_state(folder: Path, model: VideoTransformer, optimizer: torch.optim.Optimizer,
               scheduler: Scheduler) -> dict[str, Any] | None:
    """Restore model, optimizer and scheduler from the last completed epoch (None: nothing saved).

    state.json may have been edited: every value the loop uses is checked first, and any damage in
    the resume files is one line that says how to restart the run (never a traceback mid-epoch).
    """
    recover(folder)
    if not (folder / STATE).is_file():
        return None
    damaged = f"the resume state is damaged: {RESTART}"
    state = fileio.read_json(folder / STATE, corrupt=f"; {RESTART}")
    check_state(folder / STATE, state, optimizer, scheduler)
    if state["best_epoch"] is not None and not (folder / MODEL).is_file():
        raise SagaError(f"{folder / MODEL}: missing, but {STATE} kept epoch {state['best_epoch']}; {RESTART}")
    weights, wmeta = load_tensors(folder / LAST, damaged)
    tensors, ometa = load_tensors(folder / OPTIMIZER, damaged)
    epoch = json.dumps(state["epoch"])
    if wmeta.get("epoch") != epoch or ometa.get("epoch") != epoch:
        raise SagaError(f"{folder}: the resume files are from different epochs (killed while saving); {RESTART}")
    try:
        model.load_state_dict(weights)
        restore_optimizer(optimizer, tensors, state.pop("optimizer"))
        sched = state.pop("scheduler")
        scheduler.load_state_dict({**sched, "lr_lambdas": [None] * len(sched.get("base_lrs", []))})
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise SagaError(f"{folder / LAST}: the resume state does not fit this run ({reason(exc)}); "
                        f"{RESTART}") from None
    return state


# state.json's counters: (key, may be null, least value)
COUNTERS = (("epoch", False, 0), ("step", False, 0), ("bad_epochs", False, 0), ("best_epoch", True, 1))


def check_state(path: Path, state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Scheduler) -> None:
    """Every value of state.json the loop uses has the kind it needs; else one line naming the file."""
    def bad(what: str) -> SagaError:
        return SagaError(f"{path}: {what}; the file was edited or damaged: {RESTART}")

    for key, nullable, least in COUNTERS:
        value = state.get(key)
        if key not in state or not (whole_number(value, least) or nullable and value is None):
            raise bad(f"'{key}' must be a whole number >= {least}{' or null' if nullable else ''}, got {value!r}")
    for key in ("best_metric", "best_loss"):  # best_loss: absent in the state of a run before its first validation
        if key == "best_metric" and key not in state or not (state.get(key) is None or _same_kind(state[key], 0.0)):
            raise bad(f"'{key}' must be a number or null, got {state.get(key)!r}")
    live = {"scheduler": scheduler.state_dict(), "optimizer": {"param_groups": optimizer.state_dict()["param_groups"],
                                                               "scalars": {}}}
    for key, fresh in live.items():
        where = _misfit(state.get(key), fresh, key)
        if where:
            raise bad(f"'{where}' is missing or of the wrong kind for this run")


def _misfit(stored: Any, fresh: Any, where: str) -> str | None:
    """Where a value read from state.json differs in kind from the live one (None: it fits)."""
    if isinstance(fresh, dict):
        if not isinstance(stored, dict):
            return where
        return next((m for k in fresh if k in stored and (m := _misfit(stored[k], fresh[k], f"{where}.{k}"))), None)
    if isinstance(fresh, (list, tuple)):
        if not isinstance(stored, list) or len(stored) != len(fresh):
            return where
        return next((m for i, (a, b) in enumerate(zip(stored, fresh)) if (m := _misfit(a, b, f"{where}[{i}]"))), None)
    return None if _same_kind(stored, fresh) else where


def _same_kind(stored: Any, fresh: Any) -> bool:
    """A flag for a flag, a whole number for one, a finite number for a float, a string for a string."""
    if fresh is None:
        return True
    if isinstance(fresh, bool):
        return isinstance(stored, bool)
    if isinstance(fresh, int):
        return isinstance(stored, int) and not isinstance(stored, bool)
    if isinstance(fresh, float):
        return isinstance(stored, (int, float)) and not isinstance(stored, bool) and math.isfinite(stored)
    return isinstance(stored, type(fresh)) if isinstance(fresh, str) else True


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state as flat tensors ("<param>.<name>") plus JSON-able groups and scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
