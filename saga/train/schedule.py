"""AdamW with a linear warm-up and cosine decay, stepped once per optimiser step.

Per-step (not per-epoch) scheduling keeps the warm-up meaningful for the short
stage-2 epochs (a 0.5 % subset can be a handful of batches) and makes the
schedule a pure function of the step count, which resume restores exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   head_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW; biases, LayerNorm weights and the CLS token are not decayed (decaying them only hurts).

    The classification head (parameters named `head.*`) learns at lr × head_lr_scale: in stage 2
    it starts from scratch on top of a trained θ, which a small lr would barely move.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = not (param.ndim < 2 or name.endswith("cls_token"))
        groups.setdefault((decayed, name.startswith("head.")), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": weight_decay if decayed else 0.0,
          "lr": lr * (head_lr_scale if head else 1.0)}
         for (decayed, head), params in sorted(groups.items())], lr=lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """lr factor: (s + 1) / warmup for s < warmup, then cosine from 1 down to `min_factor` at `total_steps`."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
