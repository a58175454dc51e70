"""One progress-event type for every long operation: extraction, `saga synth`, training, the ablation.

Producers call `progress(ProgressEvent(...))`; the CLI draws bars from `done`/`total` on a terminal and
writes `ProgressLog` lines elsewhere (a log), or prints a line; tests and benchmarks read `kind` and
`data`. A command of several long passes (`saga robustness`, `extract --augment`, `saga demo`) takes a
`Passes`: it opens one labelled display per pass. Kinds: "videos" (extraction, the benchmark generator,
re-encoding copies; data: frames, failed), "labelled" (stage 2:
the labelled videos per class, fewest and most), "start", "step", "epoch", "done", "reused" (training;
data: the epoch's metrics line or the run's summary), "cell" (one finished ablation cell).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol


@dataclass(frozen=True)
class ProgressEvent:
    kind: str
    done: int | None = None  # units finished (videos, steps in the epoch, epochs, cells)
    total: int | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]


class Passes(Protocol):
    """Opens the display of one pass of a multi-pass command (`crf28 re-encode`, then `crf28 extract`): each pass
    counts from 0 to its own total, so one display for all would jump back at every pass and not say which
    one is running. `frames`: the pass reports frames (an extraction), for the rates its display shows."""

    def __call__(self, label: str, frames: bool = False) -> AbstractContextManager[ProgressFn]: ...


@contextmanager
def silent(label: str, frames: bool = False) -> Iterator[ProgressFn]:
    """The `Passes` of a caller that shows no progress (the library default, tests)."""
    yield lambda event: None


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


LOG_INTERVAL_S = 30.0  # a log gets a progress line at most this often, besides the pass's start, first item and end


class ProgressLog:
    """Counting events ("videos") as plain one-line records, for a log: where stderr is not a terminal
    (`2> extract.log`, nohup, a batch job, CI) a rich bar draws nothing until the run ends, so a
    multi-hour extraction could not be told from a hang. A line at the start, at the first item, then
    at most every LOG_INTERVAL_S seconds (read at each event: tests shrink it), and at the end.

    `write` prints one line (flushed); `clock` is injectable for tests. Rates count this run's items only
    (a resumed run starts from the items already done)."""

    def __init__(self, name: str, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
                 unit: str = "videos") -> None:
        self.name, self.unit, self.write, self.clock = name, unit, write, clock
        self.start: tuple[float, int, int] | None = None  # clock, items and frames at the first event
        self.last: tuple[float, int] | None = None  # clock and items of the last line written
        self.pending: ProgressEvent | None = None  # the newest event not written yet
        self.finished = False

    def __call__(self, event: ProgressEvent) -> None:
        if self.finished or event.done is None:
            return
        now = self.clock()
        if self.start is None:
            self.start = (now, event.done, event.data.get("frames", 0))
        end = event.total is not None and event.done >= event.total
        if end or self.last is None or self._due(now, event.done):
            self._emit(event, now, end)
        else:
            self.pending = event
        self.finished = end

    def close(self) -> None:
        """The pass stopped before its end (an error, Ctrl-C): its last count, as a bar shows its last state."""
        if self.pending is not None and not self.finished:
            self._emit(self.pending, self.clock(), False)

    def _due(self, now: float, done: int) -> bool:
        assert self.start is not None and self.last is not None
        first_item = self.last[1] == self.start[1] and done > self.start[1]
        return first_item or now - self.last[0] >= LOG_INTERVAL_S

    def _emit(self, event: ProgressEvent, now: float, end: bool) -> None:
        self.write(self.line(event, now, end))
        self.last, self.pending = (now, event.done or 0), None

    def line(self, event: ProgressEvent, now: float, end: bool) -> str:
        """`extract: 120/1100 videos (3 failed), 2.1 videos/s, 17 frames/s, about 8 min left`."""
        assert self.start is not None
        done = event.done or 0
        count = f"{done}/{event.total}" if event.total is not None else str(done)
        parts = [f"{self.name}: {count} {self.unit}" + (f" ({event.data['failed']} failed)"
                                                         if event.data.get("failed") else "")]
        seconds, items = now - self.start[0], done - self.start[1]
        if items > 0 and seconds > 0:
            parts.append(_rate(items / seconds, self.unit))
            if "frames" in event.data:
                parts.append(f"{(event.data['frames'] - self.start[2]) / seconds:.0f} frames/s")
            if end:
                parts.append(f"done in {_duration(seconds)}")
            elif event.total is not None:
                parts.append(f"about {_duration((event.total - done) * seconds / items)} left")
        return ", ".join(parts)


def _rate(per_second: float, unit: str) -> str:
    """Per second, or per minute or hour when slower (0.0 videos/s says nothing)."""
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:.1f} {unit}/min"
    return f"{per_second * 3600:.1f} {unit}/h"


def _duration(seconds: float) -> str:
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    if seconds < 599.5:
        whole = round(seconds)
        return f"{whole // 60} min {whole % 60} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
