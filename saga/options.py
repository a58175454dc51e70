"""Names of training options that several layers read: the CLI checks them, run folders record them.

Why here, in the base layer, free of torch: `saga.runs.files` (which imports torch) decides what a run's
config.json holds with them, and the option classes (saga.train.options) check a command's flags with them
before any heavy import, so a bad value is one line at once (docs/performance.md "CLI start-up").
"""

from __future__ import annotations

# The triplet term's options: a run with loss = "ce" never reads them, so `saga attribute` refuses them
# given with it, and they are left out of such a run's config.json and identity (`recorded_options`).
HNM_OPTIONS = ("lam", "margin", "mine_every", "positive")

# Options still accepted (older TOMLs and run folders hold them) that nothing reads any more: the CLI warns when
# one is given and keeps its default; they are no part of a run's identity (`identity_options`).
IGNORED_OPTIONS = ("mine_k",)

# The options that shape θ (from scratch only: a stage-2 run on a stage-1 θ keeps that θ's, and records them).
MODEL_OPTIONS = ("d_model", "depth", "heads", "mlp_ratio", "dropout", "pool", "inputs", "temporal_lags",
                 "content_dim", "content_drop", "content_basis", "basis_method", "video_stats")

# What θ sees (saga.model.transformer): frame features and temporal tokens, or one of them.
INPUTS = ("content", "temporal", "both")
