"""One progress-event type for every long operation: extraction, `saga synth`, training, the ablation.

Producers call `progress(ProgressEvent(...))`; the CLI draws bars from `done`/`total` or prints a
line; tests and benchmarks read `kind` and `data`. Kinds: "videos" (extraction, the benchmark
generator; data: frames), "labelled" (stage 2: the labelled videos per class, fewest and most),
"start", "step", "epoch", "done", "reused" (training; data: the epoch's metrics line or the run's
summary), "cell" (one finished ablation cell).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class ProgressEvent:
    kind: str
    done: int | None = None  # units finished (videos, steps in the epoch, epochs, cells)
    total: int | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]
