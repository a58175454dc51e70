"""One progress-event type for every long operation: extraction, `saga synth`, training, the ablation.

Producers call `progress(ProgressEvent(...))`; the CLI draws bars from `done`/`total` on a terminal and
writes `ProgressLog` lines elsewhere (a log), or prints a line; tests and benchmarks read `kind` and
`data`. A command of several long passes (`saga robustness`, `extract --augment`, `saga demo`) takes a
`Passes`: it opens one labelled display per pass. Kinds: "videos" (extraction, the benchmark generator,
re-encoding copies; data: frames, failed), "labelled" (stage 2:
the labelled videos per class, fewest and most), "start", "step", "epoch", "done", "reused" (training;
data: the epoch's metrics line or the run's summary), "cell" (one finished ablation cell), "status" (a setup step
before the counted pass, e.g. `scanning videos/`, `loading encoder X`: `message` names it, `done` counts what it has
gone through, if anything; `StepCount` reports one, `StatusLog` writes them into a log).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

from saga.errors import shown


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
        if self.finished or event.done is None or event.kind == STATUS:
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


STATUS = "status"  # the kind of a setup step's events (see `StepCount`)
PASS = "pass"  # a multi-pass command's pass begins (`message`: its name): its setup status ends
REPORT_EVERY = 256  # a counting setup step reports every this many items: not one event per file
STATUS_DELAY_S = 10.0  # a log gets a setup step's line once it lasted this long (read at each event: tests shrink it)


def report_step(progress: ProgressFn | None, message: str) -> None:
    """A setup step without a count began (loading the encoder): displays say so until the next step or the pass."""
    if progress is not None:
        progress(ProgressEvent(STATUS, message=message))


def report_encoder(progress: ProgressFn | None, name: str, pretrained: str | None) -> None:
    """`loading encoder ViT-SO400M-14-SigLIP-384 (webli)`: SigLIP-So400m takes a minute or more on a CPU
    (`saga extract`, `predict`, `robustness` say it alike)."""
    report_step(progress, f"loading encoder {shown(name)}" + (f" ({shown(pretrained)})" if pretrained else ""))


class StepCount:
    """The items a setup step goes through (files scanned, videos compared with the cache), reported every
    REPORT_EVERY of them and at `end()`: a scan of 100,000 files on a network drive takes minutes and, shown
    nothing, looked like a hang. Without a callback it only counts (a library call, `saga predict`'s walk)."""

    def __init__(self, progress: ProgressFn | None, message: str, unit: str = "files",
                 total: int | None = None) -> None:
        self.progress, self.message, self.unit, self.total = progress, message, unit, total
        self.done, self._next = 0, REPORT_EVERY
        self._report()

    def add(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None and self.done >= self._next:
            self._next = self.done + REPORT_EVERY
            self._report()

    def end(self) -> None:
        """The final count (what a log's line for a long step ends with)."""
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(STATUS, self.done, self.total, self.message, {"unit": self.unit}))


def status_text(event: ProgressEvent) -> str:
    """`scanning videos/: 12,345 files`, `checking cache/: 3 part(s): 200/1,000 videos`, `loading encoder X...`."""
    if event.done is None:
        return f"{event.message}..."
    count = f"{event.done:,}" + (f"/{event.total:,}" if event.total is not None else "")
    return f"{event.message}: {count} {event.data.get('unit', '')}".rstrip()


class StatusLog:
    """Setup steps (kind STATUS) as plain lines for a log, like `ProgressLog` for the pass: a step that has lasted
    STATUS_DELAY_S gets a line, then one at most every LOG_INTERVAL_S while its count moves, and, once the next
    step or the pass begins, one with its final count and duration if it lasted LOG_INTERVAL_S. A quick run's log
    gets none of them, so a setup error stays one line. `poll()` asks again without an event: a step that reports
    nothing while it runs (the encoder loading) gets its line from a caller's timer. `clock` is injectable for tests."""

    def __init__(self, name: str, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.write, self.clock = name, write, clock
        self.event: ProgressEvent | None = None  # the current step's newest event
        self.began = 0.0  # when the current step began
        self.last: tuple[float, int | None] | None = None  # clock and count of its last line; None: no line yet

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind != STATUS:
            return
        if self.event is None or event.message != self.event.message:
            self.end()
            self.began = self.clock()
        self.event = event
        self.poll()

    def poll(self) -> None:
        """Write the current step's line if it is due."""
        if self.event is None:
            return
        now = self.clock()
        if self.last is None:
            due = now - self.began >= STATUS_DELAY_S
        else:
            due = now - self.last[0] >= LOG_INTERVAL_S and self.event.done != self.last[1]
        if due:
            self.write(f"{self.name}: {status_text(self.event)}")
            self.last = (now, self.event.done)

    def end(self) -> None:
        """The current step is over (the next one or the pass began): its total and duration, if it was long."""
        seconds = self.clock() - self.began
        if self.event is not None and self.last is not None and seconds >= LOG_INTERVAL_S:
            text = status_text(self.event).removesuffix("...")
            self.write(f"{self.name}: {text}, done in {_duration(seconds)}")
        self.event, self.last = None, None

    def stop(self) -> None:
        """The command ended before the pass (an error): no final line (the step did not finish)."""
        self.event, self.last = None, None
