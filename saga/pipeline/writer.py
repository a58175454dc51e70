"""Phase 1, step 3: write features and failures to the cache off the main thread.

`PartWriter` calls run in order on one background thread, so writing whole shards
overlaps encoding; `finish()` commits the part (on Ctrl-C too) and raises the first
error a job hit, if any (then nothing more is written: the records already committed
by earlier shards stay valid).

`finish()` holds SIGINT and SIGTERM until the commit is done and then delivers them: an
interrupt while the main thread waits for the writer (a slow disk, a network file system)
used to abort the wait, and the writer thread, a daemon, died with the process, taking the
queued videos and the part's seal with it.
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


class BackgroundWriter(threading.Thread):
    """One ordered job queue in front of a `PartWriter`."""

    def __init__(self, part: PartWriter, depth: int = 64) -> None:
        super().__init__(daemon=False)  # the interpreter waits for it: queued videos are committed, not dropped
        self.part = part
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self.seconds = 0.0
        self.error: BaseException | None = None

    def write(self, record: VideoRecord, features: np.ndarray, mask: np.ndarray, timestamps: np.ndarray) -> None:
        self.jobs.put(lambda: self.part.add(record, features, mask, timestamps))

    def fail(self, record: VideoRecord) -> None:
        self.jobs.put(lambda: self.part.add_failure(record))

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                start = time.perf_counter()
                try:
                    job()
                except BaseException as exc:  # surfaced by finish()
                    self.error = exc
                self.seconds += time.perf_counter() - start

    def finish(self) -> None:
        """Commit the part, wait for the thread, and raise the first error a job hit.

        Ctrl-C and SIGTERM arriving meanwhile are delivered once the part is committed and sealed."""
        with held_signals():
            self.jobs.put(self.part.close)
            self.jobs.put(None)
            self.join()
        if self.error is not None:
            raise self.error

