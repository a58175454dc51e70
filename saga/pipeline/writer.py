"""Phase 1, step 3: write features and failures to the cache off the main thread.

`PartWriter` calls run in order on one background thread, so writing whole shards
overlaps encoding; `finish()` commits the part (on Ctrl-C too) and raises the first
error a job hit, if any (then nothing more is written: the records already committed
by earlier shards stay valid).

`finish()` holds SIGINT and SIGTERM until the commit is done and then delivers them: an
interrupt while the main thread waits for the writer (a slow disk, a network file system)
used to abort the wait, and the writer thread, a daemon, died with the process, taking the
queued videos and the part's seal with it.

The thread is not a daemon, so the interpreter waits for it at exit; should the main thread end without
`finish()` (an interrupt in the few instructions before a hold begins), the thread sees it within
`ORPHAN_POLL_S` and ends without committing, leaving the part as a killed run would (unsealed, its committed
shards valid, the rest redone by the rerun): it used to wait on its queue for ever, so the process never
exited and kept the cache's lock.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import numpy as np

from saga.cache.manifest import VideoRecord
from saga.cache.store import PartWriter
from saga.pipeline.interrupts import held_signals

ORPHAN_POLL_S = 0.5  # how often an idle writer checks that the main thread still runs


class BackgroundWriter(threading.Thread):
    """One ordered job queue in front of a `PartWriter`."""

    def __init__(self, part: PartWriter, depth: int = 64) -> None:
        super().__init__(daemon=False)  # the interpreter waits for it: queued videos are committed, not dropped
        self.part = part
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self.seconds = 0.0
        self.error: BaseException | None = None

    def begin(self) -> None:
        """`start()`, then note it, both with signals held: an interrupt inside `start()` (it waits for the new
        thread) left a running thread that nothing would ever finish."""
        with held_signals():
            self.start()

    def write(self, record: VideoRecord, features: np.ndarray, mask: np.ndarray, timestamps: np.ndarray) -> None:
        self.jobs.put(lambda: self.part.add(record, features, mask, timestamps))

    def fail(self, record: VideoRecord) -> None:
        self.jobs.put(lambda: self.part.add_failure(record))

    def run(self) -> None:
        while (job := self._next_job()) is not None:
            if self.error is None:
                start = time.perf_counter()
                try:
                    job()
                except BaseException as exc:  # surfaced by finish()
                    self.error = exc
                self.seconds += time.perf_counter() - start

    def _next_job(self) -> Callable[[], None] | None:
        """The next job; None at the end, or when the main thread ended without `finish()` (nothing will come:
        the part is left as a killed run leaves it, since the cache's lock may already be released)."""
        while True:
            try:
                return self.jobs.get(timeout=ORPHAN_POLL_S)
            except queue.Empty:
                if not threading.main_thread().is_alive():
                    return None

    def finish(self) -> None:
        """Commit the part, wait for the thread, and raise the first error a job hit.

        Ctrl-C and SIGTERM arriving meanwhile are delivered once the part is committed and sealed."""
        with held_signals():
            if self.ident is None:  # never started (no thread to be had): commit here
                self.part.close()
                return
            self.jobs.put(self.part.close)
            self.jobs.put(None)
            self.join()
        if self.error is not None:
            raise self.error

