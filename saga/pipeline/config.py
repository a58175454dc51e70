"""What one extraction pass is asked to do (`ExtractConfig`), checked before the cache is touched, and the split
rule it appends under: a cache has one, so a pass asking for another is refused.

No torch, zarr or open_clip at import (the cache store and the encoders are imported where used): `saga extract`
checks its options here before the seconds those take (docs/performance.md "CLI start-up")."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from saga.cache.manifest import SPLITS
from saga.cache.provenance import DEFAULT_SHARD_ROWS, DEFAULT_SPLIT
from saga.errors import SagaError
from saga.pipeline.sampling import SamplingPolicy

DEFAULT_ENCODER = "ViT-SO400M-14-SigLIP-384"
DEFAULT_PRETRAINED = "webli"


@dataclass
class ExtractConfig:
    videos: Path
    out: Path
    labels: Path | None = None
    taxonomy: str | None = None
    encoder: str = DEFAULT_ENCODER
    pretrained: str | None = DEFAULT_PRETRAINED
    frames: int = 16
    sampling: str = "consecutive"
    windows: int = 1
    batch_size: int = 64
    workers: int | None = None  # decoding processes; None: the cores minus one (reader.decode_workers)
    device: str = "auto"
    split_seed: int | None = None  # None: the cache's own when appending, else 0
    split_fractions: dict[str, float] | None = None  # None: the cache's own when appending, else DEFAULT_SPLIT
    retry_failed: bool = False
    allow_outside: bool = False  # labels CSV paths outside the videos folder (absolute, ..) are refused unless set
    shard_rows: int = DEFAULT_SHARD_ROWS
    compile: bool = False  # torch.compile the encoder (worth it on a GPU for long runs)
    hang_limit: float | None = None  # seconds a video may decode in a worker; None: reader.HANG_LIMIT_S
    alone_limit: float | None = None  # then seconds alone in a child; None: reader.ALONE_LIMIT_S

    def check(self) -> None:
        """One-line errors for values that would fail (or be silently changed) after the cache is touched."""
        for name in ("frames", "windows", "batch_size", "shard_rows"):
            if isinstance(getattr(self, name), bool) or int(getattr(self, name)) < 1:
                raise SagaError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.workers is not None and int(self.workers) < 0:
            raise SagaError(f"--workers must be >= 0 (0: one child process decodes one video at a time), "
                            f"got {self.workers}")
        for name in ("hang_limit", "alone_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 < float(value) < float("inf")):
                raise SagaError(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {value}")
        SamplingPolicy(frames=self.frames, mode=self.sampling, windows=self.windows)  # --sampling, frames x windows


def resolve_split(cfg: ExtractConfig) -> ExtractConfig:
    """The split settings of this pass: as given, else the cache's own, else the defaults.

    A cache has one split rule: appending with another seed or other fractions would put the
    new videos in splits its recorded settings do not describe, so that is refused.
    """
    from saga.cache.store import FeatureCache  # zarr: imported when a pass runs, not when options are checked

    recorded = FeatureCache.open(cfg.out).attrs.get("split") if (cfg.out / "zarr.json").is_file() else None
    recorded = recorded or {}
    seed = cfg.split_seed if cfg.split_seed is not None else int(recorded.get("seed", 0))
    fractions = dict(cfg.split_fractions if cfg.split_fractions is not None
                     else recorded.get("fractions", DEFAULT_SPLIT))
    if recorded and not _same_split(recorded, seed, fractions):
        raise SagaError(f"{cfg.out}: refusing to append: the cache splits with seed {recorded.get('seed')} and "
                        f"fractions {_fractions_text(recorded.get('fractions', {}))}, this run asks for seed {seed} "
                        f"and {_fractions_text(fractions)}; leave out --split and --split-seed to keep the cache's, "
                        "or extract into a new --out folder")
    return replace(cfg, split_seed=seed, split_fractions=fractions)


def _same_split(recorded: dict[str, Any], seed: int, fractions: dict[str, float]) -> bool:
    theirs = recorded.get("fractions", {})
    return recorded.get("seed") == seed and set(theirs) == set(fractions) and all(
        abs(float(theirs[k]) - float(fractions[k])) < 1e-9 for k in fractions)


def _fractions_text(fractions: dict[str, float]) -> str:
    return ",".join(f"{float(fractions.get(s, 0)):g}" for s in SPLITS)
