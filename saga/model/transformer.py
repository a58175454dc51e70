"""The trainable video transformer θ over frozen per-frame features.

A video arrives as ζ (T × D): one image-level feature per frame from a frozen
encoder, zero- or repeat-padded to a common T, with a boolean frame mask
(True = real frame). θ projects D → d_model, adds a fixed sinusoidal position
code, runs `depth` pre-norm blocks and pools the real frames into the video
embedding φ; a linear head maps φ to class logits. Stage 2 keeps θ and swaps
the head (`reset_head`). A readout may give the head one row per *subclass*
(`subclass_of`, e.g. each labelled source of a class, `saga.train.readout`): a class's
logit is then the log-sum-exp of its rows, so a class made of several sources is a
mixture rather than one linear score (`set_head`); `subclass_names` keeps each row's source,
so a prediction can name the class's labelled generator it is most like.

Beside the frame features θ can take content-free temporal tokens (each frame's
feature distance to its neighbours, `saga.model.temporal`): `inputs` picks
"content", "temporal" or "both". With "both" each input has its own projection and
LayerNorm and the two are summed, so the 1,000+ content dimensions enter at the
same scale as the few temporal ones instead of swamping them; `content_dim`
optionally squeezes the content through a bottleneck, and `content_drop` hides
the content of whole training videos so θ must also learn from time. `content_basis`
(k > 0) feeds the content through a fixed k-dimensional basis fitted on the training
pool before training (`saga.train.basis`): with a few labels per class θ then cannot fit
1,000+ content dimensions to the handful of videos it sees (docs/ablation.md).
`video_stats` (lags > 0) adds shift-invariant statistics of the whole window
(`saga.model.temporal.sequence_statistics`, standardised with the pool's mean and
spread) linearly to the pooled embedding φ.

Padding must never leak into a decision (the field's research code often
averages padding into the mean): padded frames are zeroed on input, masked out
as attention keys and excluded from pooling, so changing them leaves the
output bit-for-bit unchanged.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

import torch
from torch import Tensor, nn

from saga.errors import SagaError
from saga.model.blocks import Block, sinusoidal_encoding
from saga.options import INPUTS
from saga.model.temporal import neighbour_tokens, sequence_statistics, stats_dim, token_dim

_POOLS = ("mean", "cls")
_INPUTS = INPUTS  # saga.options: the CLI checks --inputs with it before importing torch
MAX_SUBCLASSES = 100_000
# Bounds on every size (training refuses more, and so does loading someone else's weights file, before it
# allocates): one rule, so no run is trained that `load_model` would then call damaged.
MODEL_LIMITS = {"in_dim": 65536, "d_model": 16384, "depth": 128, "heads": 256, "mlp_ratio": 16.0,
                "max_frames": 8192, "n_classes": 1_000_000, "temporal_lags": 256, "content_dim": 65536,
                "content_basis": 65536, "video_stats": 8192}


@dataclass
class ModelConfig:
    """Hyper-parameters of θ; saved with every checkpoint so a model is rebuilt exactly."""

    in_dim: int = 1152  # SigLIP-So400m image features
    d_model: int = 256
    depth: int = 4  # UNITE: more blocks overfit
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    max_frames: int = 64
    pool: str = "mean"  # "mean" (masked mean over real frames) | "cls"
    n_classes: int = 2
    inputs: str = "both"  # "content" (frame features) | "temporal" (neighbour distances) | "both"
    temporal_lags: int = 4  # neighbour distances to frames t±1..t±lags
    content_dim: int = 0  # > 0: content passes a bottleneck this wide; 0 = no bottleneck
    content_drop: float = 0.0  # training: hide the content of a video with this probability
    content_basis: int = 0  # > 0: content enters as (x - basis_mean) @ basis, a fixed (in_dim, k) buffer
    video_stats: int = 0  # > 0: window statistics at lags 1..video_stats are added to φ
    subclass_of: list[int] = field(default_factory=list)  # head row -> class; empty: one row per class
    subclass_names: list[str] = field(default_factory=list)  # each row's source (generator); [] = unnamed

    def __post_init__(self) -> None:
        self._check_limits()
        if self.pool not in _POOLS:
            raise SagaError(f"model pool must be one of {_POOLS}, got {self.pool!r}")
        if self.inputs not in _INPUTS:
            raise SagaError(f"model inputs must be one of {_INPUTS}, got {self.inputs!r}")
        if self.inputs != "content" and int(self.temporal_lags) < 1:
            raise SagaError(f"model temporal_lags must be >= 1 with inputs={self.inputs!r}")
        if not 0 <= self.video_stats <= self.max_frames:
            raise SagaError(f"model video_stats must be in [0, max_frames], got {self.video_stats}")
        if self.content_basis < 0 or self.content_basis > self.in_dim:
            raise SagaError(f"model content_basis must be in [0, in_dim={self.in_dim}], got {self.content_basis}")
        if self.content_dim < 0 or not 0.0 <= self.content_drop < 1.0:
            raise SagaError(f"model content_dim must be >= 0 and content_drop in [0, 1), "
                            f"got {self.content_dim}, {self.content_drop}")
        for name in ("in_dim", "d_model", "depth", "heads", "max_frames", "n_classes"):
            if int(getattr(self, name)) < 1:
                raise SagaError(f"model {name} must be >= 1, got {getattr(self, name)}")
        self._check_subclasses()
        if self.d_model % self.heads:
            raise SagaError(f"model d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise SagaError(f"model dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_ratio <= 0:
            raise SagaError(f"model mlp_ratio must be > 0, got {self.mlp_ratio}")

    def _check_limits(self) -> None:
        """Every size a number within MODEL_LIMITS (a trained run must stay loadable)."""
        for key, limit in MODEL_LIMITS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= limit:
                raise SagaError(f"model {key} must be in 0..{limit}, got {value!r}")

    def _check_subclasses(self) -> None:
        groups = self.subclass_of
        if not isinstance(groups, list) or len(groups) > MAX_SUBCLASSES or not all(
                isinstance(g, int) and not isinstance(g, bool) for g in groups):
            raise SagaError(f"model subclass_of must be a list of at most {MAX_SUBCLASSES} class indices")
        if groups and sorted(set(groups)) != list(range(int(self.n_classes))):
            raise SagaError(f"model subclass_of must name every class 0..{int(self.n_classes) - 1} and no other")
        names = self.subclass_names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or (
                names and len(names) != len(groups)):
            raise SagaError("model subclass_names must be [] or one name per subclass_of row")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Rebuild from `to_dict`; unknown keys are an error (a typo must not silently become a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SagaError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


@dataclass
class ModelOutput:
    """logits (B, C); embedding φ (B, d_model); attn: per block (B, H, T, T) softmax probabilities or None;
    rows (B, head rows): the head's own outputs, what training's targets index (= logits unless the
    head has subclass rows, whose log-sum-exp per class the logits are).

    attn rows are queries, columns keys; padded keys get exactly 0. With CLS pooling the CLS
    row and column are cut away, so a frame row then sums to 1 minus its attention to CLS.
    """

    logits: Tensor
    embedding: Tensor
    attn: list[Tensor] | None = None
    rows: Tensor | None = None


class VideoTransformer(nn.Module):
    """θ and the classification head: ζ (B, T, D) + frame mask → logits, φ and optionally attention."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = replace(config) if config is not None else ModelConfig()
        c = self.config
        self.in_norm: nn.LayerNorm | None = None
        self.proj: nn.Module | None = None
        self.temporal: nn.Module | None = None
        if c.inputs != "temporal":
            width = c.content_basis or c.in_dim
            if c.content_basis:  # persistent: the basis is data fitted before training, saved with the weights
                self.register_buffer("basis_mean", torch.zeros(c.in_dim))
                self.register_buffer("basis", torch.zeros(c.in_dim, c.content_basis))
            self.in_norm = nn.LayerNorm(width)
            self.proj = (nn.Linear(width, c.d_model) if not c.content_dim else
                         nn.Sequential(nn.Linear(width, c.content_dim), nn.Linear(c.content_dim, c.d_model)))
        if c.inputs != "content":
            self.temporal = nn.Sequential(nn.Linear(token_dim(c.temporal_lags), c.d_model), nn.GELU(),
                                          nn.Linear(c.d_model, c.d_model))
        # "both": each input normalised on its own, so neither swamps the other
        self.fuse_norms = nn.ModuleList([nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)]) \
            if c.inputs == "both" else None
        # Not persistent: it is a function of the config, so checkpoints need not carry it.
        self.register_buffer("pos", sinusoidal_encoding(c.max_frames, c.d_model), persistent=False)
        self.cls_token: nn.Parameter | None = None
        if c.pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.in_drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            [Block(c.d_model, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.depth)]
        )
        self.norm = nn.LayerNorm(c.d_model)
        self.stats_proj: nn.Linear | None = None
        if c.video_stats:  # the pool's mean and spread of each statistic: data, saved with the weights
            self.register_buffer("stats_mean", torch.zeros(stats_dim(c.video_stats)))
            self.register_buffer("stats_std", torch.ones(stats_dim(c.video_stats)))
            self.stats_proj = nn.Linear(stats_dim(c.video_stats), c.d_model)
        self.head = nn.Linear(c.d_model, len(c.subclass_of) or c.n_classes)
        self.register_buffer("subclass_mask", None, persistent=False)  # a function of the config, like pos
        self._group_rows(c.subclass_of, c.subclass_names)

    def _group_rows(self, subclass_of: Sequence[int], names: Sequence[str] = ()) -> None:
        """(classes, rows) 0 / -inf: adding it to the row logits and taking log-sum-exp pools each class's rows."""
        self.config.subclass_of = [int(g) for g in subclass_of]
        self.config.subclass_names = [str(n) for n in names]
        if not subclass_of:
            self.subclass_mask = None
            return
        member = torch.tensor(self.config.subclass_of)[None, :] == torch.arange(self.config.n_classes)[:, None]
        mask = torch.zeros(member.shape).masked_fill(~member, float("-inf"))
        self.subclass_mask = mask.to(self.head.weight.device)

    def reset_head(self, n_classes: int, subclass_of: Sequence[int] = (), names: Sequence[str] = ()) -> None:
        """Stage 2: a fresh n_c-way head on the stage-1 θ, or one row per subclass (same device and dtype)."""
        if n_classes < 1:
            raise SagaError(f"n_classes must be >= 1, got {n_classes}")
        self._check_rows(subclass_of, names, n_classes)
        old = self.head
        self.head = nn.Linear(self.config.d_model, len(subclass_of) or n_classes).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        self.config.n_classes = n_classes
        self._group_rows(subclass_of, names)

    def _check_rows(self, subclass_of: Sequence[int], names: Sequence[str], n_classes: int | None = None) -> None:
        ModelConfig(**{**self.config.to_dict(), "n_classes": n_classes or self.config.n_classes,
                       "subclass_of": [int(g) for g in subclass_of], "subclass_names": list(names)})

    def set_head(self, weight: Tensor, bias: Tensor, subclass_of: Sequence[int] = (),
                 names: Sequence[str] = ()) -> None:
        """Install a readout's rows: one per class, or per subclass with `subclass_of` naming each row's class
        (and `names` each row's source, which `saga predict` reports)."""
        rows = len(subclass_of) or self.config.n_classes
        if tuple(weight.shape) != (rows, self.config.d_model) or tuple(bias.shape) != (rows,):
            raise SagaError(f"a head of {rows} rows needs weight ({rows}, {self.config.d_model}) and bias ({rows},), "
                            f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
        self._check_rows(subclass_of, names)
        old = self.head
        self.head = nn.Linear(self.config.d_model, rows).to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)
        self._group_rows(subclass_of, names)

    def logits(self, emb: Tensor) -> Tensor:
        """Class logits of φ (a class with several head rows: the log-sum-exp of theirs)."""
        return self.pool_rows(self.head(emb))

    def pool_rows(self, rows: Tensor) -> Tensor:
        if self.subclass_mask is None:
            return rows
        return torch.logsumexp(rows[:, None, :] + self.subclass_mask.to(rows.dtype), dim=-1)

    def set_basis(self, mean: Tensor, basis: Tensor) -> None:
        """Install the fixed content basis: mean (in_dim,), basis (in_dim, content_basis)."""
        c = self.config
        if not c.content_basis:
            raise SagaError("this model has no content basis (content_basis = 0)")
        if tuple(mean.shape) != (c.in_dim,) or tuple(basis.shape) != (c.in_dim, c.content_basis):
            raise SagaError(f"content basis of shape {tuple(basis.shape)} (mean {tuple(mean.shape)}); "
                            f"the model needs ({c.in_dim}, {c.content_basis})")
        self.basis_mean.copy_(mean)
        self.basis.copy_(basis)

    def set_stats_norm(self, mean: Tensor, std: Tensor) -> None:
        """Install the pool's per-statistic mean and standard deviation (video_stats > 0)."""
        if self.stats_proj is None:
            raise SagaError("this model has no window statistics (video_stats = 0)")
        if mean.shape != self.stats_mean.shape or std.shape != self.stats_std.shape:
            raise SagaError(f"window statistics of size {tuple(mean.shape)}; the model needs {tuple(self.stats_mean.shape)}")
        self.stats_mean.copy_(mean)
        self.stats_std.copy_(std.clamp_min(1e-6))

    def window_statistics(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Standardised, clipped statistics of each window (B, S)."""
        raw = sequence_statistics(x, mask, self.config.video_stats).float()
        return ((raw - self.stats_mean) / self.stats_std).clamp(-10.0, 10.0)

    def _content(self, x: Tensor) -> Tensor | None:
        if self.proj is None or self.in_norm is None:
            return None
        if self.config.content_basis:
            x = (x - self.basis_mean.to(x.dtype)) @ self.basis.to(x.dtype)
        return self.proj(self.in_norm(x))

    def _check(self, x: Tensor, mask: Tensor | None) -> None:
        c = self.config
        if x.dim() != 3:
            raise SagaError(f"expected features of shape (B, T, D), got {tuple(x.shape)}")
        if x.shape[2] != c.in_dim:
            raise SagaError(
                f"feature dim {x.shape[2]} != model in_dim {c.in_dim}: features from another encoder?"
            )
        if x.shape[1] > c.max_frames:
            raise SagaError(
                f"{x.shape[1]} frames > max_frames {c.max_frames}: sample fewer frames or raise max_frames"
            )
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise SagaError(f"mask shape {tuple(mask.shape)} != (B, T) {tuple(x.shape[:2])}")

    def embed_frames(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B, T, D) features -> (B, T, d_model) frame tokens from content, time, or both."""
        c = self.config
        content = self._content(x)
        timing = self.temporal(neighbour_tokens(x, mask, c.temporal_lags)) if self.temporal is not None else None
        if content is None or timing is None or self.fuse_norms is None:
            out = content if content is not None else timing
            assert out is not None
            return out
        content = self.fuse_norms[0](content)
        if self.training and c.content_drop > 0:
            keep = (torch.rand(x.shape[0], 1, 1, device=x.device) >= c.content_drop).to(content.dtype)
            content = content * keep
        return content + self.fuse_norms[1](timing)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_attn: bool = False
    ) -> ModelOutput:
        """x (B, T, D) features; mask (B, T) bool, True = real frame (None = all real)."""
        self._check(x, mask)
        b, t, _ = x.shape
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
            # Zero padded frames first: even NaN/inf padding then cannot reach anything.
            x = x.masked_fill(~mask[..., None], 0.0)
        h = self.embed_frames(x, mask) + self.pos[:t].to(x.dtype)
        key_mask = mask
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(b, -1, -1).to(h.dtype), h], dim=1)
            if mask is not None:
                key_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        h = self.in_drop(h)
        maps: list[Tensor] = []
        for blk in self.blocks:
            h, a = blk(h, key_mask, return_attn)
            if a is not None:
                maps.append(a[:, :, 1:, 1:] if self.cls_token is not None else a)
        h = self.norm(h)
        if self.cls_token is not None:
            emb = h[:, 0]
        elif mask is None:
            emb = h.mean(dim=1)
        else:
            count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
            emb = h.masked_fill(~mask[..., None], 0.0).sum(dim=1) / count
        if self.stats_proj is not None:
            emb = emb + self.stats_proj(self.window_statistics(x, mask).to(emb.dtype))
        rows = self.head(emb)
        return ModelOutput(self.pool_rows(rows), emb, maps if return_attn else None, rows)


def parameter_estimate(c: ModelConfig) -> int:
    """About how many parameters `VideoTransformer(c)` holds (blocks, input projections, head)."""
    d, hidden = int(c.d_model), max(1, int(round(c.d_model * c.mlp_ratio)))
    width = int(c.content_basis or c.in_dim)
    content = width * (c.content_dim or d) + c.content_dim * d + c.in_dim * c.content_basis
    return int(c.depth * (4 * d * d + 2 * d * hidden) + content + (4 * c.temporal_lags + d) * d
               + (stats_dim(c.video_stats) + c.n_classes) * d)


def physical_memory() -> int:
    """This machine's RAM in bytes (0: unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def allocate(config: ModelConfig) -> VideoTransformer:
    """A new model to train, refused in one line when its weights, gradients and AdamW moments (16 bytes per
    parameter) exceed this machine's memory: sizes within MODEL_LIMITS can still ask for terabytes, and
    torch then raised a traceback, or initialised the weights until the OOM killer ended the process."""
    need, have = 16 * parameter_estimate(config), physical_memory()
    if have and need > have:
        raise SagaError(f"a model with d_model={config.d_model}, depth={config.depth}, mlp_ratio={config.mlp_ratio} "
                        f"needs ~{_gib(need)} to train, more than this machine's {_gib(have)}; "
                        "choose a smaller d_model, depth or mlp_ratio")
    return VideoTransformer(config)


def _gib(size: int) -> str:
    gib = size / 2**30
    return f"{gib:,.1f} GiB" if gib < 10 else f"{gib:,.0f} GiB"
