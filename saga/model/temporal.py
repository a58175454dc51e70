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


def stats_dim(lags: int) -> int:
    """Per measure (cosine distance, difference norm): mean/std/min/max at each lag + lag-1 autocorrelations."""
    return 2 * 5 * lags


def _masked_moments(seq: Tensor, valid: Tensor) -> Tensor:
    """mean, std, min, max over the last axis where valid; zeros where nothing is valid. (B, L) -> (B, 4)."""
    v = valid.to(seq.dtype)
    cnt = v.sum(-1).clamp_min(1.0)
    mean = (seq * v).sum(-1) / cnt
    std = ((((seq - mean[:, None]) ** 2) * v).sum(-1) / cnt).sqrt()
    lo = seq.masked_fill(~valid, float("inf")).amin(-1)
    hi = seq.masked_fill(~valid, float("-inf")).amax(-1)
    out = torch.stack([mean, std, lo, hi], dim=-1)
    return torch.where(valid.any(-1, keepdim=True), out, torch.zeros_like(out))


def _autocorrelation(seq: Tensor, valid: Tensor, shifts: int) -> Tensor:
    """Autocorrelation of seq (B, L) at shifts 1..shifts over pairs of valid entries; 0 when undefined."""
    v = valid.to(seq.dtype)
    mean = (seq * v).sum(-1, keepdim=True) / v.sum(-1, keepdim=True).clamp_min(1.0)
    c = (seq - mean) * v
    denom = (c * c).sum(-1)
    out = []
    for s in range(1, shifts + 1):
        num = (c[:, :-s] * c[:, s:]).sum(-1) if s < seq.shape[1] else torch.zeros_like(denom)
        out.append(torch.where(denom > 1e-12, num / denom.clamp_min(1e-12), torch.zeros_like(num)))
    return torch.stack(out, dim=-1)


def sequence_statistics(x: Tensor, mask: Tensor | None, lags: int) -> Tensor:
    """x (B, T, D), mask (B, T) -> (B, stats_dim(lags)): shift-invariant statistics of the whole window.

    The per-frame tokens say where in the window something happens; these say what happens
    whatever the phase (a frame held every 3rd frame, a loop of 5), which is what a periodic
    mark with a random start is, and what a few labels can pin down (docs/ablation.md).
    `saga probe`'s pooled statistics are these (in float64) plus lag-1 quantiles.
    """
    b, t, _ = x.shape
    xf = x if x.dtype == torch.float64 else x.float()  # the probe computes in float64, θ in float32
    unit = F.normalize(xf, dim=-1)
    real = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask.to(torch.bool)
    parts: dict[str, list[Tensor]] = {"cos": [], "norm": []}
    first: dict[str, tuple[Tensor, Tensor]] = {}
    for k in range(1, lags + 1):
        if k >= t:
            for key in parts:
                parts[key].append(xf.new_zeros(b, 4))
            continue
        valid = real[:, :-k] & real[:, k:]
        seqs = {"cos": (1.0 - (unit[:, :-k] * unit[:, k:]).sum(-1)).clamp_min(0.0),
                "norm": (xf[:, k:] - xf[:, :-k]).norm(dim=-1)}
        for key, seq in seqs.items():
            parts[key].append(_masked_moments(seq, valid))
            if k == 1:
                first[key] = (seq, valid)
    out = []
    for key in ("cos", "norm"):
        acf = _autocorrelation(*first[key], lags) if key in first else xf.new_zeros(b, lags)
        out += parts[key] + [acf]
    return torch.cat(out, dim=-1).to(x.dtype)
