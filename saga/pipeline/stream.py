"""The stream of decoded videos a pass reads (`reader.read_videos`): DataLoader workers ahead of the encoder,
or (`--workers 0`) one decoding child (`saga.pipeline.solo`), both under the pass's time limits.

Why limits per video: a crafted or broken file can loop its decoder for ever, and a multi-hour extraction
used to wait on it. A video still decoding `hang` seconds after it started (workers note when, in shared
memory) is taken as hung: its worker is killed, it is decoded alone, side by side with any other stuck one,
for at most `alone` seconds (a genuinely slow video is extracted there), and the pass goes on. The wait
for the next video is polled, not one timeout per wait: each video that arrived out of order while one was
stuck restarted the DataLoader's clock.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from torch._utils import ExceptionWrapper
from torch.utils.data import DataLoader
from torch.utils.data import _utils as loader_utils

from saga.pipeline import reader
from saga.pipeline.inputs import VideoInput
from saga.pipeline.interrupts import held_signals
from saga.pipeline.reader import DecodedVideo, DecoderCrash, VideoDataset, took, worker_died
from saga.pipeline.sampling import SamplingPolicy
from saga.pipeline.solo import Solo

POLLS_PER_LIMIT = 4  # the wait for the next video is checked this often per hang limit (at most every MAX_POLL_S)
MAX_POLL_S = 30.0
EXIT_GRACE_S = 5.0  # how long a worker's exit may lag the EOFError / ConnectionError of its cut-off result


@dataclass(frozen=True)
class DecodeLimits:
    """Seconds one video may take: in a worker (`hang`), then alone in a child (`alone`); None: the defaults,
    `reader.HANG_LIMIT_S` and `reader.ALONE_LIMIT_S`."""

    hang: float | None = None
    alone: float | None = None

    def hang_s(self) -> float:
        return reader.HANG_LIMIT_S if self.hang is None else float(self.hang)

    def alone_s(self) -> float:
        return reader.ALONE_LIMIT_S if self.alone is None else float(self.alone)


class VideoStream:
    """An iterator of `DecodedVideo`s over the todo list; `close()` stops the workers, `crash(exc)` turns a dead
    worker into a `DecoderCrash` (None for any other exception: `Workers` tells them apart)."""

    def __init__(self, items: list[VideoInput], root: Path, policy: SamplingPolicy, preprocess: Callable,
                 workers: int, pin_memory: bool, suspects: list[int], limits: DecodeLimits) -> None:
        self.items, self.root, self.policy, self.preprocess = items, root, policy, preprocess
        self.workers, self.suspects, self.limits = workers, suspects, limits
        self.busy = multiprocessing.RawArray("q", [-1] * max(workers, 1))
        self.started = multiprocessing.RawArray("d", [0.0] * max(workers, 1))
        self.pin_memory, alone = pin_memory, set(suspects)
        self.rest = [i for i in range(len(items)) if i not in alone]
        self.done = 0
        self.watch: Workers | None = None  # the running pool's workers (None: no pool running)
        preload_decoders()
        self._videos = self._generate()

    def __iter__(self) -> "VideoStream":
        return self

    def __next__(self) -> DecodedVideo:
        try:
            video = next(self._videos)
        except Exception as exc:  # StopIteration included: not a crash, re-raised
            crash = self.crash(exc)
            if crash is None:
                raise
            self.close()
            raise crash from None
        self.done += 1
        return video

    def _path(self, index: int) -> Path:
        return self.items[index].absolute(self.root)

    def _generate(self) -> Iterator[DecodedVideo]:
        for index in self.suspects:
            yield reader.decode_alone(self._path(index), self.policy, self.preprocess, index, self.limits.alone_s())
        if not self.workers:
            yield from self._solo(self.rest)
            return
        rest = self.rest
        while rest:
            rest = yield from self._pooled(rest)

    def _solo(self, order: list[int]) -> Iterator[DecodedVideo]:
        """`--workers 0`: the videos decoded one at a time in one child under the hang limit; one it hung or died
        on is decoded alone, under the alone limit, as a worker's stuck video is (a second crash fails it)."""
        solo = Solo(self.policy, self.preprocess)
        try:
            for index in order:
                video, why = solo.decode(self._path(index), index, self.limits.hang_s())
                yield video if video is not None else self._alone([index], [index], died=why == "died")[0]
        finally:
            solo.close()

    def _alone(self, indices: list[int], overdue: list[int], died: bool = False) -> list[DecodedVideo]:
        """`indices` decoded alone, side by side (N stuck videos take one alone limit, not N); the `overdue` ones
        named in a warning first: the pass may be quiet for that long."""
        for index in overdue:
            what = ("its decoder's process died" if died else
                    f"still decoding after {took(self.limits.hang_s())} (--hang-limit)")
            warnings.warn(f"{self._path(index)}: {what}: decoding it alone, for at most "
                          f"{took(self.limits.alone_s())} (--alone-limit), before it is recorded as failed",
                          stacklevel=2)
        lones = [reader.start_alone(self._path(i), self.policy, self.preprocess, i, self.limits.alone_s())
                 for i in indices]
        return [reader.finish_alone(lone) for lone in lones]

    def _loader(self, order: list[int]) -> Any:
        dataset = VideoDataset(self.items, self.root, self.policy, self.preprocess, order, self.busy, self.started)
        poll = min(self.limits.hang_s() / POLLS_PER_LIMIT, MAX_POLL_S)
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.workers,
                                 collate_fn=reader._identity, worker_init_fn=reader._worker_init,
                                 pin_memory=self.pin_memory, prefetch_factor=4, timeout=poll)

    def _pooled(self, order: list[int]) -> Iterator[DecodedVideo]:
        """The videos of `order` from worker processes; after a hang, the stuck ones decoded alone, and (returned)
        those still to decode, in order (the videos the workers had decoded past the hang come again)."""
        pool, watch, given, finished, stuck, overdue = None, None, 0, False, [], []
        self.watch = None
        try:
            with held_signals():  # a Ctrl-C during fork() was lost, or killed a worker before _worker_init
                pool = iter(self._loader(order))
            self.watch = watch = Workers(pool)
            polls, waiting = Polls(pool), time.monotonic()
            while not overdue:
                try:
                    video = polls.next(pool)
                except StopIteration:
                    finished = True
                    return []
                except RuntimeError as exc:  # the DataLoader's timeout (a poll), or a real error
                    if not polls.is_poll(exc):
                        raise
                    overdue = self._overdue(order[given], time.monotonic() - waiting)
                    continue
                given, waiting = given + 1, time.monotonic()
                yield video
        except Exception as exc:  # judged here, while the workers run: below saga stops them itself
            crash = self.crash(exc)
            if crash is None:
                if watch is not None and watch.relayed:
                    exc.add_note(RELAYED)
                raise
            raise crash from None
        finally:
            _unwatch(pool)  # out of torch's SIGCHLD check first: the workers saga stops are no crash
            if watch is not None:
                watch.stop()
            stuck = sorted({*overdue, *(i for i in self.busy if i >= 0)})  # killed with it: their work lost
            if not finished:  # a hang, a crash, Ctrl-C: a worker stuck in C code outlived its SIGTERM (and the exit)
                _kill_busy(pool, self.busy)
            shutdown = getattr(pool, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self.watch = None  # the pool is gone: no later error is its workers' (one above is judged by `stop`)
        self.busy[:] = [-1] * len(self.busy)  # the killed workers' notes
        yield from self._alone(stuck, overdue)
        return [i for i in order[given:] if i not in stuck]

    def _overdue(self, awaited: int, waited: float) -> list[int]:
        """The videos decoding for longer than the hang limit, each timed from its own start (and the one
        awaited, when no worker started it and the wait itself passed the limit)."""
        limit, now = self.limits.hang_s(), time.monotonic()
        found = {index for index, since in zip(self.busy, self.started) if index >= 0 and now - since >= limit}
        if waited >= limit and awaited not in set(self.busy):
            found.add(awaited)
        return sorted(found)

    def close(self) -> None:
        """Stop the decoding workers (a dead one can then no longer interrupt the main thread)."""
        try:
            self._videos.close()
        except Exception as exc:  # the SIGCHLD check firing for the dead worker during the shutdown
            if not self.died(exc):
                raise

    def in_flight(self) -> list[str]:
        """The videos the workers were decoding (none noted: no worker had started one)."""
        return [self.items[i].rel for i in sorted(set(self.busy)) if i >= 0] if self.workers else []

    def died(self, exc: BaseException) -> bool:
        """Whether `exc` comes of a dead decoding worker (`Workers.died`); with no pool running none can die."""
        return bool(self.workers) and self.watch is not None and self.watch.died(exc)

    def crash(self, exc: BaseException) -> DecoderCrash | None:
        if isinstance(exc, DecoderCrash):  # already judged in `_pooled`, while its workers ran
            return exc
        if not self.died(exc):
            return None
        how = self.watch.how() or (  # no worker seen gone (torch's words decided): say what torch said
            reader._first_line(exc).strip().rstrip(".") if isinstance(exc, RuntimeError) else
            f"it hung up while handing over a video: {type(exc).__name__}")
        suspects = self.in_flight()
        if not suspects:
            near = self.items[min(self.done, len(self.items) - 1)].rel
            return DecoderCrash(f"{self.root}: a decoding worker process died ({how}) at or after {near}; the "
                                "videos written so far are kept: rerun to resume, with fewer --workers if memory is "
                                "short", [])
        named = suspects[0] if len(suspects) == 1 else f"one of {', '.join(suspects[:5])}" + (
            f" (+{len(suspects) - 5} more)" if len(suspects) > 5 else "")
        return DecoderCrash(f"{self.root}: a decoding worker process died ({how}) while decoding {named}; the "
                            "videos written so far are kept: rerun the same command to resume: it first decodes "
                            f"{'that video' if len(suspects) == 1 else 'each of them'} alone and records one that "
                            "crashes again as failed (if memory is short, use fewer --workers)", suspects)


class Polls:
    """Tells the DataLoader's timeout, a poll (no video yet, every worker alive), from a real error.

    torch raises both as RuntimeError, and only its text ("DataLoader timed out after N seconds") told them
    apart: a rewording in another torch release would have made every poll a crash. Structurally, that
    timeout is what `_get_data` raises right after the iterator's `_try_get_data` answered (False, None), which
    it does only when the queue stayed empty and no worker had died (a dead worker or a full file table raise
    there instead; a worker's own error comes as data). So this iterator's `_try_get_data` is wrapped and its
    answer noted: a RuntimeError that follows an empty answer, within the same `next`, is a poll, whatever its
    text. Were that private method gone in a later torch, the text is matched as before, which fails loudly (a
    poll taken for a crash), never quietly; tests/test_stream_poll.py checks the hook holds on the pinned torch.
    """

    def __init__(self, pool: Any) -> None:
        self.empty = False  # the last `_try_get_data` of this `next` found no video
        self.hooked = _hook(pool, "_try_get_data", self._noted)

    def _noted(self, call: Callable[[], Any], _: tuple) -> Any:
        self.empty = False
        got = call()
        self.empty = isinstance(got, tuple) and len(got) == 2 and got[0] is False
        return got

    def next(self, pool: Any) -> Any:
        """`next(pool)`, the note cleared first (a video taken from the iterator's reorder buffer, or a worker's
        error re-raised there, calls no `_try_get_data`)."""
        self.empty = False
        return next(pool)

    def is_poll(self, exc: RuntimeError) -> bool:
        return self.empty if self.hooked else "DataLoader timed out" in str(exc)


RELAYED = ("saga: raised in a decoding worker (or torch's pin-memory thread) that is still running, so it is no "
           "decoder crash; decode_one turns any error of decoding or preprocessing a video into that video's "
           "failure, so this one came from outside it: a bug in saga or its environment, not in the video")


class Workers:
    """Tells a dead decoding worker from any other error by the pool's own processes, not by torch's words.

    torch reports a death as a RuntimeError ("DataLoader worker (pid N) is killed by signal ...") from its SIGCHLD
    handler, wherever the main thread is, or from its queue check; but it re-raises a live worker's own exception
    as "Caught RuntimeError in DataLoader worker process N ...", often of the same type. The text match took that
    for a crash (a healthy video became a suspect, the real error was hidden), and a rewording in another torch
    would have turned a crash into a traceback. So: a worker died when one of the iterator's `_workers` has
    exited (`stop()` notes them before saga stops the others itself). An exception `_process_data` re-raised from
    a worker's answer (hooked as `Polls` hooks `_try_get_data`) is that live worker's own. An EOFError or
    ConnectionError no worker raised is a result cut off by its worker's death when a worker exits within
    EXIT_GRACE_S (its descriptors close just before it exits). A torch without `_workers`: the text decides
    (`reader.worker_died`), as before.
    """

    def __init__(self, pool: Any) -> None:
        self.processes: list[Any] | None = getattr(pool, "_workers", None)
        self.relayed = False  # the last answer the iterator processed was a worker's exception
        self.gone: list[Any] | None = None  # the workers that had exited when saga began stopping them
        _hook(pool, "_process_data", self._noted)

    def _noted(self, call: Callable[[], Any], args: tuple) -> Any:
        self.relayed = bool(args) and isinstance(args[0], ExceptionWrapper)
        return call()

    def stop(self) -> None:
        """Note the workers that exited on their own: saga is about to stop the others."""
        if self.gone is None:
            self.gone = self.exited()

    def exited(self) -> list[Any]:
        if self.gone is not None:
            return self.gone
        return [w for w in self.processes or () if not w.is_alive()]

    def died(self, exc: BaseException) -> bool:
        if self.processes is None:
            return not self.relayed and worker_died(exc)
        if self.exited():
            return True
        return not self.relayed and isinstance(exc, (EOFError, ConnectionError)) and self._exits_soon()

    def _exits_soon(self) -> bool:
        if self.gone is None and self.processes:
            try:
                multiprocessing.connection.wait([w.sentinel for w in self.processes], EXIT_GRACE_S)
            except Exception:  # torch's SIGCHLD check raising here: a worker died meanwhile
                pass
        return bool(self.exited())

    def how(self) -> str:
        """The dead workers' ends ("pid 4242: killed by SIGSEGV"); "" when none is known."""
        return ", ".join(f"pid {w.pid}: {reader._exit_text(w.exitcode)}" for w in self.exited())


def _hook(pool: Any, name: str, note: Callable[[Callable[[], Any], tuple], Any]) -> bool:
    """The iterator's own method `name` (its class's) routed through `note(call, args)`, `call()` running it; False
    where the class has none. A weak reference: the iterator must not keep itself alive through its attribute."""
    method = getattr(type(pool), name, None)
    if not callable(method):
        return False
    ref = weakref.ref(pool)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        return note(lambda: method(ref(), *args, **kwargs), args)

    setattr(pool, name, hooked)
    return True


def preload_decoders() -> None:
    """Import the decoders here, once: each worker or child forked after it has them (importing PyAV and decord
    took each new process a tenth of a second, seconds on a busy machine, counted against its hang limit).
    The pass calls it before its part is opened: a Ctrl-C during the import then leaves no part unsealed."""
    for name in ("av", "decord"):
        try:
            importlib.import_module(name)
        except ImportError:  # decord is optional: PyAV decodes alone
            pass


def _unwatch(pool: Any) -> None:
    """The pool's workers out of torch's SIGCHLD check (its shutdown does it too, later): those saga stops itself
    must not read as a crash."""
    if getattr(pool, "_worker_pids_set", False):
        loader_utils.signal_handling._remove_worker_pids(id(pool))
        pool._worker_pids_set = False


def _kill_busy(pool: Any, busy: Any) -> None:
    """SIGKILL the workers still decoding a video (noted in `busy`, which is kept for `in_flight`): a decoder stuck
    in C code never runs the SIGTERM handler torch's shutdown relies on. They leave torch's SIGCHLD check first
    (`_unwatch`), or their death would read as a crash; each is reaped (no zombie)."""
    _unwatch(pool)
    for slot, worker in enumerate(getattr(pool, "_workers", [])):
        if busy[slot] >= 0 and worker.is_alive():
            worker.kill()
            worker.join()
