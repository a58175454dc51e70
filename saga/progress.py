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


def describe(event: ProgressEvent) -> str:
    """A one-line human summary of a training progress event (the CLI may print it or feed it to rich)."""
    d = event.data
    if event.kind == "epoch":
        val = d.get("val_macro_accuracy")
        parts = [f"epoch {event.done}/{event.total}", f"loss {d['loss']:.4f}",
                 f"lr {d['lr']:.2e}", "val macro " + ("n/a" if val is None else f"{100 * val:.2f}%")]
        if d.get("hnm") is not None:
            parts.insert(2, f"hnm {d['hnm']:.4f} (active {d['active_triplets']}/{d['triplets']}, "
                            f"mined {d['mined_triplets']})")
        return "  ".join(parts) + ("  *best" if d.get("best") else "") + f"  {d['seconds']:.1f}s"
    if event.kind == "step":
        return f"epoch {d['epoch']}  step {event.done}/~{event.total}  loss {d['loss']:.4f}"
    if event.kind == "labelled":  # the message says what it is
        return event.message
    return f"{event.kind}: {event.message}"
