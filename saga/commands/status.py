"""The one-line status of a command's setup steps (kind STATUS: scanning the videos folder, loading the encoder,
checking the cache), shown on stderr until its counted pass begins: before, a user saw nothing for minutes on a
large dataset and took it for a hang.

On a terminal it is a rich spinner line, rewritten in place and gone when the pass's bar appears (a quick run
leaves nothing). In a log (stderr not a terminal) `saga.progress.StatusLog` writes plain lines, none for a quick
step; a timer thread asks it every POLL_S, since a step such as loading the encoder reports nothing while it runs.
Nothing goes to stdout: `--format json` stays one JSON object.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Collection, Iterator

from rich.console import Console
from rich.status import Status
from rich.text import Text

from saga.errors import printable
from saga.progress import STATUS, ProgressEvent, ProgressFn, StatusLog, status_text

POLL_S = 0.5  # how often the timer asks a log's StatusLog whether a line is due


class Spinner:
    """The terminal's status line: a transient rich Status, started with the first step, stopped by `end`."""

    def __init__(self, name: str, console: Console) -> None:
        self.name, self.console = name, console
        self.status: Status | None = None

    def __call__(self, event: ProgressEvent) -> None:
        text = Text(printable(f"{self.name}: {status_text(event)}"))
        if self.status is None:
            self.status = Status(text, console=self.console)
            self.status.start()
        else:
            self.status.update(text)

    def end(self) -> None:
        if self.status is not None:
            self.status.stop()  # transient: the line is erased, the pass's bar takes its place
            self.status = None

    stop = end


class Lines:
    """The log's status lines: a `StatusLog`, asked by a timer thread while a step runs (events come from the
    command's thread, polls from the timer: one lock)."""

    def __init__(self, name: str, console: Console) -> None:
        self.log = StatusLog(name, lambda line: console.print(line, markup=False, highlight=False))
        self.lock = threading.Lock()
        self.halt: threading.Event | None = None
        self.timer: threading.Thread | None = None

    def __call__(self, event: ProgressEvent) -> None:
        with self.lock:
            self.log(event)
        if self.timer is None:
            self.halt = threading.Event()
            self.timer = threading.Thread(target=self._poll, args=(self.halt,), name="saga-status", daemon=True)
            self.timer.start()

    def _poll(self, halt: threading.Event) -> None:
        while not halt.wait(POLL_S):
            with self.lock:
                self.log.poll()

    def end(self) -> None:
        self._halt()
        with self.lock:
            self.log.end()

    def stop(self) -> None:
        self._halt()
        with self.lock:
            self.log.stop()

    def _halt(self) -> None:
        """The timer ends before the pass begins, so no decoding worker is forked while it prints."""
        if self.timer is not None and self.halt is not None:
            self.halt.set()
            self.timer.join()
        self.timer = self.halt = None


@contextmanager
def with_status(name: str, console: Console, interactive: bool, counts: ProgressFn,
                ends: Collection[str] | None = None) -> Iterator[ProgressFn]:
    """A progress callback showing STATUS events as the status line named `name` and handing every other event
    (the pass's counts, training's lines) to `counts`; the status ends with the first event of a kind in `ends`
    (None: of any other kind), or with the block. Training passes its `labelled` line while its setup goes on."""
    display = Spinner(name, console) if interactive else Lines(name, console)
    counting = False

    def update(event: ProgressEvent) -> None:
        nonlocal counting
        if event.kind == STATUS:
            if not counting:  # a step reported once the pass's bar is up would be a second live display
                display(event)
            return
        if not counting and (ends is None or event.kind in ends):
            display.end()
            counting = True
        counts(event)

    try:
        yield update
    except BaseException:
        display.stop()  # an error or Ctrl-C: the step did not finish, its line says no "done"
        raise
    display.end()
