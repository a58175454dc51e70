"""Cache fixes: parts sealed but not logged, a per-thread folder lock, racing cache creation, the same
video under two paths (verify warns) and `saga cache prune`."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import lock_held_by_another_thread, run_saga
from saga.cache import prune, seal, store
from saga.cache.manifest import VideoRecord, append_split_plan, read_split_plan
from saga.cache.store import PARTS_LOG, SEAL, FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.locks import LOCK, lock_folder, unlock_folder
from saga.taxonomy import Taxonomy
from test_cache import D, T, W, fill, provenance

BUSY = "another saga extract is writing this cache right now"


def new_cache(tmp_path: Path) -> FeatureCache:
    return FeatureCache.create_or_open(tmp_path / "c", provenance())


def rec(path: str, gen: str = "real", split: str = "train", size: int = 1, mtime_ns: int = 1) -> VideoRecord:
    return VideoRecord(path=path, size=size, mtime_ns=mtime_ns, status="ok", generator=gen,
                       labels=Taxonomy.load("synth").labels(gen), split=split)


def write_part(cache: FeatureCache, records: list[tuple[VideoRecord, int]]) -> None:
    """One sealed part; records with the same seed get the same features (the same video)."""
    writer = PartWriter(cache, next_part_name(cache), capacity=len(records) * W, shard_rows=4)
    for record, seed in records:
        feats = np.random.default_rng(seed).standard_normal((W, T, D)).astype(np.float16)
        writer.add(record, feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    append_split_plan(cache.split_plan_path, {r.path: (r.generator, r.split) for r, _ in records})


def pruned_export_cache(tmp_path: Path) -> FeatureCache:
    """A cache of real/a.mp4 (train) and real/b.mp4 (test), b then pruned as gone: its split kept in the plan."""
    from saga.cache.prune import prune_gone

    cache = new_cache(tmp_path)
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/b.mp4", split="test", size=5, mtime_ns=6), 2)])
    videos = tmp_path / "videos"
    (videos / "real").mkdir(parents=True)
    (videos / "real" / "a.mp4").write_bytes(b"v")
    prune_gone(FeatureCache.open(cache.root), videos, all_folders=True)
    return FeatureCache.open(cache.root)


def locked_elsewhere(folder: Path) -> bool:
    """Whether the folder's flock is held (probed through a descriptor of our own)."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def in_thread(fn) -> BaseException | None:
    """Run fn in another thread; the exception it raised, if any."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            caught.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return caught[0] if caught else None


# --- 1. a part sealed (seal.json) but never logged in parts.jsonl ------------------------------------------------

def _sealed_not_logged(tmp_path: Path) -> FeatureCache:
    """What a kill (or full disk) between an older saga's seal.json and its parts.jsonl line left."""
    cache = new_cache(tmp_path)
    fill(cache, 3)
    (cache.root / PARTS_LOG).unlink()
    return FeatureCache.open(cache.root)


def test_a_part_sealed_but_not_logged_is_reported_then_logged_so_its_loss_is_noticed(tmp_path: Path) -> None:
    cache = _sealed_not_logged(tmp_path)
    errors, warnings = cache.check_structure()
    assert errors == [] and any("not logged in parts.jsonl" in w and "verify --seal" in w for w in warnings)
    assert store.seal_leftover_parts(cache) == ["p000001-r000"]  # what every `saga extract` runs first
    assert list(seal.log_entries(cache.root)) == ["p000001-r000"]
    assert FeatureCache.open(cache.root).check_structure() == ([], [])
    shutil.rmtree(cache.root / "parts" / "p000001-r000")
    errors, _ = FeatureCache.open(cache.root).check_structure()
    assert any("part p000001-r000 is missing" in e for e in errors)


def test_verify_seal_logs_a_part_sealed_but_not_logged(tmp_path: Path) -> None:
    cache = _sealed_not_logged(tmp_path)
    proc = run_saga("cache", "verify", "--seal", str(cache.root), check=True)
    assert "not logged in parts.jsonl" in proc.stderr and "sealed 1 part(s): p000001-r000" in proc.stdout
    assert list(seal.log_entries(cache.root)) == ["p000001-r000"]


def test_a_seal_is_logged_before_seal_json_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = new_cache(tmp_path)

    def killed(*_: object) -> None:
        raise KeyboardInterrupt  # a kill right after the log line

    monkeypatch.setattr(seal, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        fill(cache, 3)
    monkeypatch.undo()
    assert list(seal.log_entries(cache.root)) == ["p000001-r000"]  # a loss of the part is noticed at once
    assert store.seal_leftover_parts(FeatureCache.open(cache.root)) == []
    assert (cache.root / "parts" / "p000001-r000" / SEAL).is_file()
    assert FeatureCache.open(cache.root).check_structure() == ([], [])


def test_a_damaged_seal_json_is_reported_not_resealed(tmp_path: Path) -> None:
    cache = _sealed_not_logged(tmp_path)
    (cache.root / "parts" / "p000001-r000" / SEAL).write_text("{")
    assert store.seal_leftover_parts(cache) == []  # resealing would hide an edit of the manifest
    assert any("corrupt seal.json" in e for e in cache.check_structure()[0])


# --- 2. the folder lock refuses another thread -----------------------------------------------------------------

def test_another_thread_is_refused_and_its_unlock_frees_nothing(tmp_path: Path) -> None:
    lock_folder(tmp_path, BUSY)
    try:
        def second() -> None:
            try:
                lock_folder(tmp_path, BUSY)
            finally:
                unlock_folder(tmp_path)  # what a caller's `finally` does: must not free the first thread's lock

        error = in_thread(second)
        assert isinstance(error, SagaError) and str(error) == f"{tmp_path}: {BUSY}"
        assert locked_elsewhere(tmp_path)
    finally:
        unlock_folder(tmp_path)
    assert not locked_elsewhere(tmp_path) and in_thread(lambda: (lock_folder(tmp_path, BUSY),
                                                                 unlock_folder(tmp_path))) is None


def test_the_holding_thread_may_lock_again_and_each_lock_needs_its_unlock(tmp_path: Path) -> None:
    lock_folder(tmp_path, BUSY)
    lock_folder(tmp_path, BUSY)
    unlock_folder(tmp_path)
    assert locked_elsewhere(tmp_path) and isinstance(in_thread(lambda: lock_folder(tmp_path, BUSY)), SagaError)
    unlock_folder(tmp_path)
    assert not locked_elsewhere(tmp_path)


def test_a_thread_that_ended_holding_the_lock_frees_it_for_the_next(tmp_path: Path) -> None:
    assert in_thread(lambda: lock_folder(tmp_path, BUSY)) is None  # ended without unlocking
    lock_folder(tmp_path, BUSY)
    assert locked_elsewhere(tmp_path)
    unlock_folder(tmp_path)
    assert not locked_elsewhere(tmp_path)


def test_prune_is_refused_while_another_thread_extracts(tmp_path: Path) -> None:
    cache = _sealed_not_logged(tmp_path)
    with lock_held_by_another_thread(cache.root, BUSY):
        with pytest.raises(SagaError, match=BUSY):
            prune.prune_gone(cache, tmp_path)


# --- 3. two processes creating the same new cache ----------------------------------------------------------------

@pytest.mark.parametrize("empty_folder", [False, True])
@pytest.mark.parametrize("other_wrote", [False, True])
def test_a_cache_created_meanwhile_by_another_process_is_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 empty_folder: bool, other_wrote: bool) -> None:
    root = tmp_path / "c"
    if empty_folder:
        root.mkdir()
        (root / LOCK).touch()  # an extraction may lock the folder before it creates the cache
    real, others, started = store.zarr.open_group, [], threading.Event()

    def other() -> None:
        others.append(FeatureCache.create_or_open(root, provenance()))
        if other_wrote:
            fill(others[0], 2)

    def racing(where: object, *args: object, **kwargs: object) -> object:  # building our temporary cache
        if kwargs.get("mode") == "w" and ".c.tmp-" in str(where) and not started.is_set():
            started.set()
            assert in_thread(other) is None  # another process (here: thread) publishes first
        return real(where, *args, **kwargs)

    monkeypatch.setattr(store.zarr, "open_group", racing)
    cache = FeatureCache.create_or_open(root, provenance())
    assert cache.cache_id == others[0].cache_id == FeatureCache.open(root).cache_id
    assert not list(root.resolve().parent.glob(".c.tmp-*")) and len(cache.records()) == (3 if other_wrote else 0)


KILLED_CREATING = """
import json, os, signal, sys
from pathlib import Path
from saga.cache import store

def killed(tmp, target):  # the instant the empty cache exists under its hidden name
    os.kill(os.getpid(), signal.SIGKILL)

store._publish = killed
store.FeatureCache.create_or_open(Path(sys.argv[1]), json.loads(sys.argv[2]))
"""


def test_a_creation_killed_before_it_published_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    """A SIGKILL between building the empty cache (`.c.tmp-PID-TID`) and moving it into place left that hidden
    folder for ever: only the creating process's own name was ever removed."""
    root = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", KILLED_CREATING, str(root), json.dumps(provenance())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list(tmp_path.glob(".c.tmp-*")) and not root.exists()  # what the kill left
    FeatureCache.create_or_open(root, provenance())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# --- 4. the same video under two paths; `saga cache prune` -------------------------------------------------------

def _moved_video_cache(tmp_path: Path) -> tuple[FeatureCache, Path]:
    """fake/a.mp4 (test) moved to real/a.mp4 (train) and extracted again; b.mp4 copied keeping size and mtime."""
    cache = new_cache(tmp_path)
    write_part(cache, [(rec("syn-svd/a.mp4", "syn-svd", "test"), 1), (rec("real/b.mp4", size=7, mtime_ns=9), 2),
                       (rec("real/c.mp4"), 3)])
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/c.mp4"), 4),
                       (rec("syn-svd/b.mp4", "syn-svd", size=7, mtime_ns=9), 5)])
    videos = tmp_path / "videos"
    for path in ("real/a.mp4", "real/c.mp4", "syn-svd/b.mp4"):
        (videos / path).parent.mkdir(parents=True, exist_ok=True)
        (videos / path).write_bytes(b"v")
    return FeatureCache.open(cache.root), videos


def test_verify_warns_about_one_video_under_two_paths(tmp_path: Path) -> None:
    cache, _ = _moved_video_cache(tmp_path)
    errors, warnings = cache.check_structure()
    same = [w for w in warnings if "hold the same video" in w]
    assert errors == [] and len(same) == 2 and all("saga cache prune" in w for w in same)
    assert any(w.startswith("real/a.mp4 and syn-svd/a.mp4") and "equal feature checksums" in w
               and "leaks between splits" in w for w in same)
    assert any(w.startswith("real/b.mp4 and syn-svd/b.mp4") and "equal size, mtime and file name" in w
               and "generators real/syn-svd" in w for w in same)


def test_prune_is_a_dry_run_without_yes_then_drops_every_record_of_the_gone_videos(tmp_path: Path) -> None:
    cache, videos = _moved_video_cache(tmp_path)
    before = (cache.root / "parts" / "p000001-r000" / "manifest.jsonl").read_bytes()
    proc = run_saga("cache", "prune", str(cache.root), "--videos", str(videos), "--all-folders", check=True)
    assert "would drop real/b.mp4" in proc.stdout and "would drop syn-svd/a.mp4" in proc.stdout
    assert "2 video(s) are gone" in proc.stdout and "--yes" in proc.stdout
    assert (cache.root / "parts" / "p000001-r000" / "manifest.jsonl").read_bytes() == before
    assert prune.prune_gone(cache, videos, all_folders=True) == ["real/b.mp4", "syn-svd/a.mp4"]
    cache = FeatureCache.open(cache.root)
    assert sorted(r.path for r in cache.records()) == ["real/a.mp4", "real/c.mp4", "syn-svd/b.mp4"]
    assert [r.part for r in cache.records() if r.path == "real/c.mp4"] == ["p000002-r000"]
    assert sorted(read_split_plan(cache.split_plan_path)) == ["real/a.mp4", "real/c.mp4", "syn-svd/b.mp4"]
    assert cache.check_structure() == ([], []) and cache.verify() == []
    shutil.rmtree(cache.root / "parts" / "p000001-r000")  # a pruned part's loss is still noticed
    assert any("p000001-r000 is missing" in e for e in FeatureCache.open(cache.root).check_structure()[0])


def test_prune_refuses_a_folder_without_any_of_the_videos(tmp_path: Path) -> None:
    cache, _ = _moved_video_cache(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(SagaError, match="none of the cache's 5 videos is in this folder"):
        prune.prune_gone(cache, tmp_path / "elsewhere")


@pytest.mark.parametrize("logged", [False, True])
def test_an_interrupted_prune_is_finished_or_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       logged: bool) -> None:
    cache, videos = _moved_video_cache(tmp_path)

    def killed(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prune, "_finish" if logged else "log_part", killed)
    with pytest.raises(KeyboardInterrupt):
        prune.prune_gone(cache, videos, all_folders=True)  # parts written without a recorded folder
    monkeypatch.undo()
    errors, warnings = FeatureCache.open(cache.root).check_structure()
    assert errors == [] and any("prune` was interrupted" in w for w in warnings) == logged
    store.seal_leftover_parts(FeatureCache.open(cache.root))  # what the next extract or verify --seal runs
    assert not list(cache.root.glob(f"parts/*/{prune.PRUNED}"))
    paths = {r.path for r in FeatureCache.open(cache.root).records()}
    assert len(paths) == (3 if logged else 5)  # the gone videos' records were all in the first part
    assert [json.loads(line)["part"] for line in (cache.root / PARTS_LOG).read_text().splitlines()].count(
        "p000001-r000") == (2 if logged else 1)


def _deny_lstat_below(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """os.lstat of anything below `folder` raises EACCES, as chmod 000 on it does to a user (not to root)."""
    import errno

    real_lstat, hidden = os.lstat, str(folder) + os.sep

    def lstat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path).startswith(hidden):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", lstat)


def test_prune_keeps_the_records_under_a_folder_it_cannot_look_into(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 on real/ (EACCES injected: root looks through chmod): its videos cannot be judged, so they are
    kept with one line naming the folder; they used to be called gone (`os.path.lexists` is False) and dropped."""
    import warnings

    cache, videos = _moved_video_cache(tmp_path)
    _deny_lstat_below(monkeypatch, videos / "real")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prune.prune_gone(cache, videos, all_folders=True) == ["syn-svd/a.mp4"]  # real/b.mp4 is kept
    assert [str(w.message) for w in caught] == [
        f"{videos}/real: cannot look inside this folder (Permission denied); the records of its 3 video(s) are kept: "
        f"make it readable (chmod a+rx {videos}/real) and rerun to prune them"]
    assert sorted(r.path for r in FeatureCache.open(cache.root).records()) == [
        "real/a.mp4", "real/b.mp4", "real/c.mp4", "syn-svd/b.mp4"]


def test_prune_with_nothing_gone_but_a_folder_it_cannot_look_into_does_not_claim_every_video_is_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """It printed "nothing to prune: every record's video is in v" right after the warning that the records
    under real/ were kept unjudged."""
    from saga.commands import cache_cmds

    cache, videos = _moved_video_cache(tmp_path)
    prune.prune_gone(cache, videos, all_folders=True)  # syn-svd/a.mp4 and real/b.mp4 go
    cache_cmds.prune(cache.root, videos, yes=False, all_folders=True)
    assert capsys.readouterr().out.strip() == f"{cache.root}: nothing to prune: every record's video is in {videos}"
    _deny_lstat_below(monkeypatch, videos / "real")
    cache_cmds.prune(cache.root, videos, yes=False, all_folders=True)
    out, err = capsys.readouterr()
    assert "cannot look inside this folder" in err and "kept" in err
    assert out.strip() == (f"{cache.root}: nothing to prune: every video it could look at is in {videos}; 2 video(s) "
                           "under a folder it cannot look into (above) were kept unjudged")
