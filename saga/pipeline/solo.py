"""`--workers 0`: one decoding child process, fed one video at a time, so that a decoder that hangs or crashes
on a file stops that child, never the pass.

Why not decode in this process: a decoder that hung there blocked the run for ever, and one that crashed
(a segfault) ended it. Why one long-lived child and not one per video: forking the encoder's process for
each video cost tens of milliseconds a video (more than decoding a short clip). The child's answers are read
as `reader.decode_alone`'s are: data (JSON + safetensors) within size limits and a deadline, checked field by
field; they come over a pipe, not shared memory, so a small /dev/shm (docker) is no obstacle.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Callable

import torch

from saga.cache.manifest import file_fingerprint
from saga.errors import clipped
from saga.pipeline import child_answer, reader
from saga.pipeline.child_answer import SCALARS_LIMIT, MalformedAnswer, NoAnswer, arrays_limit
from saga.pipeline.interrupts import die_with_parent, held_signals
from saga.pipeline.reader import DecodedVideo, malformed_text
from saga.pipeline.sampling import SamplingPolicy


class Solo:
    """The child decoding this pass's videos one at a time; `decode` says when a video must be decoded alone
    (the child hung past the limit, or died, on it: it is stopped, and the next video gets a fresh one)."""

    def __init__(self, policy: SamplingPolicy, preprocess: Callable) -> None:
        self.policy, self.preprocess = policy, preprocess
        self.expect = reader._expected(policy, preprocess)
        self.child: BaseProcess | None = None
        self.requests: Connection | None = None
        self.answers: Connection | None = None

    def decode(self, path: Path, index: int, limit: float) -> tuple[DecodedVideo | None, str]:
        """(the video, "") or (None, why it must be decoded alone: "hung" or "died")."""
        fingerprint = file_fingerprint(path)
        try:
            self._child().send_bytes(json.dumps({"path": str(path), "index": index}).encode())
            deadline = time.monotonic() + limit
            data = child_answer.receive(self.answers, (SCALARS_LIMIT, arrays_limit(*self.expect)), deadline)
        except (EOFError, OSError):  # it died on this video (a crash, the OOM killer)
            self.close()
            return None, "died"
        except NoAnswer:
            self.close()
            return None, "hung"
        except MalformedAnswer as exc:  # refused from its length: the rest of it unread
            self.close()
            return DecodedVideo(index=index, fingerprint=fingerprint, error=clipped(malformed_text(str(exc)))), ""
        try:
            video = reader._from_bytes(*data, index=index, expect=lambda: self.expect)
        except MalformedAnswer as exc:  # what it sends next cannot be trusted either: a fresh child
            self.close()
            return DecodedVideo(index=index, fingerprint=fingerprint, error=clipped(malformed_text(str(exc)))), ""
        video.fingerprint = fingerprint  # the parent's own stat, as decode_alone's
        return video, ""

    def _child(self) -> Connection:
        """The requests end of a live child, started if there is none."""
        if self.child is not None and self.child.is_alive():
            return self.requests
        self.close()
        context = multiprocessing.get_context()
        requests_in, self.requests = context.Pipe(duplex=False)
        self.answers, answers_out = context.Pipe(duplex=False)
        self.child = context.Process(target=_serve, daemon=True, args=(
            requests_in, answers_out, (self.requests, self.answers), self.policy, self.preprocess))
        with held_signals():
            self.child.start()
        requests_in.close()
        answers_out.close()
        return self.requests

    def close(self) -> None:
        """Stop the child (killed: it may be stuck in C code) and close its pipes."""
        for conn in (self.requests, self.answers):
            if conn is not None:
                conn.close()
        self.requests = self.answers = None
        if self.child is not None:
            child_answer.end(self.child, 0.0)
            self.child = None


def _serve(requests: Connection, answers: Connection, parents: tuple[Connection, ...], policy: SamplingPolicy,
           preprocess: Callable) -> None:
    """The child: decode each video the parent names until it hangs up (or dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    die_with_parent()
    for end in parents:  # the parent's ends, inherited: holding them, it never saw the parent hang up
        end.close()
    torch.set_num_threads(1)
    while True:
        try:
            ask = json.loads(requests.recv_bytes())
        except (EOFError, OSError):
            return
        video = reader.decode_one(Path(ask["path"]), policy, preprocess, ask["index"])
        try:
            for message in reader._to_bytes(video):
                answers.send_bytes(message)
        except OSError:  # the parent stopped listening
            return
