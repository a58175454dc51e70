"""Phase 1's steps one by one, with fakes: the reader, the encoder step, the writer and the runner."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import write_clip
from saga.cache.manifest import FAILED, VideoRecord
from saga.pipeline.encode_step import EncodeStep
from saga.pipeline.extract import ExtractSummary, Timings, run_pass
from saga.pipeline.reader import DecodedVideo, decode_one, decode_workers
from saga.pipeline.sampling import SamplingPolicy
from saga.pipeline.writer import BackgroundWriter

FRAMES, DIM = 4, 3


def video(index: int, error: str = "") -> DecodedVideo:
    if error:
        return DecodedVideo(index=index, seconds=0.5, error=error)
    pixels = torch.full((FRAMES, 1, 2, 2), float(index))
    return DecodedVideo(index=index, seconds=0.5, pixels=pixels, mask=np.ones((1, FRAMES), bool),
                        timestamps=np.arange(FRAMES, dtype=np.float32)[None], fps=10.0, n_frames=FRAMES, backend="fake")


class FakeEncoder:
    """Features = the pixel value repeated: which video a feature row came from stays visible."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(pixels))
        return pixels.flatten(1)[:, :1].repeat(1, DIM)


class FakePart:
    def __init__(self, fail_on: int | None = None) -> None:
        self.added: list[tuple[str, np.ndarray]] = []
        self.failed: list[VideoRecord] = []
        self.closed, self.fail_on = False, fail_on

    def add(self, record: VideoRecord, features: np.ndarray, mask: np.ndarray, timestamps: np.ndarray) -> None:
        if self.fail_on is not None and len(self.added) == self.fail_on:
            raise OSError(28, "No space left on device")
        self.added.append((record.path, features))

    def add_failure(self, record: VideoRecord) -> None:
        self.failed.append(record)

    def close(self) -> None:
        self.closed = True


def record_of(v: DecodedVideo) -> VideoRecord:
    return VideoRecord(path=f"v{v.index}.mp4", size=1, mtime_ns=1, status=FAILED if v.error else "ok", error=v.error,
                       generator="g", labels={}, split="train")


def test_encode_step_batches_frames_across_videos_and_keeps_their_order() -> None:
    encoder = FakeEncoder()
    step = EncodeStep(encoder, batch_size=3 * FRAMES, windows=1, frames=FRAMES)
    assert step.push(video(0)) == [] and step.push(video(1)) == []
    done = step.push(video(2)) + step.push(video(3)) + step.flush()
    assert [v.index for v, _ in done] == [0, 1, 2, 3]
    assert encoder.batches == [3 * FRAMES, FRAMES]  # one full batch, then the rest at the end
    for v, feats in done:
        assert feats.shape == (1, FRAMES, DIM) and feats.dtype == np.float16
        assert np.all(feats == v.index)
    assert step.flush() == [] and step.seconds > 0


def test_encode_step_splits_a_long_video_into_encoder_sized_chunks() -> None:
    encoder = FakeEncoder()
    step = EncodeStep(encoder, batch_size=3, windows=1, frames=FRAMES)
    (v, feats), = step.push(video(7))
    assert encoder.batches == [3, 1] and np.all(feats == 7)


def test_runner_counts_writes_in_order_and_records_failures() -> None:
    part = FakePart()
    summary = ExtractSummary(cache=Path("c"))
    seen: list[tuple[int, int, int]] = []
    videos = [video(0), video(1, "undecodable"), video(2), video(3)]
    run_pass(videos, EncodeStep(FakeEncoder(), 2 * FRAMES, 1, FRAMES), BackgroundWriter(part), record_of, summary,
             total=4, progress=lambda e: seen.append((e.done, e.total, e.data["frames"])))
    assert (summary.ok, summary.failed, summary.frames) == (3, 1, 3 * FRAMES)
    assert [p for p, _ in part.added] == ["v0.mp4", "v2.mp4", "v3.mp4"] and part.closed
    assert [r.error for r in part.failed] == ["undecodable"]
    assert seen[0] == (0, 4, 0) and seen[-1] == (4, 4, 3 * FRAMES)  # the first event marks the pass's start
    assert summary.timings.decode == pytest.approx(2.0) and summary.timings.pipeline > 0


def test_extraction_rates_count_from_the_pass_not_from_loading_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar opens before the encoder loads (a minute for SigLIP); its clock must start with the pass."""
    from rich.console import Console
    from rich.progress import Progress

    from saga.commands import common
    from saga.progress import ProgressEvent

    clock, bars = iter([0.0, 100.0, 100.0, 110.0]), []
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    quiet = Console(file=io.StringIO())
    monkeypatch.setattr(common, "progress_bar", lambda rates: bars.append(Progress(console=quiet)) or bars[-1])
    monkeypatch.setattr(common.err, "is_interactive", True)  # the bar, as on a terminal (a log gets plain lines)
    with common.extract_progress() as update:  # t = 0: the encoder starts loading
        update(ProgressEvent("videos", 0, 20, data={"frames": 0}))  # t = 100: the pass begins
        update(ProgressEvent("videos", 10, 20, data={"frames": 160}))  # t = 110
        assert bars[0].tasks[0].fields == {"vps": "1.0", "fps": "16"}


def test_runner_commits_what_was_written_when_interrupted() -> None:
    part = FakePart()

    def interrupted():  # Ctrl-C after two videos were decoded
        yield video(0)
        yield video(1)
        raise KeyboardInterrupt

    summary = ExtractSummary(cache=Path("c"))
    with pytest.raises(KeyboardInterrupt):
        run_pass(interrupted(), EncodeStep(FakeEncoder(), FRAMES, 1, FRAMES), BackgroundWriter(part), record_of,
                 summary, total=3)
    assert [p for p, _ in part.added] == ["v0.mp4", "v1.mp4"] and part.closed


def test_a_ctrl_c_while_the_workers_stop_still_commits_and_ends_the_writer() -> None:
    """Ctrl-C while the decoding workers stop (run_pass's `finally`) skipped the commit: the part was never
    closed, and the writer thread, waiting for more work, held the process after the interrupted line for ever."""
    part = FakePart()

    class Stopping:  # the decoded videos; the Ctrl-C comes while their workers are stopped
        def __iter__(self):  # noqa: ANN204
            return iter([video(0), video(1)])

        def close(self) -> None:
            raise KeyboardInterrupt

    writer = BackgroundWriter(part)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pass(Stopping(), EncodeStep(FakeEncoder(), FRAMES, 1, FRAMES), writer, record_of,
                     ExtractSummary(cache=Path("c")), total=2)
        assert [p for p, _ in part.added] == ["v0.mp4", "v1.mp4"] and part.closed
        writer.join(timeout=5)
        assert not writer.is_alive()
    finally:
        if writer.is_alive():  # what the old code left: free it, or pytest never exits
            writer.jobs.put(None)


def test_a_writer_error_surfaces_after_the_pass_and_stops_further_writes() -> None:
    part = FakePart(fail_on=1)
    with pytest.raises(OSError, match="No space"):
        run_pass([video(i) for i in range(4)], EncodeStep(FakeEncoder(), FRAMES, 1, FRAMES), BackgroundWriter(part),
                 record_of, ExtractSummary(cache=Path("c")), total=4)
    assert [p for p, _ in part.added] == ["v0.mp4"]


def test_timings_across_ranks_add_steps_and_keep_the_slowest_pipeline() -> None:
    t = Timings.across_ranks([Timings(decode=1, encode=2, write=3, pipeline=4), Timings(decode=1, encode=1, pipeline=6)])
    assert (t.decode, t.encode, t.write, t.pipeline) == (2, 3, 3, 6)


def test_reader_returns_a_bad_file_as_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    out = decode_one(bad, SamplingPolicy(frames=4), preprocess=lambda im: torch.zeros(3, 2, 2), index=5)
    assert not out.ok and out.index == 5 and out.error and out.pixels is None


def test_reader_decodes_and_preprocesses_a_clip(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "ok.mp4", n_frames=10, seed=0)
    out = decode_one(path, SamplingPolicy(frames=4), preprocess=lambda im: torch.zeros(3, 2, 2))
    assert out.ok and out.pixels.shape == (4, 3, 2, 2) and out.mask.shape == (1, 4) and out.n_frames == 10


def test_decode_workers_default_to_the_cores_minus_one_shared_among_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert decode_workers(None) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert decode_workers(None) == 3  # 4 cores per rank, one drives the encoder
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0}, raising=False)
    assert decode_workers(None) == 1  # never 0 by default: decoding overlaps encoding
    assert decode_workers(0) == 0 and decode_workers(5) == 5  # an explicit choice is kept
