"""The video transformer θ over frozen per-frame features, its classification head and its layers."""

from saga.model.blocks import Block, MultiHeadSelfAttention, sinusoidal_encoding
from saga.model.transformer import ModelConfig, ModelOutput, VideoTransformer

__all__ = [
    "Block",
    "ModelConfig",
    "ModelOutput",
    "MultiHeadSelfAttention",
    "VideoTransformer",
    "sinusoidal_encoding",
]
