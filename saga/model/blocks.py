"""The transformer's generic layers: a fixed position code, self-attention that can return its
probabilities (T-Sigs read them), and the pre-norm block; `saga.model.transformer` builds θ from them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_encoding(length: int, dim: int) -> Tensor:
    """Fixed sin/cos position code (Vaswani et al.); fixed so it needs no data and extends to any T."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    half = (dim + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) * 2 / dim)
    pe = torch.zeros(length, 2 * half)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe[:, :dim]


class MultiHeadSelfAttention(nn.Module):
    """MHSA written out so the attention probabilities can be returned (T-Sigs need them).

    The fast path uses F.scaled_dot_product_attention; `return_attn=True` computes the
    same thing with an explicit softmax. Rows with no valid key (a video with no real
    frame) attend to nothing: output 0 and attention 0, never NaN.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.attn_dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, return_attn: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, dim); key_mask (B, T) bool, True = may be attended to."""
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        has_any: Tensor | None = None
        mask4: Tensor | None = None
        if key_mask is not None:
            has_any = key_mask.any(dim=1)  # (B,)
            # An all-False row would give softmax(-inf…) = NaN: let it attend anywhere, zero it below.
            safe = key_mask | ~has_any[:, None]
            mask4 = safe[:, None, None, :]  # (B, 1, 1, T) broadcast over heads and queries
        p_drop = self.attn_dropout if self.training else 0.0
        attn: Tensor | None = None
        if return_attn:
            scores = (q @ k.transpose(-2, -1)) * (self.head_dim**-0.5)
            if mask4 is not None:
                scores = scores.masked_fill(~mask4, float("-inf"))
            attn = scores.softmax(dim=-1)
            out = F.dropout(attn, p_drop, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4, dropout_p=p_drop)
        if has_any is not None:
            keep = has_any.to(out.dtype)[:, None, None, None]
            out = out * keep
            if attn is not None:
                attn = attn * keep
        out = out.transpose(1, 2).reshape(b, t, dim)
        return self.proj(out), attn


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, key_mask: Tensor | None, return_attn: bool
    ) -> tuple[Tensor, Tensor | None]:
        a, attn = self.attn(self.norm1(x), key_mask, return_attn)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, attn
