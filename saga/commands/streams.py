"""stdout and stderr whose reader may go away: `saga train 2>&1 | head -4`, a pager quit, a closed ssh pipe.

A write to a pipe nobody reads fails with EPIPE (Python ignores SIGPIPE, so it is a BrokenPipeError). rich
turned it into a silent exit 1 from inside the progress callback, so a long training stopped at its next
epoch line (extraction at its summary, reporting "some videos failed" by its exit status), and a plain
write ended in a traceback. saga's commands keep their work in a cache or run folder, and their output
only reports it: `guard_streams` (called by `saga.cli.main`) points a stream whose reader has gone at
/dev/null and the command carries on to the end, its exit status unchanged. `saga predict`, whose output
is its whole product, asks `reader_gone` after each video and stops.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TextIO


class GuardedStream:
    """A text stream (sys.stdout, sys.stderr) that drops its output once its reader has gone, quietly (as `git log
    | head` does: the reader ended it on purpose)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream, self.gone = stream, False
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer...: the stream's own
        return getattr(self._stream, name)

    def _drop(self) -> None:
        """Point the descriptor at /dev/null (C code and this process's later children write there too), and
        let the buffered text that could not be written go there."""
        with self._lock:
            if self.gone:
                return
            self.gone = True
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        try:
            self._stream.flush()
        except OSError:
            pass


def guard_streams() -> None:
    """Wrap sys.stdout and sys.stderr (once) for the CLI process; rich's consoles write to whatever they are."""
    if not isinstance(sys.stdout, GuardedStream) and sys.stdout is not None:
        sys.stdout = GuardedStream(sys.stdout)
    if not isinstance(sys.stderr, GuardedStream) and sys.stderr is not None:
        sys.stderr = GuardedStream(sys.stderr)


def reader_gone() -> bool:
    """Whether stdout's reader has gone (always False outside the CLI, where stdout is not guarded)."""
    return isinstance(sys.stdout, GuardedStream) and sys.stdout.gone


class ReaderGone(Exception):
    """Raised by a command whose output is its whole product once stdout's reader has gone: the CLI stops
    quietly with 141 (128 + SIGPIPE, as `yes | head` leaves `yes`)."""
