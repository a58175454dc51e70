"""AdamW with a linear warm-up and cosine decay, stepped once per optimiser step.

Per-step (not per-epoch) scheduling keeps the warm-up meaningful for the short
stage-2 epochs (a 0.5 % subset can be a handful of batches) and makes the
schedule a pure function of the step count, which resume restores exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases, LayerNorm weights and the CLS token are not decayed (decaying them only hurts)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith("cls_token") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


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
