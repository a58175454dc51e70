"""The resume point of a run: weights, AdamW state and schedule after a completed epoch, as one unit.

The three resume files are written into `.checkpoint.new/`, which is renamed to
`.checkpoint.commit/` (the one atomic switch), then moved into place. `recover` rolls a
kill at any point forward or back, so the three files always agree. A write that fails
(a full disk) removes what it wrote before the switch, so the last committed checkpoint
stays in place and the rerun resumes from it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from saga.errors import SagaError
from saga.fileio import write_error, write_json, writing
from saga.model import VideoTransformer
from saga.runs.files import (
    CKPT_COMMIT,
    CKPT_NEW,
    LAST,
    METRICS,
    OPTIMIZER,
    RESUME_FILES,
    STATE,
    fsync,
    load_tensors,
    one_line,
    read_json,
    save_tensors,
    save_weights,
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
    for tmp in folder.glob(".*.tmp-*"):  # atomic writes of a killed process (one trainer per folder)
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def load_state(folder: Path, model: VideoTransformer, optimizer: torch.optim.Optimizer,
               scheduler: Scheduler) -> dict[str, Any] | None:
    """Restore model, optimizer and scheduler from the last completed epoch (None: nothing saved)."""
    recover(folder)
    if not (folder / STATE).is_file():
        return None
    state = read_json(folder / STATE)
    weights, wmeta = load_tensors(folder / LAST)
    tensors, ometa = load_tensors(folder / OPTIMIZER)
    epoch = json.dumps(state.get("epoch") if isinstance(state, dict) else None)
    if wmeta.get("epoch") != epoch or ometa.get("epoch") != epoch:
        raise SagaError(f"{folder}: the resume files are from different epochs (killed while saving); "
                        f"delete {', '.join(RESUME_FILES)} and {METRICS} to restart this run")
    try:
        model.load_state_dict(weights)
        restore_optimizer(optimizer, tensors, state.pop("optimizer"))
        sched = state.pop("scheduler")
        scheduler.load_state_dict({**sched, "lr_lambdas": [None] * len(sched.get("base_lrs", []))})
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise SagaError(f"{folder / LAST}: the resume state does not fit this run ({one_line(exc)}); "
                        f"delete {', '.join(RESUME_FILES)} and {METRICS} to restart it") from None
    return state


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
