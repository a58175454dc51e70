"""The epoch loop shared by stage 1 and stage 2: train, validate, keep the best, stop early, resume.

Resume is exact: a run killed after epoch k and rerun continues from its last
completed epoch and ends with bit-for-bit the same weights and metrics as an
uninterrupted run. That holds because nothing random carries over between
epochs: each epoch reseeds torch (dropout) and draws its data order and
augmentation from numpy Generators seeded with (seed, epoch), and the saved
state (weights, AdamW moments, scheduler step, best metric, patience counter)
is everything else the next epoch depends on.

Under torchrun (docs/distributed.md) the same loop runs on every rank with
DistributedDataParallel: every rank draws the same global batches (same order,
same augmentation) and trains on its own contiguous slice of each; the loss is
weighted so that DDP's gradient average equals the gradient of the global
batch's loss, whatever the slice sizes. Rank 0 validates, saves and logs; the
others follow its decisions.

Validation uses `saga.model.inference` (the evaluation convention of `saga
evaluate`): the best checkpoint is chosen by the same macro accuracy that
evaluation reports.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saga import distributed
from saga.cache.manifest import VideoRecord
from saga.cache.index import lazy
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.progress import ProgressEvent, ProgressFn
from saga.model.inference import EvalSpec, infer, record_targets
from saga.model import VideoTransformer
from saga.train.coverage import val_missing, warn_missing_val
from saga.train.data import Batch, InMemoryFeatures, StreamingFeatures, View, memory_bytes
from saga.runs import CONFIG, RunFolder
from saga.train.options import TrainOptions  # noqa: F401 - re-exported: the stages import it from here
from saga.train.schedule import make_optimizer, warmup_cosine

Progress = ProgressFn  # the training events: ProgressEvent kinds labelled (stage 2), start, step, epoch, done, reused
LOG_EVERY = 50  # steps between "step" progress events
# Validation sets up to 128 MiB (as float32; half that held, float16) are read once and kept in memory:
# stage 2 validates a few hundred videos every ~25 steps, while a large stage-1 val split is re-read
# each time so that memory does not grow with the cache.
VAL_PRELOAD_BYTES = 128 << 20


def resolve_frames(frames: int | None, cache: FeatureCache) -> int:
    t = int(frames or cache.frames)
    if not 1 <= t <= cache.frames:
        raise SagaError(f"frames must be in [1, {cache.frames}] (the cache's frames per window), got {t}")
    return t


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed torch's global generator (dropout) from (seed, epoch), so an epoch never depends on the last.

    Other torchrun ranks mix in their rank, so their slices of a batch get independent dropout.
    """
    base = (int(seed) * 1_000_003 + int(epoch)) % (2**63)
    torch.manual_seed(base if not rank else (base * 1_000_033 + int(rank)) % (2**63))


class Objective(Protocol):
    """What one stage trains on: batches per epoch and the loss of one batch."""

    def steps_per_epoch(self) -> int: ...

    def begin_epoch(self, model: VideoTransformer, epoch: int) -> None: ...

    def batches(self, epoch: int) -> Iterable[Batch]: ...

    def loss(self, model: VideoTransformer, batch: Batch) -> tuple[Tensor, dict[str, float]]: ...

    def epoch_stats(self) -> dict[str, Any]: ...


class CEObjective:
    """Plain cross-entropy on the source's batches (stage 1; stage 2 with loss="ce")."""

    def __init__(self, data: InMemoryFeatures | StreamingFeatures, view: View, batch_size: int, seed: int,
                 balance: bool, device: torch.device) -> None:
        self.data, self.view, self.batch_size = data, view, batch_size
        self.seed, self.balance, self.device = seed, balance, device
        self.dist = distributed.context()

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.data.epoch_size(self.balance) / self.batch_size))

    def begin_epoch(self, model: VideoTransformer, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> Iterable[Batch]:
        return self.data.batches(self.batch_size, self.view, seed=self.seed, epoch=epoch, shuffle=True,
                                 balance=self.balance)

    def loss(self, model: VideoTransformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        if self.dist.enabled:
            return self.sharded_loss(model, batch)
        b = batch.to(self.device)
        out = model(b.x, b.mask)
        loss = F.cross_entropy(out.rows, b.y)
        value = float(loss.detach())
        return loss, {"loss": value, "ce": value, "correct": correct_count(out.rows, b.y)}

    def sharded_loss(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """This rank's part of the global batch's loss (see `local_rows`); stats are the global batch's."""
        local, n = local_rows(batch, self.dist)
        b = local.to(self.device)
        out = model(b.x, b.mask)
        ce = F.cross_entropy(out.rows, b.y)
        w = n / len(batch)
        stats = distributed.all_reduce_sum({"ce": float(ce.detach()) * w,
                                            "correct": correct_count(out.rows, b.y) if n else 0})
        return ce * (w * self.dist.world_size), {"loss": stats["ce"], **stats}

    def epoch_stats(self) -> dict[str, Any]:
        return {}


def correct_count(logits: Tensor, y: Tensor) -> int:
    return int((logits.detach().argmax(1) == y).sum())


def local_rows(batch: Batch, dist: distributed.Dist) -> tuple[Batch, int]:
    """This rank's contiguous slice of a global batch, and its size n (slices differ by at most one).

    A term that is a mean over the batch then enters the backward as mean_local × (n / B) ×
    world_size: DDP divides the summed gradients by world_size, so the update is exactly the
    gradient of the global batch's mean, also for an uneven last batch. A rank whose slice
    is empty (a last batch smaller than the world) runs its first row with weight 0, because
    every rank must take part in DDP's gradient all-reduce.
    """
    lo, hi = distributed.shard_bounds(len(batch), dist)
    n = hi - lo
    if not n:
        lo, hi = 0, 1
    return Batch(batch.x[lo:hi], batch.mask[lo:hi], batch.y[lo:hi], batch.index[lo:hi]), n


def make_validator(cache: FeatureCache, records: Sequence[VideoRecord], level: str, classes: Sequence[str],
                   frames: int, batch_size: int, device: torch.device,
                   unwithheld: Sequence[VideoRecord] | None = None) -> Callable[[VideoTransformer], dict] | None:
    """Accuracy and macro accuracy on the records of the level's classes (None when there are none).
    `unwithheld`: the val split before a fold withheld a generator's videos (a class without val videos only
    because of that is so by design, and not warned about)."""
    targets = record_targets(records, level, classes)
    keep = (records.take(np.flatnonzero(targets >= 0)) if lazy(records)  # type: ignore[attr-defined]
            else [r for r, t in zip(records, targets) if t >= 0])
    if not len(keep):
        return None
    y = targets[targets >= 0]
    every = y if unwithheld is None else record_targets(unwithheld, level, classes)
    missing = warn_missing_val(cache, level, classes, every[every >= 0])
    info = EvalSpec(level=level, classes=list(classes), frames=frames)
    source: Any = cache
    if memory_bytes(cache, len(keep)) <= VAL_PRELOAD_BYTES:  # read (and decode) the val features once
        source = _Preloaded(keep, cache.read(keep))

    def validate(model: VideoTransformer) -> dict[str, Any]:
        probs = infer(model, info, source, keep, batch_size, device).probs
        pred = probs.argmax(1)
        per = {c: float((pred[y == i] == i).mean()) for i, c in enumerate(classes) if (y == i).any()}
        loss = float(-np.log(np.clip(probs[np.arange(y.size), y], 1e-12, None)).mean())
        return {"accuracy": float((pred == y).mean()), "macro_accuracy": float(np.mean(list(per.values()))),
                "loss": loss, "per_class": per, "n": int(y.size)}

    validate.missing = missing  # type: ignore[attr-defined]  # done.json's val_missing
    return validate


class _Preloaded:
    """The validation videos' arrays held in memory; `read(records)` stands in for FeatureCache.read."""

    def __init__(self, records: Sequence[VideoRecord], arrays: dict[str, np.ndarray]) -> None:
        self.row = {r.path: i for i, r in enumerate(records)}
        self.arrays = arrays

    def read(self, records: Sequence[VideoRecord]) -> dict[str, np.ndarray]:
        idx = np.array([self.row[r.path] for r in records], np.int64)
        return {k: v[idx] for k, v in self.arrays.items()}


def setup_steps(progress: ProgressFn | None) -> ProgressFn | None:
    """Where a run's setup steps go (opening the cache, reading its features: minutes on a large cache; kind
    STATUS, `report_step`): rank 0's progress alone under torchrun, as its other events."""
    return progress if distributed.context().is_main else None


def open_run(out: Any, config: dict[str, Any], provenance: dict[str, Any],
             progress: ProgressFn | None = None) -> tuple[RunFolder, bool]:
    """`RunFolder.open_for` (by rank 0 alone under torchrun) and whether the folder holds a finished run."""
    def open_() -> tuple[RunFolder, bool]:
        run = RunFolder.open_for(out, config, provenance)
        return run, run.done

    # every rank must train the same run: another epoch count on one rank hangs DDP, another batch size or
    # config trains each rank's weights apart, another --out, cache or --from trains on other data
    train = {k: v for k, v in (config.get("train") or {}).items() if k != "device"}  # each rank's own device
    distributed.check_same_settings({"out": str(Path(out).resolve()), "config": {**config, "train": train},
                                     **{k: provenance.get(k) for k in ("cache_id", "cache_digest", "from_run")}},
                                    "training")
    run, done = distributed.run_on_main(open_)
    if done and progress and distributed.context().is_main:
        progress(ProgressEvent("reused", message=f"{run.path} already holds this finished run"))
    return run, done


def fit(model: VideoTransformer, objective: Objective, run: RunFolder, opts: TrainOptions, lr: float,
        validate: Callable[[VideoTransformer], dict] | None, device: torch.device,
        progress: Progress | None = None,
        finalize: Callable[[VideoTransformer, dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train for opts.epochs (resuming from the folder's last state), keep the best; returns done.json's dict.

    `finalize` (rank 0) gets the kept epoch's model and the summary (best_metric: its val macro
    accuracy) before the run is marked done, may change the model
    (stage 2's readout) and returns what it did for done.json; the changed model is saved first,
    so a kill in between only repeats it.
    """
    try:
        return _fit(model, objective, run, opts, lr, validate, device, progress, finalize)
    except BaseException:
        run.release()  # a failed or interrupted run: the next command may resume it at once
        raise


def _fit(model: VideoTransformer, objective: Objective, run: RunFolder, opts: TrainOptions, lr: float,
         validate: Callable[[VideoTransformer], dict] | None, device: torch.device, progress: Progress | None,
         finalize: Callable[[VideoTransformer, dict[str, Any]], dict[str, Any]] | None) -> dict[str, Any]:
    dist = distributed.init(device)
    main = dist.is_main  # under torchrun rank 0 alone validates, writes the run folder and reports
    emit = (progress if main else None) or (lambda event: None)
    model.to(device)
    optimizer = make_optimizer(model, lr, opts.weight_decay, opts.head_lr_scale)
    per_epoch = objective.steps_per_epoch()
    epochs, every = opts.planned_epochs(per_epoch), opts.eval_every(per_epoch)
    scheduler = warmup_cosine(optimizer, round(opts.warmup_epochs * per_epoch), epochs * per_epoch)
    state = run.load_state(model, optimizer, scheduler) if main else None
    net: torch.nn.Module = model
    if dist.enabled:
        state = _share_state(model, optimizer, scheduler, state)
        net = distributed.wrap_ddp(model, device)
    if state is None:
        state = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": None, "bad_epochs": 0}
        emit(ProgressEvent("start", message=f"training {epochs} epochs ({epochs * per_epoch} steps) into {run.path}"))
    else:
        emit(ProgressEvent("start", message=f"resuming {run.path} after epoch {state['epoch']}"))
    if main:
        run.trim_metrics(state["epoch"])
    cache = _cache_of(run)  # named in the NaN-loss message
    while state["epoch"] < epochs and not _patience_spent(opts, state):
        epoch, t0 = state["epoch"] + 1, time.perf_counter()
        line = train_epoch(net, objective, optimizer, scheduler, opts, epoch, state, per_epoch, emit,
                            cache=cache)
        checkpoint = epoch % every == 0 or epoch == epochs
        val = validate(model) if checkpoint and validate is not None and main else None
        if dist.enabled and checkpoint:  # every rank follows rank 0's validation (best epoch, early stopping)
            val = distributed.broadcast_object(val)
        metric = None if val is None else val["macro_accuracy"]
        best = checkpoint and _improves(opts.select, val, state)
        if not checkpoint:
            pass
        elif best:
            state.update(best_metric=metric, best_loss=None if val is None else val.get("loss"),
                         best_epoch=epoch, bad_epochs=0)
            if main:
                run.save_best(model, epoch, metric)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        line.update(val_accuracy=None if val is None else val["accuracy"], val_macro_accuracy=metric,
                    val_loss=None if val is None else val.get("loss"),
                    val_per_class=None if val is None else val["per_class"], best=best,
                    seconds=round(time.perf_counter() - t0, 3))
        if main:
            run.append_metrics(line)
            if checkpoint:
                run.save_state(model, optimizer, scheduler, state)
        distributed.barrier()
        if checkpoint:
            emit(ProgressEvent("epoch", done=epoch, total=epochs, data=line))
    summary = {"best_epoch": state["best_epoch"], "best_metric": state["best_metric"],
               "metric": "val_macro_accuracy" if validate is not None else None,
               "select": opts.select, "epochs_planned": epochs,
               "epochs_run": state["epoch"], "stopped_early": state["epoch"] < epochs, "step": state["step"]}
    summary.update(val_missing(validate))
    if main and finalize is not None and run.load_best(model):
        summary.update(finalize(model, summary))
        run.save_best(model, state["best_epoch"], state["best_metric"])
    if main:
        run.finish(summary)
    distributed.barrier()
    emit(ProgressEvent("done", message=f"best epoch {state['best_epoch']} -> {run.path}", data=summary))
    return summary


def _patience_spent(opts: TrainOptions, state: dict[str, Any]) -> bool:
    """Early stopping, never before the step budget's floor."""
    return bool(opts.patience) and state["bad_epochs"] >= opts.patience and state["step"] >= opts.min_steps


def _improves(select: str, val: dict[str, Any] | None, state: dict[str, Any]) -> bool:
    """Whether this epoch's validation beats the kept one under the selection rule.

    Macro accuracy moves in steps of 1/(videos per class); on a small validation set many
    epochs tie, and the lower validation loss then decides instead of the first or last tie.
    """
    if select == "last" or val is None or state["best_epoch"] is None:
        return True
    loss, best_loss = val.get("loss"), state.get("best_loss")
    lower = loss is not None and (best_loss is None or loss < best_loss)
    if select == "loss":
        return lower
    acc, best_acc = val["macro_accuracy"], state["best_metric"]
    return best_acc is None or acc > best_acc or (acc == best_acc and lower)


def _share_state(model: VideoTransformer, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler,
                 state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0's resume point (weights, AdamW moments, schedule, counters) on every rank."""
    payload = None
    if distributed.context().is_main and state is not None:
        payload = {"state": state, "model": distributed.to_cpu(model.state_dict()),
                   "optimizer": distributed.to_cpu(optimizer.state_dict()), "scheduler": scheduler.state_dict()}
    payload = distributed.broadcast_object(payload)
    if payload is None:
        return None
    if not distributed.context().is_main:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
    return payload["state"]


def _cache_of(run: RunFolder) -> str:
    """The cache a run reads (its config.json), for messages that tell the user what to check."""
    config = run.read_optional(CONFIG)
    return str(config.get("cache") or "CACHE") if isinstance(config, dict) else "CACHE"


def nonfinite_loss(epoch: int, value: float, cache: str) -> SagaError:
    """A NaN/inf loss: far more often bad features (NaN rows, corrupt bytes) than a too-high learning rate.

    So the message sends the user to `saga cache verify` first, and to --lr only second.
    """
    return SagaError(f"epoch {epoch}: the loss is {value}; most likely a data error (NaN/inf or corrupt "
                     f"features): check the cache with `saga cache verify {cache}`; if it verifies, lower the "
                     "learning rate (--lr)")


def train_epoch(model: torch.nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, opts: TrainOptions, epoch: int,
                 state: dict[str, Any], per_epoch: int, emit: Progress, cache: str = "CACHE") -> dict[str, Any]:
    """One epoch of optimiser steps, seeded from (seed, epoch) alone so a resumed run repeats it exactly;
    returns the epoch's metrics line (benchmarks call it to time an epoch through the real loop)."""
    seed_epoch(opts.seed, epoch, distributed.context().rank)
    objective.begin_epoch(model, epoch)
    model.train()
    sums: dict[str, float] = {}
    n = steps = 0
    for batch in objective.batches(epoch):
        loss, stats = objective.loss(model, batch)  # under torchrun: this rank's part, the global batch's stats
        if not math.isfinite(stats["loss"]):
            raise nonfinite_loss(epoch, stats["loss"], cache)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        steps += 1
        b = len(batch)
        n += b
        for key, value in stats.items():  # counts add up, means are weighted by batch size
            sums[key] = sums.get(key, 0.0) + (value if key in ("correct", "active", "triplets") else value * b)
        if steps % LOG_EVERY == 0:
            emit(ProgressEvent("step", done=steps, total=per_epoch, data={"epoch": epoch, "loss": sums["loss"] / n}))
    if not n:
        raise SagaError("no training batches: the training set is empty")
    return {
        "epoch": epoch, "step": state["step"], "lr": scheduler.get_last_lr()[0],
        "loss": sums["loss"] / n, "ce": sums["ce"] / n,
        "hnm": sums["hnm"] / n if "hnm" in sums else None,
        "active_triplets": int(sums["active"]) if "active" in sums else None,
        "triplets": int(sums["triplets"]) if "triplets" in sums else None,
        **objective.epoch_stats(),
        "train_accuracy": sums["correct"] / n, "samples": n,
    }
