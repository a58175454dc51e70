"""saga: source attribution of AI-generated videos (SAGA, CVPR 2026).

Phase 1 (`saga.pipeline`) decodes and encodes every video once into a Zarr feature
cache (`saga.cache`); phase 2 (`saga.model`, `saga.train`) trains the video
transformer from that cache; `saga.explain` turns runs into metrics, T-Sigs,
t-SNE maps and a report.
"""

__version__ = "0.1.0"
