"""Phase 1 fixes: a file that crashes its decoder (a segfaulting worker), decoding it alone in a child that
hands back data, not pickles, and the suspects files a crash leaves for the next pass, whatever world size.
(The lone child's answer checked as someone else's data: test_extract_decoder_answers.)"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import make_video_tree
from saga.cache.manifest import file_fingerprint
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.pipeline import reader
from saga.pipeline.extract import extract
from saga.pipeline.resume import SUSPECTS
from test_extract import config

# --- 3. a file that crashes its decoder --------------------------------------------------------------------------

def test_a_file_that_crashes_the_decoder_is_recorded_as_failed_on_the_next_pass(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segfault in a worker stopped every pass with 0 records committed (and often a multi-page EOFError /
    RuntimeError traceback): the run never completed."""
    videos = make_video_tree(tmp_path / "v", per_class=2)
    bad = "syn-svd/syn-svd_1.mp4"
    decode = reader.decode_video

    def segfault_on_bad(path: Path, *args: object, **kwargs: object):  # noqa: ANN202
        if str(path).endswith(bad):
            faulthandler.disable()  # pytest's: no traceback of this process on the terminal
            os.kill(os.getpid(), signal.SIGSEGV)  # in the worker (or the lone child): it dies
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(reader, "decode_video", segfault_on_bad)  # the forked processes inherit it
    cfg = config(videos, tmp_path / "c", tiny_weights, workers=1)
    with pytest.raises(SagaError, match=f"a decoding worker process died .* while decoding {bad}; the videos "
                                        "written so far are kept") as caught:
        extract(cfg)
    assert "\n" not in str(caught.value)
    assert (tmp_path / "c" / SUSPECTS.format(rank=0)).is_file()
    summary = extract(cfg)
    assert [path for path, _ in summary.failures] == [bad] and "decoder crashed on this file" in summary.failures[0][1]
    assert summary.ok + summary.skipped == 5 and not list((tmp_path / "c").glob(".decode-suspects*"))
    assert extract(cfg).skipped == 6 and FeatureCache.open(tmp_path / "c").check_structure()[0] == []


def test_decode_alone_returns_the_decoded_video(tmp_path: Path) -> None:
    from saga.pipeline.sampling import SamplingPolicy

    videos = make_video_tree(tmp_path / "v", per_class=1, generators=("real",))
    path = videos / "real" / "real_0.mp4"
    import torch

    video = reader.decode_alone(path, SamplingPolicy(frames=4), lambda im: torch.zeros(3, 2, 2), index=3)
    assert video.ok and video.index == 3 and video.pixels.shape == (4, 3, 2, 2)
    assert video.fingerprint == file_fingerprint(path)
    direct = reader.decode_one(path, SamplingPolicy(frames=4), lambda im: torch.zeros(3, 2, 2), index=3)
    np.testing.assert_array_equal(video.mask, direct.mask)
    np.testing.assert_array_equal(video.timestamps, direct.timestamps)
    assert (video.n_frames, video.fps, video.backend) == (direct.n_frames, direct.fps, direct.backend)


def test_decode_alone_hands_over_data_not_pickles() -> None:
    """The child's answer is JSON + safetensors: a child a crafted video took over cannot make the parent
    run code (unpickling its bytes could)."""
    import torch

    video = reader.DecodedVideo(index=2, seconds=0.5, pixels=torch.rand(4, 3, 2, 2), mask=np.ones((1, 4), bool),
                                timestamps=np.arange(4.0)[None], fps=25.0, n_frames=40, backend="pyav",
                                fingerprint=(9, 8))
    scalars, arrays = reader._to_bytes(video)
    assert scalars.startswith(b"{") and not hasattr(reader, "pickle")
    back = reader._from_bytes(scalars, arrays, index=2)
    assert torch.equal(back.pixels, video.pixels) and back.mask.dtype == bool and back.fingerprint == (9, 8)
    failed = reader._from_bytes(*reader._to_bytes(reader.DecodedVideo(index=1, error="bad file")), index=1)
    assert not failed.ok and failed.pixels is None and failed.mask is None


def _suspects_file(out: Path, rank: int, paths: list[str]) -> Path:
    file = out / SUSPECTS.format(rank=rank)
    file.write_text(json.dumps({"paths": paths, "why": "an earlier crash"}))
    return file


def test_a_pass_with_fewer_ranks_consumes_every_ranks_suspects(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank removed only its own suspects file: after a 4-rank pass that crashed, a single-process rerun
    decoded rank 3's suspect alone but left its file, which every later pass read again, for ever."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    shutil.copy(videos / "real" / "real_0.mp4", videos / "real" / "new.mp4")  # the earlier crash's suspect
    stale = [_suspects_file(cfg.out, 3, ["real/new.mp4"]), _suspects_file(cfg.out, 1, ["real/real_0.mp4"])]
    (cfg.out / SUSPECTS.format(rank=2)).write_text("{torn")  # damaged: names nothing, goes too
    alone, decode = [], reader.decode_alone
    monkeypatch.setattr(reader, "decode_alone", lambda path, *a, **k: alone.append(path) or decode(path, *a, **k))
    assert extract(cfg).ok == 1 and [p.name for p in alone] == ["new.mp4"]  # already recorded: not decoded again
    assert not any(f.exists() for f in stale) and not list(cfg.out.glob(".decode-suspects*"))
    _suspects_file(cfg.out, 5, ["real/new.mp4"])
    assert (again := extract(cfg)).skipped == again.found and not list(cfg.out.glob(".decode-suspects*"))  # no todo


def test_a_torchrun_pass_removes_the_files_of_ranks_it_does_not_have(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun rank 0 removes them once every part is closed (here 2 ranks, simulated by the collectives,
    after a 4-rank job); a rank without a share, or ranks 2 and 3, used to leave theirs."""
    from saga import distributed

    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    shutil.copy(videos / "real" / "real_0.mp4", videos / "real" / "new.mp4")
    stale = [_suspects_file(cfg.out, r, ["real/new.mp4"]) for r in (0, 1, 3)]
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "init", lambda device=None: distributed.context())
    monkeypatch.setattr(distributed, "_active", lambda: False)  # every collective as for one process
    assert extract(cfg).ok == 1 and not any(f.exists() for f in stale)


def test_suspects_rewritten_after_the_pass_read_them_are_kept(tmp_path: Path) -> None:
    """The pass removes only the files it read: one rewritten since (another writer's crash) stays; a crash keeps
    the earlier suspects beside its own (another rank may not have decoded them yet)."""
    from saga.fileio import write_json
    from saga.pipeline.resume import clear_suspects, keep_suspects, read_suspects

    _suspects_file(tmp_path, 0, ["a.mp4"])
    later = _suspects_file(tmp_path, 1, ["b.mp4"])
    read = read_suspects(tmp_path)
    assert read.paths == {"a.mp4", "b.mp4"}
    write_json(later, {"paths": ["c.mp4"]})  # atomically replaced: another file
    clear_suspects(tmp_path, read)
    assert [f.name for f in tmp_path.iterdir()] == [later.name] and read_suspects(tmp_path).paths == {"c.mp4"}
    keep_suspects(tmp_path, 0, ["d.mp4"], read)
    assert read_suspects(tmp_path).paths == {"a.mp4", "b.mp4", "c.mp4", "d.mp4"}
