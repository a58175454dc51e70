"""Each training stage's options: `Stage1Config` (real/fake) and `AttributeConfig` (attribution), checked in full.

Why apart from saga.train.stage1 / saga.train.attribute: those import torch, zarr and FAISS (seconds); the
CLI checks a command's options with these classes before that import, so a bad value (`--lr -1`,
`--level XX`, `--loss foo`) is one line at once (docs/performance.md "CLI start-up"). Nothing here imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Collection

from saga.cache.fraction import check_draw, settings
from saga.errors import SagaError
from saga.taxonomy import check_level
from saga.train.options import Loss, TrainOptions, parse_choice

TRAIN_VIDEOS = ("all", "labelled")  # what of the train split a stage-2 run may read beyond its labelled videos
LABELLED_FROM_STAGE1 = ("train_videos = labelled is the paper's 1-stage setting (the labelled videos alone), and a "
                        "stage-1 run learnt from the whole train split: train from scratch (--scratch), or leave "
                        "train_videos at all")
READOUTS = ("lda", "head", "auto")  # auto: the discriminant unless the trained head validates better
POSITIVES = ("hardest", "easiest", "random")  # the same-class positive mining picks (saga.train.mining)
LOSSES = tuple(loss.value for loss in Loss)  # ce, ce+semihnm, ce+hnm
# Options every cell sets itself: in ablate's --config they would be replaced without a word.
GRID_OPTIONS = {"seed": "the cells run seeds 0..S-1 of --seeds S", "loss": "every loss is a row of the grid"}


@dataclass
class Stage1Config(TrainOptions):
    """Stage-1 options (see TrainOptions for the shared ones)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float | None = 3e-4
    balance: bool = True  # class-balanced sampling of real vs fake


@dataclass
class AttributeConfig(TrainOptions):
    """Stage-2 options (see TrainOptions for the shared ones; the model fields apply from scratch only)."""

    level: str = "GEN-L"
    fraction: float = 0.005  # of each class's train videos (SAGA: 0.5 %)
    floor: int = 2  # at least this many per class (a triplet needs a positive)
    per_generator: int = 0  # and at least this many of each generator of a class (0: no such rule)
    loss: Loss = Loss.CE_HNM
    lam: float = 0.5  # λ in L = λ·CE + (1 − λ)·L_HNM
    margin: float = 0.2  # α of the triplet loss
    mine_every: str | int = "epoch"  # "epoch", or refresh the mined triplets every N steps
    mine_k: int = 64  # unused (mining searches one index per class, k = 1): old configs hold it; the CLI warns
    positive: str = "hardest"  # "hardest" | "easiest" | "random" same-class positive
    epochs: int = 30
    min_steps: int = 300  # a handful of labels per class gives 1-4 steps per epoch
    eval_every_steps: int = 25  # validate / checkpoint about every 25 steps, not every tiny epoch
    batch_size: int = 32
    lr: float | None = None  # None: 2e-4 from a stage-1 run, 3e-4 from scratch
    head_lr_scale: float | None = None  # None: 10 for the fresh head on a stage-1 θ, 1 from scratch
    readout: str = "lda"  # final classifier: "lda" (saga.train.readout) | "head" (as trained) | "auto" (val decides)
    self_training: bool = True  # the discriminant refitted with confidently pseudo-labelled unlabelled train videos
    sources: bool = True  # train on the labelled videos' generators, each class read out as a mixture of them
    # "all": the train split's other videos shape the run without their source labels (the content basis and
    # the statistics' scale are fitted on them, the readout shrinks to the real videos' covariance, self-training
    # pseudo-labels the unlabelled ones). "labelled": the labelled videos alone, from scratch only: the paper's
    # 1-stage setting, which has the few source labels and no abundant real/fake pool (docs/ablation.md).
    train_videos: str = "all"

    def check(self) -> None:
        super().check()
        check_level(self.level)
        if self.readout not in READOUTS:
            raise SagaError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.train_videos not in TRAIN_VIDEOS:
            raise SagaError(f"train_videos must be one of {TRAIN_VIDEOS}, got {self.train_videos!r}")
        for name in ("self_training", "sources"):
            if not isinstance(getattr(self, name), bool):
                raise SagaError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.loss = parse_choice(Loss, self.loss, "loss")
        if not 0.0 <= self.lam <= 1.0 or self.margin < 0:
            raise SagaError(f"lam must be in [0, 1] and margin >= 0, got {self.lam}, {self.margin}")
        self.mine_every = parse_mine_every(self.mine_every)
        self.check_mining()
        if isinstance(self.per_generator, bool) or not isinstance(self.per_generator, int) or self.per_generator < 0:
            raise SagaError(f"per_generator must be a whole number >= 0, got {self.per_generator!r}")
        check_draw(self.level, self.fraction, self.floor, self.per_generator)  # else refused once the cache is open

    def check_mining(self) -> None:
        """The miner's own options, checked before the run folder exists: the miner refused them only at the
        first refresh, leaving an unfinished run whose recorded value blocked the corrected rerun."""
        if self.positive not in POSITIVES:
            raise SagaError(f"positive must be one of {', '.join(POSITIVES)}, got {self.positive!r}")
        if isinstance(self.mine_k, bool) or not isinstance(self.mine_k, int) or self.mine_k < 1:
            raise SagaError(f"mine_k must be a whole number >= 1, got {self.mine_k!r}")
        if self.loss is Loss.CE_SEMIHNM and self.margin == 0:  # d_ap < d_an < d_ap + 0 holds for no negative
            raise SagaError("margin = 0 leaves loss ce+semihnm no semi-hard negative (d_ap < d_an < d_ap + margin): "
                            "it would train λ·CE alone; use a margin > 0 (default 0.2), or loss ce+hnm or ce")

    def check_every_loss(self) -> None:
        """`check` with each loss in turn (`saga ablate` trains them all): margin = 0 fails ce+semihnm only,
        which would otherwise fail after the ce cells had trained."""
        self.check()
        for loss in LOSSES:
            replace(self, loss=loss).check()

    def labelled_settings(self, cache_id: str) -> dict[str, Any]:
        """How this run draws its labelled subset (labelled.json's settings)."""
        return settings(self.level, self.fraction, self.floor, self.seed, cache_id, self.per_generator)

    def mine_steps(self) -> int:
        """0 = refresh once per epoch, else every N optimiser steps (and at each epoch start)."""
        every = parse_mine_every(self.mine_every)
        return 0 if every == "epoch" else int(every)


def parse_mine_every(value: str | int) -> str | int:
    """"epoch", or a whole number of steps >= 1 (a CLI string of digits too)."""
    if value == "epoch":
        return "epoch"
    try:
        n = int(str(value))
    except ValueError:
        n = 0
    if n < 1:
        raise SagaError(f"mine_every must be 'epoch' or a number of steps >= 1, got {value!r}")
    return n


def refuse_grid_options(config: Path, keys: Collection[str]) -> None:
    """`seed` or `loss` in ablate's --config: every cell sets its own, so the TOML's would be dropped silently."""
    named = [key for key in GRID_OPTIONS if key in keys]
    if named:
        why = "; ".join(f"{key}: {GRID_OPTIONS[key]}" for key in named)
        raise SagaError(f"{config}: {' and '.join(named)} cannot be set for saga ablate ({why}); "
                        f"remove {'them' if len(named) > 1 else 'it'} from the TOML")
