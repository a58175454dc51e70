"""Reliability and hostile inputs (issue #9): each case of docs/reliability.md is proven here."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_video_tree, run_saga, write_clip
from saga.cache.manifest import VideoRecord, seeded_hash
from saga.errors import DecodeError, SagaError
from saga.pipeline.decode import probe_path
from saga.pipeline.inputs import discover, parse_labels
from saga.taxonomy import Taxonomy

SYNTH = Taxonomy.load("synth")


# --- escapes -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.mp4", "real/../../x.mp4", "/tmp/x.mp4"])
def test_labels_paths_outside_the_videos_folder_are_refused(tmp_path: Path, path: str) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_text(f"path,generator\nreal/real_0.mp4,real\n{path},real\n")
    with pytest.raises(SagaError, match=r"labels.csv:3: .*inside the videos folder.*--allow-outside-paths"):
        discover(videos, None, SYNTH)


def test_outside_paths_need_the_flag(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    outside = write_clip(tmp_path / "elsewhere.mp4", n_frames=6, seed=3)
    (videos / "labels.csv").write_text(f"path,generator\nreal/real_0.mp4,real\n{outside},real\n")
    items = discover(videos, None, SYNTH, allow_outside=True)
    assert sorted(i.rel for i in items) == sorted(["real/real_0.mp4", str(outside)])
    assert {i.absolute(videos) for i in items} == {videos / "real/real_0.mp4", outside}


# --- hangs ---------------------------------------------------------------------------------------------------

def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(DecodeError, match="not a regular file \\(a FIFO\\)"):
        probe_path(fifo)
    assert time.monotonic() - start < 5


def test_extract_and_predict_survive_a_fifo_and_a_non_utf8_name(tmp_path: Path, tiny_args: list[str]) -> None:
    """A FIFO becomes a failed record (no hang); a non-UTF-8 file name is extracted like any other."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    os.mkfifo(videos / "real" / "x.mp4")
    bad_name = os.fsencode(videos / "real") + b"/caf\xe9.mp4"
    shutil.copyfile(videos / "real" / "real_0.mp4", bad_name)
    proc = run_saga("extract", "--videos", str(videos), "--out", str(tmp_path / "c"), *tiny_args,
                    "--format", "json", timeout=240)
    assert proc.returncode == 1, proc.stderr  # 1: some files failed, all others extracted
    summary = json.loads(proc.stdout)
    assert summary["ok"] == 4 and summary["failed"] == 1
    assert "FIFO" in dict(map(tuple, summary["failures"]))["real/x.mp4"]
    proc = run_saga("extract", "--videos", str(videos), "--out", str(tmp_path / "c"), *tiny_args, timeout=240)
    assert proc.returncode == 1 and "--retry-failed" in proc.stderr and "Traceback" not in proc.stderr


def test_split_hash_accepts_non_utf8_names() -> None:
    name = os.fsdecode(b"caf\xe9.mp4")  # what os.walk gives for a Latin-1 name
    assert seeded_hash(0, name) != seeded_hash(0, "cafe.mp4")


# --- one-line errors -----------------------------------------------------------------------------------------

def test_labels_with_a_bom_are_read(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_bytes(b"\xef\xbb\xbfpath,generator\nreal/real_0.mp4,real\n")
    assert [i.rel for i in discover(videos, None, SYNTH)] == ["real/real_0.mp4"]


def test_labels_that_are_not_utf8_are_one_line(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_bytes(b"path,generator\nreal/caf\xe9.mp4,real\n")
    with pytest.raises(SagaError, match=r"labels.csv: not UTF-8 text .*save it as UTF-8"):
        discover(videos, None, SYNTH)


def test_header_only_labels_blame_the_labels_file(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_text("path,generator\n")
    with pytest.raises(SagaError, match=r"labels.csv: no rows below the header"):
        discover(videos, None, SYNTH)


def test_permission_failures_are_retried_once_readable(tmp_path: Path) -> None:
    from saga.pipeline.extract import _fixed_since

    video = write_clip(tmp_path / "a.mp4", n_frames=5, seed=1)
    rec = VideoRecord(path="a.mp4", size=1, mtime_ns=1, status="failed", generator="real", labels={}, split="train",
                      error=f"{video}: permission denied (file is not readable)")
    assert _fixed_since(rec, video)
    assert not _fixed_since(rec, tmp_path / "gone.mp4")
    rec.error = "empty file (0 bytes)"
    assert not _fixed_since(rec, video)


def test_device_names_are_checked_in_one_line() -> None:
    import torch

    from saga.commands.common import cli_device

    assert cli_device("auto") in ("cpu", "cuda", "cuda:0")
    with pytest.raises(SagaError, match="--device banana"):
        cli_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(SagaError, match="CUDA is not available"):
            cli_device("cuda")


def test_predict_on_a_folder_without_videos_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_saga("predict", str(tmp_path / "run"), str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no videos found" in proc.stderr and "Traceback" not in proc.stderr
