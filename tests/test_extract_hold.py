"""An interrupt at any instant of an extraction pass: the part is committed, or left as a killed run leaves it,
and the process always ends (an interrupt just before the pass's try/finally left the writer thread waiting
for ever: `saga extract` printed its interrupted line and never exited, holding the cache's lock)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from saga.pipeline.encode_step import EncodeStep
from saga.pipeline.extract import ExtractSummary, run_pass
from saga.pipeline.interrupts import SignalHold
from saga.pipeline.writer import BackgroundWriter
from test_extract_steps import FRAMES, FakeEncoder, FakePart, record_of, video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a CI started in the background ignores it
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _run(writer: BackgroundWriter, hold: SignalHold | None = None) -> None:
    run_pass([video(0), video(1)], EncodeStep(FakeEncoder(), FRAMES, 1, FRAMES), writer, record_of,
             ExtractSummary(cache=Path("c")), total=2, hold=hold)


def _ended(writer: BackgroundWriter) -> bool:
    writer.join(timeout=10)
    if writer.is_alive():  # what the old code left: free it, or pytest never exits
        writer.jobs.put(None)
        return False
    return True


def test_an_interrupt_held_since_the_part_was_created_comes_inside_the_pass_which_commits_it(ctrl_c: None) -> None:
    hold = SignalHold()
    signal.raise_signal(signal.SIGINT)  # while the part is being created: noted, not raised
    part = FakePart()
    writer = BackgroundWriter(part)
    with pytest.raises(KeyboardInterrupt):
        _run(writer, hold)
    assert part.closed and _ended(writer)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the hold let go of it


class InterruptedStart(BackgroundWriter):
    """Ctrl-C arrives while `start()` waits for the new thread to run."""

    def start(self) -> None:
        super().start()
        signal.raise_signal(signal.SIGINT)


def test_an_interrupt_inside_the_writers_start_still_commits_and_ends_the_thread(ctrl_c: None) -> None:
    part = FakePart()
    writer = InterruptedStart(part)
    with pytest.raises(KeyboardInterrupt):
        _run(writer)
    assert part.closed and _ended(writer)


class NoThread(BackgroundWriter):
    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def test_a_writer_that_cannot_start_commits_the_part_in_the_caller() -> None:
    part = FakePart()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        _run(NoThread(part))
    assert part.closed


ORPHAN = """
from saga.pipeline.writer import BackgroundWriter
class Part:
    def add_failure(self, record): print("written", flush=True)
    def close(self): print("closed", flush=True)
writer = BackgroundWriter(Part())
writer.start()
writer.fail(None)
raise SystemExit(3)  # the main thread ends without finish(), as an interrupt before the pass's try made it
"""


def test_a_writer_whose_main_thread_ended_without_finish_lets_the_process_exit() -> None:
    """Left so, the writer used to wait on its queue for ever: the interpreter, which waits for it, never
    exited. It now ends on its own, without committing (the cache's lock may already be released)."""
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process did not exit: its writer thread waited for ever") from None
    assert proc.returncode == 3, err
    assert out.split() == ["written"]  # the queued job ran; the part was not committed behind the lock's back
