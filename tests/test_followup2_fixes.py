"""Second follow-up fixes: prune of an `--augment`ed cache, copy names that clash as paths, the TOML named only
for its own bad values, a dataset copied without its mtimes, one-line warnings in every command, and the
temporary files of killed copy runs.

CPU, tiny and deterministic: conftest clips, the tiny test encoder for the one end-to-end test.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import ended_writers_temp, make_video_tree, write_clip
from saga.cache import prune
from saga.cache.manifest import AUGMENTED, OK, VideoRecord, copy_name, file_fingerprint, source_key
from saga.cache.store import FeatureCache
from saga.commands.common import training_options
from saga.errors import SagaError
from saga.pipeline.extract import ExtractConfig, extract
from saga.robustness.augment import augment_cache
from saga.robustness.copies import unchanged
from saga.robustness.perturb import parse, parse_list
from saga.robustness.runner import perturb_videos
from saga.train.attribute import AttributeConfig


def record(videos: Path, rel: str, generator: str = "real") -> VideoRecord:
    size, mtime = file_fingerprint(videos / rel)
    return VideoRecord(rel, size, mtime, OK, generator, {}, "test")


# --- 1. prune of a cache built with `extract --augment` ---------------------------------------------------------

def test_prune_of_an_augmented_cache_drops_a_gone_train_video_and_its_copy(tmp_path: Path,
                                                                            tiny_weights: Path) -> None:
    """The augment pass records the cache itself as its videos folder: every such cache was refused."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = ExtractConfig(videos=videos, out=tmp_path / "cache", taxonomy="synth", encoder="saga-tiny-vit",
                        pretrained=str(tiny_weights), frames=4, workers=0, device="cpu",
                        split_fractions={"train": 1.0, "val": 0.0, "test": 0.0})
    extract(cfg)
    augment_cache(cfg, parse_list("crf28"), say=print)
    (videos / "real" / "real_0.mp4").unlink()
    cache = FeatureCache.open(cfg.out)
    gone = ["real/real_0.mp4", f"{AUGMENTED}crf28/real/real_0.mp4"]
    assert prune.gone_paths(cache, videos) == sorted(gone)  # no --all-folders needed
    assert prune.prune_gone(cache, videos) == sorted(gone)
    left = sorted(r.path for r in FeatureCache.open(cfg.out).records())
    assert len(left) == 4 and not set(gone) & set(left)


# --- 2. copy names that differ as strings but clash as paths ----------------------------------------------------

PATHS = ["x.avi", "x.avi.mp4", "x.mp4", "x", "/x.mp4", "../x.mp4", "%/x.mp4", "d/x.webm", "d/x.webm.mp4",
         "c.avi", "c.avi.mp4/z.mp4", "c.AVI.MP4/s/z.avi", "q", "q.mp4/z", "../q", "../q.mp4/y.mp4", "x.mp4.d/y.avi"]


def test_no_copy_name_is_a_folder_of_another_one() -> None:
    names = {p: copy_name(p) for p in PATHS}
    assert len(set(names.values())) == len(PATHS)
    for (s, a), (t, b) in itertools.permutations(names.items(), 2):
        if not t.startswith(s + "/"):  # (a source folder and file of one name cannot both exist)
            assert not b.lower().startswith(a.lower() + "/"), (s, t)
    assert names["c.avi.mp4/z.mp4"] == "%/c.avi%2Emp4/z.mp4.mp4" and names["q.mp4/z"] == "%/q%2Emp4/z.mp4"
    for kept in ("x.avi", "x.mp4", "d/x.webm", "x.mp4.d/y.avi"):  # every older name without such a folder stays
        assert source_key(f"{AUGMENTED}crf28/{names[kept]}")[1] == source_key(kept)[1] == names[kept]


def test_a_source_inside_a_folder_named_like_a_copy_gets_its_copy(tmp_path: Path) -> None:
    videos = tmp_path / "v"
    write_clip(videos / "c.avi", n_frames=4, seed=1, codec="mjpeg")
    write_clip(videos / "c.avi.mp4" / "z.mp4", n_frames=5, seed=2)
    done = perturb_videos(parse("crf28"), [record(videos, "c.avi"), record(videos, "c.avi.mp4/z.mp4")], videos,
                          tmp_path / "copies", print)
    assert sorted(done.values()) == ["c.avi", "c.avi.mp4/z.mp4"]  # "Not a directory" skipped one before
    assert all((tmp_path / "copies" / name).is_file() for name in done)


# --- 3. the TOML named only for a bad value of its own ----------------------------------------------------------

def test_the_toml_is_named_for_its_own_bad_value_and_only_for_it(tmp_path: Path) -> None:
    config = tmp_path / "two_bad.toml"
    config.write_text("lr = -1.0\npatience = -1\nepochs = 1\n")
    with pytest.raises(SagaError, match=rf"^{config}: patience must be >= 0, got -1$"):  # --lr fixed only one of two
        training_options(AttributeConfig, config, lr=0.001)
    config.write_text("patience = -1\nepochs = 1\n")
    with pytest.raises(SagaError, match=r"^min_steps must be >= 0, got -1$"):  # the flag's min_steps; the file's is fixed
        training_options(AttributeConfig, config, patience=5, min_steps=-1)
    with pytest.raises(SagaError, match=rf"^{config}: patience"):
        training_options(AttributeConfig, config, min_steps=-1)  # both bad: the file's value is named


# --- 4. a dataset copied without its modification times ----------------------------------------------------------

def test_a_file_of_the_recorded_size_but_another_mtime_is_taken_with_one_line(tmp_path: Path) -> None:
    videos = tmp_path / "v"
    for i in range(3):
        write_clip(videos / f"a{i}.mp4", n_frames=4 + i, seed=i)
    records = [record(videos, f"a{i}.mp4") for i in range(3)]
    for i in range(2):
        os.utime(videos / f"a{i}.mp4", ns=(10**18, 10**18))  # `cp -r`: the same bytes, new times
    said: list[str] = []
    assert unchanged(records, videos, tmp_path / "cache", said.append) == records
    assert len(said) == 1 and said[0].startswith("2 of 3 videos in ") and "another modification time" in said[0]
    write_clip(videos / "a2.mp4", n_frames=9, seed=7)  # another size: still not the video the cache extracted
    said.clear()
    assert unchanged(records, videos, tmp_path / "cache", said.append) == records[:2]
    assert len(said) == 2 and "1 of 3 videos" in said[1] and "skipped" in said[1]
    with pytest.raises(SagaError, match="none of the 1 videos is the file"):
        unchanged(records[2:], videos, tmp_path / "cache", said.append)


# --- 5. one-line warnings in every command of explain_cmds and openworld_cmds -----------------------------------

def _warn_and_stop(*args: object, **kwargs: object) -> Any:
    warnings.warn("a library's warning", UserWarning)
    raise SagaError("stop")


def _commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], object]]:
    import saga.ablate
    import saga.demo
    import saga.explain.report
    import saga.openworld.api
    import saga.openworld.logo
    from saga.commands import explain_cmds as ex
    from saga.commands import openworld_cmds as ow

    for module, name in [(saga.ablate, "run_ablation"), (saga.demo, "run_demo"), (saga.explain.report, "build_report"),
                         (saga.openworld.api, "calibrate_run"), (saga.openworld.api, "enroll_run"),
                         (saga.openworld.api, "fit_openset_run"), (saga.openworld.logo, "train_folds")]:
        monkeypatch.setattr(module, name, _warn_and_stop)
    monkeypatch.setattr(FeatureCache, "open", classmethod(lambda cls, root: None))
    monkeypatch.setattr(saga.openworld.api, "check_cache_seals", lambda cache: None)  # no cache to check: a stand-in
    return [lambda: ex.report([tmp_path], out=tmp_path / "r.html", ablation=None, openworld=None),
            lambda: ex.demo(out=tmp_path / "demo", per_class=None, seed=0, workers=0, device="cpu", ablation=False),
            lambda: ex.ablate(cache=tmp_path, stage1=tmp_path, out=tmp_path / "ab", level=None, fraction=None,
                              floor=None, per_generator=None, seeds=1, epochs=None, device=None, config=None),
            lambda: ow.calibrate(tmp_path, cache=None, out=None, split="test", device="cpu"),
            lambda: ow.enroll(tmp_path, "g", tmp_path, videos=None, task=None, sd=None, team=None, split=None,
                              limit=None, seed=0, run_cache=None, out=None, device="cpu"),
            lambda: ow.openset_fit(tmp_path, cache=None, kind="knn", k=5, percentile=95.0, out=None, device="cpu"),
            lambda: ow.openset_logo(tmp_path, tmp_path / "logo", config=None, only="syn-svd", seed=0, retrain=0)]


@pytest.mark.parametrize("n", range(7), ids=["report", "demo", "ablate", "calibrate", "enroll", "openset-fit",
                                               "openset-logo"])
def test_every_explain_and_openworld_command_prints_warnings_in_one_line(
        n: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "zarr.json").write_text("{}")  # stand-in cache: ablate checks the folder before its imports
    with pytest.raises(SagaError, match="stop"):
        _commands(tmp_path, monkeypatch)[n]()
    err = capsys.readouterr().err
    assert "warning: a library's warning" in err and "warnings.warn" not in err


# --- 6. temporary files of killed copy runs --------------------------------------------------------------------

def test_a_killed_runs_temporary_copy_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    videos, folder = tmp_path / "v", tmp_path / "copies"
    write_clip(videos / "g" / "a.mp4", n_frames=4, seed=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = [folder / "g" / f".a.mp4.tmp-{dead}", folder / f".labels.csv.tmp-{dead}"]
    live = [folder / "g" / f".b.mp4.tmp-{os.getpid()}", folder / f".c.mp4.tmp-{os.getppid()}"]
    for path in stale + live + [folder / "g" / ".notes.tmp-x"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a copy")
    perturb_videos(parse("crf28"), [record(videos, "g/a.mp4")], videos, folder, print)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    assert (folder / "g" / ".notes.tmp-x").exists()  # not a name saga's atomic writes give


def test_a_temporary_of_another_host_is_kept_and_one_of_this_host_swept(tmp_path: Path) -> None:
    """A cluster's machines sharing one copy folder: a temporary written on another host was judged by its PID
    here, so a live writer there whose PID is free here lost its file. Both writers below have ended; only this
    host's temporary is swept."""
    from saga.robustness.copies import sweep_temps

    ours = ended_writers_temp(tmp_path / "g" / "a.mp4")
    theirs = ended_writers_temp(tmp_path / "g" / "b.mp4", host="node-7.cluster")
    dead = re.search(r"tmp-(\d+)", ours.name)[1]
    older = tmp_path / f".c.mp4.tmp-{dead}"  # an older saga's name (no host): judged by its PID, as before
    for path in (ours, theirs, older):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a copy")
    assert sweep_temps(tmp_path) == 2
    assert theirs.exists() and not ours.exists() and not older.exists()
    assert theirs.name.endswith("@node-7.cluster") and "@" in ours.name  # every temporary name says whose host
