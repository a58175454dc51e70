"""The video transformer θ over frozen per-frame features, its classification head and its layers."""

from saga.model.blocks import Block, MultiHeadSelfAttention, sinusoidal_encoding
from saga.model.transformer import MODEL_LIMITS, ModelConfig, ModelOutput, VideoTransformer, allocate

__all__ = [
    "Block",
    "MODEL_LIMITS",
    "ModelConfig",
    "ModelOutput",
    "MultiHeadSelfAttention",
    "VideoTransformer",
    "allocate",
    "sinusoidal_encoding",
]
