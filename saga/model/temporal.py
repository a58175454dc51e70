"""Content-free temporal tokens: how far each frame's feature lies from its neighbours'.

Generators leave their marks between neighbouring frames (held frames, blended
interpolations, flicker, periodic warps). In raw 1,000+-dimensional frame
features that signal is a tiny part of the variance, and with a few labels per
class a transformer memorises content instead. These tokens carry only the
geometry of the sequence: for each frame t and lag k = 1..K, the cosine distance
between the features of frames t and t±k, as a log (so a held frame, distance
~0, and ordinary motion, distance ~0.01-0.1, are far apart), plus a flag that
says whether that neighbour exists. Padded frames and frames past either end
are never a neighbour, so padding changes nothing, as everywhere else in θ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_EPS = 1e-4  # distance floor: exact repeats (0) and codec noise (~1e-5) land together
# log(d + eps) spans about [-9.2, 0.7] for d in [0, 2]; this fixed affine maps it to about [-1.6, 1.7]
CENTRE, SCALE = -4.5, 3.0


def token_dim(lags: int) -> int:
    """Values and validity flags for t-k and t+k at each lag."""
    return 4 * lags


def neighbour_tokens(x: Tensor, mask: Tensor | None, lags: int) -> Tensor:
    """x (B, T, D) features, mask (B, T) bool or None -> (B, T, 4·lags) float tokens.

    Column 2i / 2i+1 hold the scaled log distance to frame t−k / t+k (k = i + 1, 0 where
    that neighbour is missing); the last 2·lags columns hold the matching 0/1 flags.
    """
    b, t, _ = x.shape
    unit = F.normalize(x.float(), dim=-1)
    real = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask.to(torch.bool)
    pos = torch.arange(t, device=x.device)
    values, flags = [], []
    for k in range(1, lags + 1):
        for shift in (-k, k):
            other = pos + shift
            inside = (other >= 0) & (other < t)
            idx = other.clamp(0, t - 1)
            sim = (unit * unit[:, idx]).sum(-1)
            ok = real & real[:, idx] & inside[None]
            dist = (1.0 - sim).clamp_min(0.0)
            value = (torch.log(dist + LOG_EPS) - CENTRE) / SCALE
            values.append(value.masked_fill(~ok, 0.0))
            flags.append(ok.to(value.dtype))
    return torch.stack(values + flags, dim=-1).to(x.dtype)
