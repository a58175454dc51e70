"""SAGA's training objective: L = λ·CE + (1 − λ)·L_HNM.

L_HNM is the triplet loss on L2-normalised embeddings with mined hardest
negatives (`saga.train.mining`). Both functions report how many triplets are
active (loss > 0): pytorch-metric-learning's users most often meet a triplet
loss stuck at 0 with no explanation, and this count is that explanation.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from saga.errors import SagaError


def triplet_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.2
) -> tuple[Tensor, int]:
    """mean_i max(0, ‖a_i − p_i‖² − ‖a_i − n_i‖² + α) on L2-normalised rows.

    The mean runs over all given triplets (active or not), as in the paper's formula,
    so the loss shrinks as triplets become satisfied.

    Returns:
        (loss, number of active triplets). An empty set gives a zero loss that is still
        connected to the graph (backward works, gradients are 0) and 0 active, never NaN.
    """
    if not (anchor.shape == positive.shape == negative.shape) or anchor.dim() != 2:
        raise SagaError(
            f"triplet tensors must share shape (M, d): {tuple(anchor.shape)}, "
            f"{tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    if anchor.shape[0] == 0:
        zero = anchor.sum() * 0.0 + positive.sum() * 0.0 + negative.sum() * 0.0
        return zero, 0
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    n = F.normalize(negative, dim=-1)
    d_ap = (a - p).pow(2).sum(-1)
    d_an = (a - n).pow(2).sum(-1)
    per = F.relu(d_ap - d_an + margin)
    return per.mean(), int((per > 0).sum().item())


def weigh(lam: float, ce: Any, hnm: Any) -> Any:
    """λ·CE + (1 − λ)·L_HNM, the one place the two terms are mixed (tensors or floats)."""
    return lam * ce + (1.0 - lam) * hnm


def combined_loss(
    logits: Tensor,
    targets: Tensor,
    emb_a: Tensor,
    emb_p: Tensor,
    emb_n: Tensor,
    lam: float = 0.5,
    margin: float = 0.2,
) -> tuple[Tensor, dict]:
    """L = λ·CE(logits, targets) + (1 − λ)·L_HNM(emb_a, emb_p, emb_n).

    λ = 1 is plain cross-entropy (the paper's "CE" ablation); the triplet tensors may
    then be empty. Returns the loss and plain-number stats for logging:
    loss, ce, hnm, active (triplets with loss > 0) and triplets (mined count).
    """
    if not 0.0 <= lam <= 1.0:
        raise SagaError(f"lambda must be in [0, 1], got {lam}")
    ce = F.cross_entropy(logits, targets)
    hnm, active = triplet_loss(emb_a, emb_p, emb_n, margin)
    loss = weigh(lam, ce, hnm)
    stats = {
        "loss": float(loss.detach()),
        "ce": float(ce.detach()),
        "hnm": float(hnm.detach()),
        "active": active,
        "triplets": int(emb_a.shape[0]),
    }
    return loss, stats
