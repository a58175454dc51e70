"""The options both training stages share: budget, schedule, selection, augmentation, the model's shape.

Each stage's config (Stage1Config, AttributeConfig: saga.train.configs) extends TrainOptions; the resolved values
go into the run's config.json, so a run folder says exactly how it was trained. No torch here (nor in
saga.train.configs): the CLI checks every option before the seconds that import takes (docs/performance.md).
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import MISSING, asdict, dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Collection, TypeVar

from saga.errors import SagaError, brief
from saga.options import HNM_OPTIONS, IGNORED_OPTIONS, INPUTS, MODEL_OPTIONS

if TYPE_CHECKING:
    from saga.model import ModelConfig


class Select(StrEnum):
    """Which epoch a run keeps."""

    ACCURACY = "accuracy"  # best val macro accuracy, ties broken by the lower val loss
    LOSS = "loss"  # lowest val cross-entropy
    LAST = "last"


class Loss(StrEnum):
    """Stage 2's objective: cross-entropy alone, or with the triplet term on mined negatives."""

    CE = "ce"
    CE_SEMIHNM = "ce+semihnm"  # semi-hard negatives (the paper's ablation baseline)
    CE_HNM = "ce+hnm"  # hardest negatives (SAGA)

    @property
    def mining(self) -> str | None:
        """The miner's mode for this loss (None: nothing to mine)."""
        return {Loss.CE: None, Loss.CE_HNM: "hard", Loss.CE_SEMIHNM: "semihard"}[self]


def refuse_unused_options(loss: Loss, given: dict[str, str]) -> None:
    """`given`: option -> how the user gave it ("--lam", "lam in run.toml"); those the loss never reads are one
    line (a --lam with --loss ce trained the very same weights and was recorded as if used)."""
    unused = [how for name, how in given.items() if name in HNM_OPTIONS]
    if loss is Loss.CE and unused:
        raise SagaError(f"{', '.join(unused)}: {'apply' if len(unused) > 1 else 'applies'} to loss ce+hnm / "
                        "ce+semihnm only (loss ce has no triplet term); leave "
                        f"{'them' if len(unused) > 1 else 'it'} out, or choose one of those losses")


def _clash(name: str, value: Any, asked: Any, built: Any) -> str:
    """'content_basis = 8 (the stage-1 run's: 32)', naming the θ's own value where its run narrowed the asked one."""
    if built == asked:
        return f"{name} = {value!r} (the stage-1 run's: {asked!r})"
    return f"{name} = {value!r} (the stage-1 model's: {built!r}, narrowed from the {asked!r} its run asked for)"


# Why each of IGNORED_OPTIONS has no effect (said in the warning).
_IGNORED_WHY = {"mine_k": "mining searches one index per class for each video's nearest negative, k = 1"}


def ignored_options(kind: type, given: dict[str, str]) -> dict[str, Any]:
    """Options given that nothing reads (IGNORED_OPTIONS): one warning line each, and their defaults to put
    back, so the run records what it used and stays the same run as one made without them."""
    ignored = {}
    for f in fields(kind):
        if f.name in IGNORED_OPTIONS and f.name in given and f.default is not MISSING:
            warnings.warn(f"{given[f.name]} has no effect ({_IGNORED_WHY[f.name]}); remove it")
            ignored[f.name] = f.default
    return ignored


def refuse_blind_model(inputs: str, frames: int) -> None:
    """θ on temporal tokens alone sees nothing in a one-frame window (every token compares a frame with its
    neighbours, and the window statistics need two frames): it trained a constant classifier, recorded as done."""
    if inputs == "temporal" and frames < 2:
        raise SagaError(f"inputs = 'temporal' needs windows of at least 2 frames (its tokens compare neighbouring "
                        f"frames), but the run would use {frames}; use --frames 2 or more (a cache extracted with "
                        "more frames), or --inputs both")


def check_view(frames: int, jitter: int, frame_drop: float) -> None:
    """The sub-window and augmentation settings `saga.train.data.View` takes, or a one-line error."""
    if frames < 1:
        raise SagaError(f"frames must be >= 1, got {frames}")
    if jitter < 0 or not 0.0 <= frame_drop < 1.0:
        raise SagaError(f"jitter must be >= 0 and frame_drop in [0, 1), got {jitter}, {frame_drop}")


Choice = TypeVar("Choice", bound=StrEnum)


def parse_choice(kind: type[Choice], value: Any, name: str) -> Choice:
    """`value` (a string from a CLI flag, TOML or config.json) as a member of `kind`, or a one-line error."""
    try:
        return kind(str(value))
    except ValueError:
        raise SagaError(f"{name} must be one of {', '.join(m.value for m in kind)}, got {value!r}") from None


SELECT = tuple(m.value for m in Select)


@dataclass
class TrainOptions:
    """Options shared by both stages (each stage's config adds its own)."""

    frames: int | None = None  # T' <= the cache's T; None = all cached frames (stage 2: stage 1's)
    epochs: int = 10
    # Budget floor in optimiser steps: a few labels per class make epochs of 1-4 steps, so an epoch
    # count alone stops before a fresh head has trained. epochs = max(epochs, ceil(min_steps / steps per epoch)).
    min_steps: int = 0
    batch_size: int = 64
    lr: float | None = 3e-4
    head_lr_scale: float = 1.0  # the classification head's lr = lr × this (a fresh stage-2 head learns faster)
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    patience: int = 5  # validations (not epochs) without a better one before stopping (never before min_steps); 0 = never
    # Which epoch to keep: "accuracy" (val macro accuracy, ties broken by the lower val loss), "loss"
    # (lowest val cross-entropy) or "last".
    select: Select = Select.ACCURACY
    # Validate and checkpoint every ceil(eval_every_steps / steps per epoch) epochs (and after the
    # last): with 1-4 steps per epoch, validating and saving every epoch costs more than training.
    # 0 = every epoch. Resume stays exact: every epoch is seeded from (seed, epoch) alone.
    eval_every_steps: int = 0
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    seed: int = 0
    jitter: int = 0  # training: shift the sub-window start by up to ±jitter frames
    frame_drop: float = 0.0  # training: mask each real frame off with this probability (>= 1 kept)
    eval_batch_size: int = 256
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto"
    balance: bool = False  # class-balanced batches (see saga.train.data)
    stream: bool | str = "auto"  # stream the training videos from the cache: True, False, or "auto"
    memory_budget_gb: float = 2.0  # "auto" streams when their float32 copy would exceed this
    # Streaming: shards held and shuffled together. Extraction writes videos sorted by path, so a shard
    # usually holds one generator: the buffer must span many shards to mix classes in a batch
    # (64 × 128 rows × 16 × 1152 float16 ≈ 300 MB).
    buffer_shards: int = 64
    # the transformer, when trained from scratch
    d_model: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    pool: str = "mean"
    inputs: str = "both"  # "content" | "temporal" | "both" (see saga.model.transformer)
    temporal_lags: int = 4
    content_dim: int = 0
    content_drop: float = 0.0
    # With 2-5 labels per class θ fits content; these two made it learn generators (docs/ablation.md):
    content_basis: int = 32  # content through a fixed basis of this many directions (saga.train.basis); 0 = off
    basis_method: str = "pca"  # "pca" (no labels) | "gev" (fakes against reals)
    video_stats: int = 8  # window statistics at lags 1..video_stats added to φ; 0 = off

    def check(self) -> None:
        """Validate every value and parse the string choices into their enums (once, here)."""
        self.check_numbers()
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise SagaError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise SagaError(f"lr must be > 0, got {self.lr}")
        for name in ("patience", "warmup_epochs", "weight_decay", "grad_clip", "min_steps", "eval_every_steps"):
            if getattr(self, name) < 0:
                raise SagaError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.head_lr_scale is not None and not self.head_lr_scale > 0:
            raise SagaError(f"head_lr_scale must be > 0, got {self.head_lr_scale}")
        self.select = parse_choice(Select, self.select, "select")
        if self.stream not in (True, False, "auto"):
            raise SagaError(f"stream must be true, false or 'auto', got {self.stream!r}")
        if self.buffer_shards < 1 or self.memory_budget_gb <= 0:
            raise SagaError("buffer_shards must be >= 1 and memory_budget_gb > 0")
        if self.frames is not None and self.frames < 1:
            raise SagaError(f"frames must be >= 1 (or left out for all cached frames), got {self.frames}")
        check_view(self.frames or 1, self.jitter, self.frame_drop)  # the augmentation, as View checks it
        if self.inputs not in INPUTS:  # else refused when θ is built, after the cache is opened
            raise SagaError(f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.basis_method not in ("pca", "gev"):
            raise SagaError(f"basis_method must be 'pca' or 'gev', got {self.basis_method!r}")

    def check_numbers(self) -> None:
        """Every float finite (nan passes `< 0` and `> 1` tests; inf crashes the schedule) and the counts that a
        negative value would break (numpy refuses seed -1 after the run folder exists) or clamp to 0 unrecorded."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SagaError(f"{f.name} must be a finite number, got {value}")
        for name in ("seed", "content_basis", "video_stats", "temporal_lags", "content_dim"):
            if int(getattr(self, name)) < 0:
                raise SagaError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_config(self, in_dim: int, n_classes: int, frames: int, pool_size: int | None = None) -> ModelConfig:
        """θ's config; the content basis is narrowed to what `pool_size` train videos and in_dim can span."""
        from saga.model import ModelConfig  # torch: imported when a model is built, not when options are checked

        refuse_blind_model(self.inputs, frames)
        basis = int(self.content_basis)
        if basis and pool_size is not None:
            basis = max(0, min(basis, in_dim, pool_size - 1))
        return ModelConfig(in_dim=in_dim, d_model=self.d_model, depth=self.depth, heads=self.heads,
                           mlp_ratio=self.mlp_ratio, dropout=self.dropout, max_frames=max(64, frames),
                           pool=self.pool, n_classes=n_classes, inputs=self.inputs,
                           temporal_lags=self.temporal_lags, content_dim=self.content_dim,
                           content_drop=self.content_drop, content_basis=basis,
                           video_stats=self.video_stats)

    def model_clashes(self, base: dict[str, Any], given: Collection[str] | None = None,
                      model: dict[str, Any] | None = None) -> list[str]:
        """θ's options set here that differ from the base run's recorded `base`: stage 2 on a stage-1 θ keeps
        that θ, so such a setting would be recorded but never used. Set: named in `given` (the keys a TOML or
        flag gave), or without it, not at their defaults. `model`: the base run's config.json `model`, what
        its θ really has: a content basis narrowed to what its train videos span (asked 32, built 16) matches
        either value, and a clash names the built one."""
        chosen = self.options_set(given)
        built = model if isinstance(model, dict) else {}
        return [_clash(name, getattr(self, name), base[name], built.get(name, base[name])) for name in MODEL_OPTIONS
                if name in base and name in chosen and getattr(self, name) not in (base[name], built.get(name))]

    def options_set(self, given: Collection[str] | None = None) -> set[str]:
        """The options the user set: `given` when known, else those not at their defaults (a guess: a
        default written out explicitly looks unset)."""
        if given is not None:
            return set(given)
        return {f.name for f in fields(TrainOptions) if getattr(self, f.name) != f.default}

    def planned_epochs(self, steps_per_epoch: int) -> int:
        """`epochs`, raised so that training takes at least `min_steps` optimiser steps."""
        return max(int(self.epochs), math.ceil(int(self.min_steps) / max(1, steps_per_epoch)))

    def eval_every(self, steps_per_epoch: int) -> int:
        """Epochs between validations / checkpoints."""
        return max(1, math.ceil(int(self.eval_every_steps) / max(1, steps_per_epoch)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns the subclass
        """From a --config TOML (or a run's config.json): unknown keys and wrong value types are one line."""
        types = {f.name: str(f.type) for f in fields(cls)}
        for key, value in data.items():
            if key not in types:
                close = difflib.get_close_matches(key, types, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(types))}"
                raise SagaError(f"unknown training option {brief(key)}; {hint}")
            accepted = _accepted(types[key])
            if accepted and not (isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)):
                wanted = " or ".join(_NAMES[t] for t in types[key].split(" | ") if t != "None")
                raise SagaError(f"training option {key} must be {wanted}, "
                                f"got {brief(value)}")
        return cls(**data)


# Python types a TOML value may have for each annotation name (a bool is not a number here).
_TOML_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
                                            "None": (type(None),), "Select": (str,), "Loss": (str,)}
_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
          "Select": "a string", "Loss": "a string"}


def _accepted(annotation: str) -> tuple[type, ...]:
    """The types `annotation` ("int | None", "bool | str", ...) admits; () when it names another type."""
    names = [part.strip() for part in annotation.split("|")]
    if not all(name in _TOML_TYPES for name in names):
        return ()
    return tuple(t for name in names for t in _TOML_TYPES[name])
