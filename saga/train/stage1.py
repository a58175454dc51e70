"""Stage 1: the video transformer learns real vs fake (BIN-L) from the abundant binary labels.

Real and fake are rarely balanced (GenVideo has far more fake clips), so batches
are class-balanced by default: exactly when the split is held in memory, by
per-class acceptance when it is streamed (see `saga.train.data`). The train
split is streamed when its float32 copy would exceed `memory_budget_gb`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from saga import distributed
from saga.cache.store import FeatureCache
from saga.errors import SagaError, shown
from saga.model.inference import record_targets
from saga.model import allocate
from saga.distributed import resolve_device
from saga.train.basis import fit_to_pool, needs_pool_fit
from saga.train.data import View, open_features
from saga.train.loop import (
    CEObjective,
    Progress,
    fit,
    make_validator,
    open_run,
    resolve_frames,
    setup_steps,
)
from saga.progress import report_step
from saga.runs import make_provenance
from saga.train.configs import Stage1Config  # noqa: F401 - re-exported: stage 1's API
from saga.train import withhold
from saga.train.withhold import Withheld

LEVEL = "BIN-L"


def train_stage1(cache_path: str | Path, out: str | Path, cfg: Stage1Config | None = None,
                 progress: Progress | None = None, withheld: Withheld | None = None) -> Path:
    """Train (or resume, or reuse) a stage-1 real/fake run in `out`; returns the run folder. `withheld`: videos
    it never reads (a leave-one-out fold's held-out generator, recorded so the fold can check it)."""
    cfg = cfg or Stage1Config()
    cfg.check()
    steps = setup_steps(progress)  # each a status line until training's first line (the CLI's `status_progress`)
    report_step(steps, f"opening {shown(cache_path)}")
    cache = FeatureCache.open(cache_path)
    frames = resolve_frames(cfg.frames, cache)
    classes = cache.taxonomy.classes(LEVEL)
    train = withhold.apply(withheld, cache.ok_records("train"))
    targets = record_targets(train, LEVEL, classes)
    missing = [c for i, c in enumerate(classes) if not (targets == i).any()]
    if missing:
        raise SagaError(f"{cache.root}: the train split has no {' or '.join(missing)} videos; "
                        "stage 1 needs both real and fake videos")
    model_cfg = cfg.model_config(cache.dim, len(classes), frames, len(train))
    report_step(steps, "building the model")
    torch.manual_seed(cfg.seed)
    model = allocate(model_cfg)  # before the run folder exists: a model too big for memory leaves none behind
    device = resolve_device(cfg.device)
    distributed.init(device)  # under torchrun: rank 0 decides, writes and reports
    config = {
        "stage": 1, "level": LEVEL, "classes": classes, "frames": frames, "model": model_cfg.to_dict(),
        "train": {**cfg.to_dict(), "frames": frames}, "cache": str(Path(cache_path).resolve()),
    }
    config = withhold.record(config, withheld)
    prov = make_provenance(cache, cfg.seed)
    run, done = open_run(out, config, prov, progress)
    if done:
        return run.path
    with run.released_on_error():  # a setup error must not leave the folder locked
        report_step(steps, f"reading the features of {len(train):,} train videos")
        data = open_features(cache, train, targets, cfg.stream, cfg.memory_budget_gb, cfg.buffer_shards)
        if needs_pool_fit(model):
            report_step(steps, "fitting the content basis and window statistics")
        fit_to_pool(model, cache, train, cfg.basis_method, cfg.seed, frames)
        view = View(frames, train=True, jitter=cfg.jitter, frame_drop=cfg.frame_drop)
        objective = CEObjective(data, view, cfg.batch_size, cfg.seed, cfg.balance, device)
        val = withhold.apply(withheld, cache.ok_records("val"))
        report_step(steps, f"reading the features of {len(val):,} val videos")
        validate = make_validator(cache, val, LEVEL, classes, frames, cfg.eval_batch_size, device,
                                  unwithheld=cache.ok_records("val"))
        fit(model, objective, run, cfg, float(cfg.lr or 3e-4), validate, device, progress)
    return run.path
