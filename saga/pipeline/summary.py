"""What one `saga extract` pass reports: counts, this pass's failures, and the time spent in each step."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable


@dataclass
class Timings:
    """Seconds per step: decode (summed over workers), encode, write, the pipeline and the whole call."""

    decode: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    pipeline: float = 0.0  # first decode -> last record committed; no setup
    wall: float = 0.0

    @classmethod
    def across_ranks(cls, parts: Iterable["Timings"]) -> "Timings":
        """Step times add up over ranks; the pipeline took as long as the slowest rank."""
        parts = list(parts)
        return cls(decode=sum(p.decode for p in parts), encode=sum(p.encode for p in parts),
                   write=sum(p.write for p in parts), pipeline=max((p.pipeline for p in parts), default=0.0))


@dataclass
class ExtractSummary:
    cache: Path
    found: int = 0
    skipped: int = 0
    redecoded: int = 0  # unchanged videos extracted again: decoded under an older decoder rule
    ok: int = 0
    failed: int = 0
    frames: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # of the videos found in this --videos
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason): its videos were not found
    failed_elsewhere: int = 0  # failed records of files deleted or moved away since: kept, not in `failures`
    timings: Timings = field(default_factory=Timings)

    @property
    def incomplete(self) -> bool:
        """Whether some video of this --videos has no features: it failed, or sits in a folder not listed."""
        return bool(self.failures or self.unreadable)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cache": str(self.cache)}

    def add_counts(self, other: "ExtractSummary") -> None:
        self.ok, self.failed, self.frames = self.ok + other.ok, self.failed + other.failed, self.frames + other.frames
