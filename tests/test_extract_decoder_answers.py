"""The answer of the child that decodes a suspect video alone is someone else's data (a crafted video may have
taken the child over): a malformed one, one too large, a child that hangs or one that lies about the file fails
that video alone, in one line, and the pass goes on. (The crash itself and the suspects files:
test_extract_decoder_crash.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import alarm_guard, make_video_tree
from saga.cache.manifest import file_fingerprint
from saga.cache.store import FeatureCache
from saga.pipeline import reader
from saga.pipeline.extract import extract
from test_extract import config
from test_extract_decoder_crash import _suspects_file

# --- the child's answer is someone else's data: a malformed one fails that video alone ----------------------------

def _answer(**change: object) -> tuple[bytes, bytes]:
    """A well-formed answer for todo index 3, its JSON fields changed (None: removed)."""
    import torch

    good = reader.DecodedVideo(index=3, seconds=0.5, pixels=torch.rand(4, 3, 2, 2), mask=np.ones((1, 4), bool),
                               timestamps=np.zeros((1, 4)), fps=25.0, n_frames=40, backend="pyav", fingerprint=(9, 8))
    scalars, arrays = reader._to_bytes(good)
    fields = json.loads(scalars)
    fields.update(change)
    return json.dumps({k: v for k, v in fields.items() if v is not None}).encode(), arrays


def _wrong_arrays(**arrays: object) -> bytes:
    from safetensors.torch import save

    return save({k: v for k, v in arrays.items()})


MALFORMED = {
    "not JSON": (b"{torn", _answer()[1]),
    "not an object": (b"[1, 2]", _answer()[1]),
    "JSON nested too deeply": (b"[" * 100_000 + b"]" * 100_000, _answer()[1]),
    "unknown field": _answer(evil=1),
    "missing field": _answer(backend=None),
    "index a string": _answer(index="3"),
    "another video's index": _answer(index=0),
    "fps a string": _answer(fps="fast"),
    "error a list": _answer(error=["x"]),
    "fingerprint of three": _answer(fingerprint=[1, 2, 3]),
    "fingerprint not numbers": _answer(fingerprint="ab"),
    "arrays not safetensors": (_answer()[0], b"\x00" * 64),
}


def _arrays_cases() -> dict[str, tuple[bytes, bytes]]:
    import torch

    mask, ts = torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4)
    return {"no pixels": (_answer()[0], _wrong_arrays(mask=mask, timestamps=ts)),
            "a row too many (shifts the batch)": (_answer()[0], _wrong_arrays(pixels=torch.rand(5, 3, 2, 2), mask=mask,
                                                                             timestamps=ts)),
            "frames of another size": (_answer()[0], _wrong_arrays(pixels=torch.rand(4, 3, 5, 5), mask=mask,
                                                                  timestamps=ts)),
            "a mask of other windows": (_answer()[0], _wrong_arrays(pixels=torch.rand(4, 3, 2, 2),
                                                                   mask=mask.reshape(2, 2), timestamps=ts.reshape(2, 2))),
            "timestamps NaN": (_answer()[0], _wrong_arrays(pixels=torch.rand(4, 3, 2, 2), mask=mask,
                                                          timestamps=torch.full((1, 4), float("nan"))))}


MALFORMED.update(_arrays_cases())
MALFORMED.update({  # of the right type, but no decoded video's: recorded as they came, they reached the manifest
    "n_frames beyond int64 (every later read of the cache raised OverflowError)": _answer(n_frames=10 ** 30),
    "n_frames negative": _answer(n_frames=-5),
    "fps NaN (not JSON in the manifest)": _answer(fps=float("nan")),
    "fps infinite": _answer(fps=float("inf")),
    "seconds NaN": _answer(seconds=float("nan")),
    "a backend of no decoder": _answer(backend="evil\x1b]0;pwned\x07"),
    "an error of two lines": _answer(error="bad\nfile"),
})
MALFORMED["more than 1 MiB of JSON"] = (b" " * (1 << 20) + _answer()[0], _answer()[1])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_answer_of_the_lone_decoder_fails_that_video_in_one_line(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent trusted the JSON the child sent (`DecodedVideo(**fields)`): a child a crafted video took over
    raised TypeError/ValueError/JSONDecodeError in the parent, which stopped the pass with a traceback."""
    scalars, arrays = MALFORMED[case]

    def send_into(send, *args: object) -> None:  # noqa: ANN001
        try:
            send.send_bytes(scalars)
            send.send_bytes(arrays)
        except OSError:  # the parent stopped listening (the answer too long)
            pass
        send.close()

    monkeypatch.setattr(reader, "_decode_into", send_into)  # the forked child runs it
    from saga.pipeline.sampling import SamplingPolicy
    import torch

    video = reader.decode_alone(tmp_path / "x.mp4", SamplingPolicy(frames=4), lambda im: torch.zeros(3, 2, 2), 3)
    assert not video.ok and video.index == 3 and video.pixels is None
    assert video.error.startswith("the decoder's process handed back malformed data") and "\n" not in video.error


def test_a_well_formed_answer_still_passes_the_checks() -> None:
    from saga.pipeline.sampling import SamplingPolicy
    import torch

    expect = lambda: reader._expected(SamplingPolicy(frames=4), lambda im: torch.zeros(3, 2, 2))  # noqa: E731
    video = reader._from_bytes(*_answer(), index=3, expect=expect)
    assert video.ok and video.index == 3 and video.fingerprint == (9, 8) and video.pixels.shape == (4, 3, 2, 2)


def test_a_malformed_answer_fails_one_video_and_the_pass_goes_on(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    for name in ("new.mp4", "new2.mp4"):
        shutil.copy(videos / "real" / "real_0.mp4", videos / "real" / name)
    _suspects_file(cfg.out, 0, ["real/new.mp4"])  # decoded alone first, in a child process

    def send_into(send, *args: object) -> None:  # noqa: ANN001
        send.send_bytes(b'{"index": "x"}')
        send.send_bytes(_answer()[1])
        send.close()

    monkeypatch.setattr(reader, "_decode_into", send_into)
    summary = extract(cfg)
    assert [path for path, _ in summary.failures] == ["real/new.mp4"]
    assert "malformed data" in summary.failures[0][1] and summary.ok == 1  # new2.mp4, decoded as usual


# --- the child's answer is read within the parent's own bounds: size, time, and the parent's own stat ------------

@pytest.fixture
def hang_guard() -> Iterator[None]:
    """The old decode_alone waited for ever on a silent child: fail after 20 s instead."""
    with alarm_guard(20, "decode_alone did not return"):
        yield


def _alone(tmp_path: Path, target: object, monkeypatch: pytest.MonkeyPatch, path: Path | None = None):  # noqa: ANN202
    import torch
    from saga.pipeline.sampling import SamplingPolicy

    monkeypatch.setattr(reader, "_decode_into", target)  # the forked child runs it
    return reader.decode_alone(path or tmp_path / "x.mp4", SamplingPolicy(frames=4), lambda im: torch.zeros(3, 2, 2),
                               3)


def _claims(size: int) -> bytes:
    """multiprocessing's message header (what send_bytes writes first) for a message of `size` bytes."""
    import struct

    return struct.pack("!i", -1) + struct.pack("!Q", size) if size > 0x7FFFFFFF else struct.pack("!i", size)


@pytest.mark.parametrize("claimed", [100 << 20, 1 << 62])
def test_an_array_message_larger_than_a_decoded_video_is_refused_before_it_is_read(
        claimed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hang_guard: object) -> None:
    """The arrays were read with `recv_bytes()`, no limit: a child a crafted video took over made the parent
    allocate whatever it claimed (1 << 62 bytes: MemoryError, which stopped the extraction with a traceback;
    100 MiB: read until the child hung up). A decoded video's arrays take W x T x (one preprocessed frame + mask +
    time) bytes: more is refused from its header, before any of it is read."""
    import os as os_

    def send_into(send, *args: object) -> None:  # noqa: ANN001
        send.send_bytes(_answer()[0])
        os_.write(send.fileno(), _claims(claimed) + b"\x00" * 1024)
        send.close()

    video = _alone(tmp_path, send_into, monkeypatch)
    assert not video.ok and video.index == 3 and video.pixels is None and "\n" not in video.error
    assert video.error.startswith("the decoder's process handed back malformed data (a message of ")


def test_a_genuine_answer_fits_the_bound(tmp_path: Path) -> None:
    import torch
    from saga.pipeline.sampling import SamplingPolicy

    windows, frame, dtype = reader._expected(SamplingPolicy(frames=4), lambda im: torch.zeros(3, 2, 2))
    assert len(_answer()[1]) <= reader.arrays_limit(windows, frame, dtype) < 100 << 10  # 4 frames of 3x2x2 + slack


def _silent(send, *args: object) -> None:  # noqa: ANN001
    import time

    time.sleep(3600)


def _half_a_message(send, *args: object) -> None:  # noqa: ANN001
    import time

    send.send_bytes(_answer()[0])
    os.write(send.fileno(), _claims(1000) + b"\x00" * 10)  # then nothing more, the pipe held open
    time.sleep(3600)


def _answers_but_never_exits(send, *args: object) -> None:  # noqa: ANN001
    import time

    send.send_bytes(b'{"index": 3, "seconds": 0, "error": "bad", "fps": 0, "n_frames": 0, "backend": "", '
                    b'"fingerprint": null}')
    send.send_bytes(_wrong_arrays())
    send.close()
    time.sleep(3600)


@pytest.mark.parametrize("target", [_silent, _half_a_message, _answers_but_never_exits])
def test_a_lone_decoder_that_hangs_fails_that_video_within_the_limit(
        target: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hang_guard: object) -> None:
    """decode_alone waited for ever on a child that never answered (a crafted video looping the decoder, or a
    child it took over), stopped half-way through a message, or never exited: the whole extraction hung. Now
    the child has ALONE_LIMIT_S to answer and exit; past it, it is killed and that video fails in one line."""
    import multiprocessing

    monkeypatch.setattr(reader, "ALONE_LIMIT_S", 0.5, raising=False)
    video = _alone(tmp_path, target, monkeypatch)
    assert not video.ok and video.index == 3 and video.pixels is None and "\n" not in video.error
    assert video.error.startswith("the decoder's process gave no answer within 0.5 s (decoding it alone)")
    assert not multiprocessing.active_children()  # killed, not left behind


def test_the_record_carries_the_parents_stat_not_the_childs_claim(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The video's record took its size and mtime (what resume, moved-video matching and prune key on) from the
    child's `fingerprint`, checked only for its type: a child a crafted video took over chose them (here (9, 8),
    so the record never matched its file). The parent stats the file itself, before the child starts."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    shutil.copy(videos / "real" / "real_0.mp4", videos / "real" / "new.mp4")
    _suspects_file(cfg.out, 0, ["real/new.mp4"])  # decoded alone first, in a child process
    decode = reader.decode_one

    def lying(send, path, policy, preprocess, index) -> None:  # noqa: ANN001
        video = decode(path, policy, preprocess, index)
        video.fingerprint = (9, 8)
        for message in reader._to_bytes(video):
            send.send_bytes(message)
        send.close()

    monkeypatch.setattr(reader, "_decode_into", lying)
    assert extract(cfg).ok == 1
    record = {r.path: r for r in FeatureCache.open(cfg.out).records()}["real/new.mp4"]
    assert record.ok and record.fingerprint() == file_fingerprint(videos / "real" / "new.mp4")
    assert (again := extract(cfg)).skipped == again.found  # current: not extracted again


def test_a_child_claiming_an_impossible_frame_count_cannot_break_the_cache(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`n_frames` was checked for its type alone: 10**30 was written to the manifest, and every read of the cache
    after it (this pass's own summary, every later command) stopped with an OverflowError traceback."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    shutil.copy(videos / "real" / "real_0.mp4", videos / "real" / "new.mp4")
    _suspects_file(cfg.out, 0, ["real/new.mp4"])
    decode = reader.decode_one

    def lying(send, path, policy, preprocess, index) -> None:  # noqa: ANN001
        video = decode(path, policy, preprocess, index)
        video.n_frames = 10 ** 30
        for message in reader._to_bytes(video):
            send.send_bytes(message)
        send.close()

    monkeypatch.setattr(reader, "_decode_into", lying)
    summary = extract(cfg)
    assert [path for path, _ in summary.failures] == ["real/new.mp4"] and "malformed data (n_frames" in (
        summary.failures[0][1])
    assert FeatureCache.open(cfg.out).check_structure()[0] == []
