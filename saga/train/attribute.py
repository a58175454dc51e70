"""Stage 2: adapt the stage-1 transformer to n_c attribution classes from a small labelled subset.

L = λ·CE + (1 − λ)·L_HNM. At every refresh (each epoch, or every N steps) the
whole labelled pool is embedded with the current model (eval mode, no
gradients) and `mine_triplets` finds each video's positive and hardest negative
at the level being trained. In each batch the batch's videos are the anchors;
their mined positives and negatives are looked up and embedded again *with*
gradients (train mode, same augmentation as the batch), so the triplet term
trains θ. Each epoch logs how many triplets were mined, used and active (loss >
0), so a zero L_HNM explains itself.

Without `from_run` the model is trained from scratch on the same subset: the
paper's 1-stage baseline.

Under torchrun (docs/distributed.md) each rank embeds its share of the pool,
the embeddings are all-gathered, and every rank mines the same triplets over
the whole pool; each rank then trains on its slice of the global batch, the
triplet term weighted by its share of the batch's triplets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saga import distributed
from saga.cache.store import FeatureCache
from saga.cache.manifest import VideoRecord
from saga.errors import SagaError, shown
from saga.model import VideoTransformer, allocate
from saga.progress import ProgressEvent, report_step
from saga.train.basis import fit_to_pool
from saga.distributed import resolve_device
from saga.train.readout import choose_readout, fit_readout, source_subclasses, unlabelled_pool
from saga.train.data import Batch, InMemoryFeatures, StreamingFeatures, View, epoch_rng, open_features
from saga.cache.fraction import counts_line, saved_or_drawn, write_labelled
from saga.train.loop import (
    CEObjective,
    Progress,
    correct_count,
    fit,
    local_rows,
    make_validator,
    open_run,
    resolve_frames,
    setup_steps,
)
from saga.train.losses import combined_loss, triplet_loss, weigh
from saga.train.configs import LABELLED_FROM_STAGE1, AttributeConfig
from saga.train.options import Loss, refuse_blind_model
from saga.train.mining import mine_triplets
from saga.runs import LABELLED, make_provenance, recorded_options
from saga.runs.files import MODEL_OPTIONS
from saga.train.base_run import BaseRun, load_base  # noqa: F401 - `load_base` is part of stage 2's API
from saga.train import withhold
from saga.train.withhold import Withheld

PAIRS = 0x7A1  # rng purpose: augmentation of re-embedded positives/negatives


@torch.no_grad()
def embed(model: VideoTransformer, data: InMemoryFeatures | StreamingFeatures, view: View, batch_size: int,
          device: torch.device) -> np.ndarray:
    """φ of every item of `data` (eval mode, evaluation view), rows in `data`'s order.

    Under torchrun each rank embeds every world_size-th batch of eval_batch_size rows and
    the rows are all-gathered: every rank returns the whole pool's embeddings.
    """
    if distributed.context().enabled:
        return _embed_sharded(distributed.unwrap(model), data, view, batch_size, device)
    was = model.training
    model.eval()
    out = np.zeros((len(data), model.config.d_model), np.float32)
    for batch in data.batches(batch_size, view):
        b = batch.to(device)
        out[batch.index.numpy()] = model(b.x, b.mask).embedding.float().cpu().numpy()
    model.train(was)
    return out


@torch.no_grad()
def _embed_sharded(model: VideoTransformer, data: InMemoryFeatures | StreamingFeatures, view: View,
                   batch_size: int, device: torch.device) -> np.ndarray:
    """`embed` split across ranks: the same batches of rows as one process, dealt round-robin."""
    ctx = distributed.context()
    was = model.training
    model.eval()
    chunks = [np.arange(lo, min(lo + batch_size, len(data))) for lo in range(0, len(data), batch_size)]
    mine = chunks[ctx.rank::ctx.world_size]
    rows, embs = [np.zeros(0, np.int64)], [np.zeros((0, model.config.d_model), np.float32)]
    for idx in mine:
        b = data.take(idx, view).to(device)
        rows.append(idx)
        embs.append(model(b.x, b.mask).embedding.float().cpu().numpy())
    model.train(was)
    out = np.zeros((len(data), model.config.d_model), np.float32)
    for r, e in zip(distributed.all_gather_arrays(np.concatenate(rows)),
                    distributed.all_gather_arrays(np.concatenate(embs))):
        out[r] = e
    return out


class HNMObjective(CEObjective):
    """CE + triplet loss with pool-wide mined (hardest or semi-hard) negatives.

    `level_labels` (default: the data's labels) define positives and negatives: the classes of the
    level being trained, also when CE trains on their generators (`sources`), so two generators of
    one team are positives at TEAM-L, and a generator with one labelled video still has a positive.
    """

    def __init__(self, data: InMemoryFeatures | StreamingFeatures, view: View, cfg: AttributeConfig,
                 device: torch.device, level_labels: np.ndarray | None = None) -> None:
        super().__init__(data, view, cfg.batch_size, cfg.seed, cfg.balance, device)
        self.cfg, self.mode, self.every = cfg, Loss(cfg.loss).mining, cfg.mine_steps()
        self.level_labels = data.labels if level_labels is None else np.asarray(level_labels, np.int64)
        self.pos = np.full(len(data), -1, np.int64)  # mined positive / negative per pool item (-1: none)
        self.neg = np.full(len(data), -1, np.int64)
        self.counts: dict[str, int] = {}

    def begin_epoch(self, model: VideoTransformer, epoch: int) -> None:
        self.epoch, self.steps = epoch, 0
        self.rng = epoch_rng(self.seed, epoch, PAIRS)
        self.counts = {"mined_triplets": 0, "refreshes": 0, "approx_refreshes": 0}
        self.refresh(model)

    def refresh(self, model: VideoTransformer) -> None:
        emb = embed(model, self.data, View(self.view.frames), self.cfg.eval_batch_size, self.device)
        seed = (self.seed * 1_000_003 + self.epoch) * 1009 + self.counts["refreshes"]  # positive="random" only
        mined = mine_triplets(emb, self.level_labels, self.mode, self.cfg.margin, self.cfg.mine_k,
                              self.cfg.positive, seed=seed)
        self.pos = np.full(len(self.data), -1, np.int64)
        self.neg = np.full(len(self.data), -1, np.int64)
        self.pos[mined.anchors], self.neg[mined.anchors] = mined.positives, mined.negatives
        self.counts["mined_triplets"] = len(mined)  # at the latest refresh
        self.counts["refreshes"] += 1
        self.counts["approx_refreshes"] += mined.search == "approx"

    def loss(self, model: VideoTransformer, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        if self.every and self.steps and self.steps % self.every == 0:
            self.refresh(model)
        self.steps += 1
        if self.dist.enabled:
            return self.sharded_loss(model, batch)
        b = batch.to(self.device)
        out = model(b.x, b.mask)
        idx = batch.index.numpy()
        sel = self.pos[idx] >= 0
        anchors = out.embedding[torch.from_numpy(sel).to(self.device)]
        if sel.any():
            others = self.data.take(np.concatenate([self.pos[idx[sel]], self.neg[idx[sel]]]), self.view, self.rng)
            o = others.to(self.device)
            positives, negatives = model(o.x, o.mask).embedding.split(int(sel.sum()))
        else:
            positives = negatives = anchors  # empty: the triplet term is 0
        loss, stats = combined_loss(out.rows, b.y, anchors, positives, negatives, self.cfg.lam, self.cfg.margin)
        stats["correct"] = correct_count(out.rows, b.y)
        return loss, stats

    def sharded_loss(self, model: torch.nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """This rank's part of λ·CE + (1 − λ)·L_HNM of the global batch; stats are the global batch's.

        Every rank draws the re-embedded positives/negatives of the *whole* batch from the same
        rng (so augmentation matches one process) and embeds those of its own anchors. CE is
        weighted by the rank's share of the batch, the triplet mean by its share of the batch's
        triplets, so DDP's average is the gradient of the global loss (see `local_rows`).
        """
        cfg, world = self.cfg, self.dist.world_size
        local, n = local_rows(batch, self.dist)
        lo = distributed.shard_bounds(len(batch), self.dist)[0]
        idx = batch.index.numpy()
        sel = self.pos[idx] >= 0  # anchors of the global batch, identical on every rank
        m_all = int(sel.sum())
        mine = sel[lo:lo + n]
        m = int(mine.sum())
        b = local.to(self.device)
        out = model(b.x, b.mask)
        keep = np.zeros(len(local), bool)
        keep[:n] = mine
        anchors = out.embedding[torch.from_numpy(keep).to(self.device)]
        if m_all:
            others = self.data.take(np.concatenate([self.pos[idx[sel]], self.neg[idx[sel]]]), self.view, self.rng)
        if m:
            k = (np.cumsum(sel) - 1)[lo:lo + n][mine]  # their places among the batch's anchors
            t = torch.from_numpy(np.concatenate([k, m_all + k]))
            x, mask = others.x[t].to(self.device), others.mask[t].to(self.device)
            positives, negatives = model(x, mask).embedding.split(m)
        else:
            positives = negatives = anchors  # empty: the triplet term is 0
        ce = F.cross_entropy(out.rows, b.y)
        hnm, active = triplet_loss(anchors, positives, negatives, cfg.margin)
        w_ce, w_hnm = n / len(batch), (m / m_all if m_all else 0.0)
        loss = weigh(cfg.lam, w_ce * ce, w_hnm * hnm) * world
        stats = distributed.all_reduce_sum({
            "ce": float(ce.detach()) * w_ce, "hnm": float(hnm.detach()) * w_hnm, "active": active,
            "correct": correct_count(out.rows, b.y) if n else 0})
        stats["loss"] = weigh(cfg.lam, stats["ce"], stats["hnm"])
        stats["triplets"] = m_all
        return loss, {k: int(v) if k in ("active", "correct") else v for k, v in stats.items()}

    def epoch_stats(self) -> dict[str, Any]:
        return dict(self.counts)


def prepare_model(cache: FeatureCache, cfg: AttributeConfig, n_classes: int, frames: int,
                  base: BaseRun | None, subclass_of: Sequence[int] = (), names: Sequence[str] = (),
                  given: Collection[str] | None = None, train: Sequence[VideoRecord] | None = None
                  ) -> VideoTransformer:
    """Stage-1 θ with a fresh n_c-way head (a row per subclass with `subclass_of`, named by `names`), or a new
    model; seeded. `given`: the options the user set (TOML keys, flags), checked against the stage-1 run's
    even at their defaults (without it, those not at their defaults are). `train`: the train pool a new
    model's basis is fitted on (default: the cache's whole train split, as stage 1 would; a fold's lacks
    what it withholds)."""
    torch.manual_seed(cfg.seed)
    if base is None:
        pool = cache.ok_records("train") if train is None else train
        model = allocate(cfg.model_config(cache.dim, n_classes, frames, len(pool)))
        fit_to_pool(model, cache, pool, cfg.basis_method, cfg.seed, frames)
        if subclass_of:
            model.reset_head(n_classes, subclass_of, names)
        return model
    clashes = cfg.model_clashes(base.info.config.get("train") or {}, given, base.info.config.get("model"))
    if clashes:
        raise SagaError(f"{'; '.join(clashes)}: θ comes from the stage-1 run {base.path}, which fixes its shape; "
                        "leave these options out, or train from scratch (--scratch)")
    model = base.model
    refuse_blind_model(model.config.inputs, frames)
    if frames > model.config.max_frames:
        raise SagaError(f"{frames} frames > the stage-1 model's max_frames {model.config.max_frames}")
    model.reset_head(n_classes, subclass_of, names)
    return model


def training_targets(labelled: Sequence[VideoRecord], targets: np.ndarray, n_classes: int,
                     sources: bool) -> tuple[np.ndarray, list[int], list[str]]:
    """What stage 2 trains on: each labelled video's source, each source's class and name, or (classes, [], []).

    A class of several generators (a team, a task, "fake") is learnt as its generators, which θ
    must then tell apart: the embedding keeps what separates them, and the class is read out as
    their mixture. One source per class, or `sources = False`: the classes themselves.
    """
    sub, subclass_of, names = source_subclasses(labelled, targets)
    if not sources or len(subclass_of) == n_classes:
        return targets, [], []
    return sub, subclass_of, names


def train_attribution(cache_path: str | Path, out: str | Path, cfg: AttributeConfig | None = None,
                      from_run: str | Path | None = None, progress: Progress | None = None,
                      given: Collection[str] | None = None, withheld: Withheld | None = None) -> Path:
    """Train (or resume, or reuse) a stage-2 attribution run in `out`; returns the run folder. `given`: the
    options the user set (a --config's keys and the flags), see `prepare_model`. `withheld`: videos no
    step reads, in any split (a leave-one-out fold's held-out generator, saga.train.withhold)."""
    cfg = cfg or AttributeConfig()
    cfg.check()
    distributed.init(resolve_device(cfg.device))  # under torchrun: rank 0 decides, writes and reports
    steps = setup_steps(progress)  # each a status line until training's first line (the CLI's `status_progress`)
    report_step(steps, f"opening {shown(cache_path)}")
    cache = FeatureCache.open(cache_path)
    if from_run is not None:
        report_step(steps, f"loading the stage-1 run {shown(from_run)}")
    if from_run is not None and cfg.train_videos == "labelled":
        raise SagaError(LABELLED_FROM_STAGE1)
    base = load_base(from_run, cache) if from_run is not None else None
    if base is not None:
        withhold.check_base(withheld, base.info.config, base.info.path, cache)
    frames = resolve_frames(cfg.frames or (base.frames if base else None), cache)
    train = withhold.apply(withheld, cache.ok_records("train"))  # the labelled, unlabelled and basis pools
    out = Path(out)
    wanted = cfg.labelled_settings(cache.cache_id)
    subset, saved = distributed.run_on_main(lambda: saved_or_drawn(out / LABELLED, train, cache.taxonomy, wanted))
    classes = list(subset)
    if len(classes) < 2:
        raise SagaError(f"{cache.root}: the train split has {len(classes)} class(es) at {cfg.level}; need >= 2")
    chosen = {p: classes.index(c) for c, paths in subset.items() for p in paths}
    pool = [r for r in train if r.path in chosen]
    targets = np.array([chosen[r.path] for r in pool], np.int64)
    sub, subclass_of, names = training_targets(pool, targets, len(classes), cfg.sources)
    report_step(steps, "building the model")
    # train_videos = "labelled": all the run reads of the train split is its labelled videos (the content basis
    # narrowed to what they span)
    seen = pool if cfg.train_videos == "labelled" else train
    model = prepare_model(cache, cfg, len(classes), frames, base, subclass_of, names, given, seen)
    if base is not None:  # record the θ adapted: config.json listed the defaults (d_model 256, ...) it never used
        recorded = base.info.config.get("train") or {}
        cfg = replace(cfg, **{name: recorded[name] for name in MODEL_OPTIONS if name in recorded})
    lr = float(cfg.lr or (2e-4 if base else 3e-4))
    cfg.head_lr_scale = float(cfg.head_lr_scale or (10.0 if base else 1.0))
    config = {
        "stage": 2, "level": cfg.level, "classes": classes, "frames": frames, "model": model.config.to_dict(),
        "train": {**recorded_options(cfg.to_dict()), "frames": frames, "lr": lr,
                  "from_run": base.path if base else None},
        "cache": str(Path(cache_path).resolve()),
    }
    config = withhold.record(config, withheld)
    prov = make_provenance(cache, cfg.seed, base.origin if base else None)
    run, done = open_run(out, config, prov, progress)
    if done:
        return run.path
    if progress and distributed.context().is_main:  # the imbalance a small fraction leaves (2 to 4,282 on GenVideo)
        progress(ProgressEvent("labelled", message=counts_line(cfg.level, subset)))
    with run.released_on_error():  # a setup error must not leave the folder locked
        if not saved and distributed.context().is_main:
            write_labelled(out / LABELLED, subset, wanted, train)
        report_step(steps, f"reading the features of {len(pool):,} labelled train videos")
        data = open_features(cache, pool, sub, cfg.stream, cfg.memory_budget_gb, cfg.buffer_shards)
        device = resolve_device(cfg.device)
        view = View(frames, train=True, jitter=cfg.jitter, frame_drop=cfg.frame_drop)
        objective = (CEObjective(data, view, cfg.batch_size, cfg.seed, cfg.balance, device) if cfg.loss is Loss.CE
                     else HNMObjective(data, view, cfg, device, level_labels=targets))
        val = withhold.apply(withheld, cache.ok_records("val"))
        report_step(steps, f"reading the features of {len(val):,} val videos")
        validate = make_validator(cache, val, cfg.level, classes, frames, cfg.eval_batch_size, device,
                                  unwithheld=cache.ok_records("val"))

        def lda(m: VideoTransformer) -> dict[str, object]:  # only when the readout is fitted: the pool is listed then
            unlabelled, why_not = (unlabelled_pool(train, set(chosen), cfg.level, cache.taxonomy, cfg.seed)
                                   if cfg.self_training and cfg.train_videos == "all" else
                                   ([], "self_training = false" if not cfg.self_training else
                                    "train_videos = labelled"))
            info = fit_readout(m, cache, pool, targets, seen, frames, cfg.eval_batch_size, device, cfg.seed,
                               unlabelled, cfg.sources)
            return {**info, "self_training": why_not or "on"}

        finalize = None if cfg.readout == "head" else (  # the kept epoch's val score is the trained head's
            lambda m, done: choose_readout(m, lda, validate, done["best_metric"], switch=cfg.readout == "auto"))
        fit(model, objective, run, cfg, lr, validate, device, progress, finalize)
    return run.path
