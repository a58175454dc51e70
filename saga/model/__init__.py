"""The video transformer θ over frozen per-frame features, and its classification head."""

from saga.model.transformer import (
    Block,
    ModelConfig,
    ModelOutput,
    MultiHeadSelfAttention,
    VideoTransformer,
    sinusoidal_encoding,
)

__all__ = [
    "Block",
    "ModelConfig",
    "ModelOutput",
    "MultiHeadSelfAttention",
    "VideoTransformer",
    "sinusoidal_encoding",
]
