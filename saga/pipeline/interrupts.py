"""Holding Ctrl-C and SIGTERM over a span that must not be cut: a commit, or starting worker processes.

Why: Python raises KeyboardInterrupt (or the CLI's SIGTERM exception) wherever the main thread
happens to be. Inside `BackgroundWriter.finish()` that aborted the wait for the writer thread,
dropping the queued videos and the part's seal; inside `fork()` CPython swallowed it in an
at-fork callback ("Exception ignored in ... _releaseLock"), so the pass ran on as if nothing had
happened, and a just-forked worker that got it died before it could ignore it (reported as a
crash). Held signals are delivered, to the handler in place before, when the span ends.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


class SignalHold:
    """Note `signals` instead of acting on them from now until `release()`, which delivers the first one noted
    (to the handler in place before). A span that cannot be one `with` block uses it: an extraction's part is
    created (its manifest appears) before the pass's try/finally that commits it begins, and an interrupt in
    between left the part unsealed, or the writer thread waiting for ever (tests/test_extract_hold.py). Main
    thread only: elsewhere Python delivers no signal anyway. A process forked while held inherits the noting
    handler, harmless until it sets its own."""

    def __init__(self, signals: tuple[signal.Signals, ...] = HELD) -> None:
        self.noted: list[int] = []
        self.before: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            for sig in signals:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. nohup: stays ignored
                    self.before[sig] = signal.signal(sig, self._note)
        except BaseException:  # the other signal came while the first was being held
            self.release()
            raise

    def _note(self, signum: int, _frame: object) -> None:
        self.noted.append(signum)

    def release(self) -> None:
        """Restore the handlers and deliver the first signal noted; idempotent (a second call does nothing)."""
        before, self.before = self.before, {}
        for sig, handler in before.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if before and self.noted:
            signal.raise_signal(self.noted[0])


@contextmanager
def held_signals(signals: tuple[signal.Signals, ...] = HELD) -> Iterator[None]:
    """Hold `signals` over the block (`SignalHold`), then deliver the first one noted (also when the block
    raised: its exception is then the interrupt's context; it used to be dropped, so the command ended with
    that error, or none, instead of the interrupt)."""
    hold = SignalHold(signals)
    try:
        yield
    finally:
        hold.release()


def die_with_parent() -> None:
    """In a decoding child (a multiprocessing one): ask Linux to SIGKILL it when its parent dies. A child outliving a
    SIGKILLed `saga extract` kept the cache's lock (the flock's descriptor is inherited by fork), so the rerun
    was refused as "another saga extract is writing this cache", for as long as its decoder hung. A parent
    gone before the prctl is caught too; a no-op where prctl is missing. Linux signals when the *thread* that
    forked the child ends: the pass forks from its main thread, which lives as long as the pass."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)
