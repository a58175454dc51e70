"""`saga synth` run after run: a reused --out holds only this run's clips, a resume redoes nothing,
bad counts are one line before any work, and a killed CLI leaves no pool workers behind."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saga.benchmark.synth import SynthConfig, die_with_parent, generate
from saga.benchmark.synth_folder import STAMP
from saga.errors import SagaError
from saga.fileio import temp_path

from conftest import run_saga

SMALL = SynthConfig(videos_per_class=1, real_videos=2, seed=5, min_frames=10, max_frames=12, sizes=((48, 64),),
                    fps=(12,), workers=1)
N_SMALL = 19 + 2
OTHER = dataclasses.replace(SMALL, seed=6)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _listed(root: Path) -> set[str]:
    with open(root / "labels.csv", newline="") as f:
        return {row["path"] for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Digests of complete SMALL and OTHER folders (made from scratch)."""
    out = {}
    for name, config in (("small", SMALL), ("other", OTHER)):
        folder = tmp_path_factory.mktemp(name)
        generate(folder, config)
        out[name] = _digests(folder)
    return out


def test_fewer_videos_prune_the_old_clips_and_keep_other_files(tmp_path: Path) -> None:
    generate(tmp_path, dataclasses.replace(SMALL, real_videos=3))
    mine = ["real/notes.txt", "real/real_7.mp4", "real/Real_000.mp4", "mine.mp4", "real/sub/real_009.mp4"]
    for rel in mine:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("not saga's")
    generate(tmp_path, SMALL)  # same seed, fewer real clips: real_002 must go
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.mp4")} - set(mine)
    assert on_disk == _listed(tmp_path) and len(on_disk) == N_SMALL and "real/real_002.mp4" not in on_disk
    assert all((tmp_path / rel).read_text() == "not saga's" for rel in mine)


def test_another_config_interrupted_leaves_no_stale_labels_and_resumes(tmp_path: Path,
                                                                       made: dict[str, dict[str, str]]) -> None:
    generate(tmp_path, SMALL)
    assert _digests(tmp_path) == made["small"]

    def stop(event: object) -> None:
        if event.done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, OTHER, progress=stop)
    assert not (tmp_path / "labels.csv").exists() and not (tmp_path / "taxonomy.toml").exists()
    partial = _digests(tmp_path)
    clips = {rel: d for rel, d in partial.items() if rel.endswith(".mp4")}
    assert len(clips) == 5 and all(made["other"][rel] == d for rel, d in clips.items())  # no seed-5 clip left
    stamps = {rel: (tmp_path / rel).stat().st_mtime_ns for rel in clips}
    seen: list[tuple[int, int]] = []
    generate(tmp_path, dataclasses.replace(OTHER, workers=2), progress=lambda e: seen.append((e.done, e.total)))
    assert _digests(tmp_path) == made["other"]  # byte-identical to a run from scratch
    assert all((tmp_path / rel).stat().st_mtime_ns == t for rel, t in stamps.items())  # finished clips not redone
    assert seen[0] == (5, N_SMALL) and seen[-1] == (N_SMALL, N_SMALL) and len(seen) == 1 + N_SMALL - 5


def test_a_folder_with_a_bad_stamp_is_regenerated(tmp_path: Path, made: dict[str, dict[str, str]]) -> None:
    generate(tmp_path, OTHER)
    (tmp_path / STAMP).write_text("{}")  # a stamp, but not this config's: its clips cannot be trusted
    generate(tmp_path, SMALL)
    assert _digests(tmp_path) == made["small"]
    outside = tmp_path.parent / f"{tmp_path.name}_keep"
    (outside / "real").mkdir(parents=True)
    (outside / "real" / "real_000.mp4").write_text("keep")
    (tmp_path / STAMP).write_text('{"folders": ["..", "../%s/real", "/etc"]}' % outside.name)
    generate(tmp_path, SMALL)  # a hand-edited stamp: regenerated, and nothing outside the folder touched
    assert _digests(tmp_path) == made["small"] and (outside / "real" / "real_000.mp4").read_text() == "keep"
    (tmp_path / STAMP).write_text("{not json")
    generate(tmp_path, SMALL)
    assert _digests(tmp_path) == made["small"]


def test_a_non_empty_folder_without_a_stamp_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """A mistyped --out used to lose the user's labels.csv and every CLASS/CLASS_NNN.mp4 in it."""
    mine = tmp_path / "mydata"
    (mine / "real").mkdir(parents=True)
    (mine / "labels.csv").write_text("path,generator\nreal/real_000.mp4,real\nreal/my_clip.mp4,real\n")
    for name in ("real_000.mp4", "real_007.mp4", "my_clip.mp4"):
        (mine / "real" / name).write_text("the user's")
    before = _digests(mine)
    with pytest.raises(SagaError, match=r"mydata: not a `saga synth` folder \(no synth.json\) and not empty; "
                                        "choose an empty or new --out"):
        generate(mine, SMALL)
    assert _digests(mine) == before and not (mine / ".lock").exists()
    generate(tmp_path / "made", SMALL)
    (tmp_path / "made" / STAMP).unlink()  # a folder of an older saga: no proof of what it wrote either
    with pytest.raises(SagaError, match="not a `saga synth` folder"):
        generate(tmp_path / "made", SMALL)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").write_text("")  # a run killed before its stamp: still empty
    generate(tmp_path / "locked", SMALL)
    assert (tmp_path / "locked" / STAMP).is_file()


def test_an_empty_out_is_refused_not_taken_for_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,generator\n")
    for command in ("synth", "demo"):
        proc = run_saga(command, "--out", "", "--per-class", "1", cwd=tmp_path)
        assert proc.returncode == 2 and '--out "": name a folder' in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


def test_leftover_temporary_clips_are_removed(tmp_path: Path, made: dict[str, dict[str, str]]) -> None:
    generate(tmp_path, SMALL)
    (tmp_path / "real" / ".real_001.mp4.tmp-99999").write_bytes(b"half a clip")  # an older saga's name
    temp_path(tmp_path / "real" / "real_002.mp4").write_bytes(b"half a clip")  # .real_002.mp4.tmp-PID@HOST
    (tmp_path / "real" / ".keep.tmp-1").write_bytes(b"not ours")
    generate(tmp_path, SMALL)
    assert _digests(tmp_path) == {**made["small"], "real/.keep.tmp-1": hashlib.sha256(b"not ours").hexdigest()}
    (tmp_path / "killed").mkdir()  # a run killed while it wrote its stamp: still saga's folder
    temp_path(tmp_path / "killed" / STAMP).write_text("{")
    generate(tmp_path / "killed", SMALL)


@pytest.mark.parametrize("change,message", [
    ({"workers": 0}, "--workers must be at least 1, got 0"),
    ({"workers": -3}, "--workers must be at least 1, got -3"),
    ({"videos_per_class": 10**9}, r"--per-class \(videos_per_class\) must be 1..100,000, got 1000000000"),
    ({"real_videos": 10**12}, r"--real \(real_videos; default 3 x --per-class\) must be 1..300,000"),
])
def test_bad_counts_are_one_line_before_any_work(tmp_path: Path, change: dict, message: str) -> None:
    start = time.monotonic()
    with pytest.raises(SagaError, match=message):
        generate(tmp_path / "out", dataclasses.replace(SMALL, **change))
    assert not (tmp_path / "out").exists() and time.monotonic() - start < 5


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_worker_whose_parent_died_before_prctl_exits() -> None:
    """PR_SET_PDEATHSIG set after the parent died never fires: the worker must see that and exit."""
    proc = mp.get_context("fork").Process(target=_late_worker, args=(os.getpid() + 10**7,))  # not its parent
    proc.start()
    proc.join(20)
    alive = proc.is_alive()
    proc.kill()
    assert not alive and proc.exitcode == 1


def _late_worker(parent: int) -> None:
    """A pool worker whose parent (pid `parent`) is gone by the time its initializer runs."""
    try:
        die_with_parent(parent)
    except TypeError:  # a die_with_parent without the `parent` argument must not live on either
        die_with_parent()
    time.sleep(60)  # rendering clips for nobody


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in "ZX":
            kids.append(int(stat.parent.name))
    return kids


def _alive(pids: list[int]) -> list[int]:
    """Those still running (a zombie waiting for a reaper that may never come counts as dead)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in "ZX":
            alive.append(pid)
    return alive


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_killed_cli_leaves_no_pool_workers(tmp_path: Path) -> None:
    """The real CLI installs a SIGTERM handler that forked workers inherit: it used to swallow the
    parent-death signal, so the workers of a SIGKILLed `saga synth --workers 2` lived on."""
    cli = subprocess.Popen([sys.executable, "-m", "saga", "synth", "--out", str(tmp_path / "v"), "--per-class", "3",
                            "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and cli.poll() is None and time.monotonic() < deadline:
            workers = _children(cli.pid)
            time.sleep(0.05)
        assert len(workers) == 2, "the CLI never started its two workers"
        cli.kill()
        cli.wait()
        deadline = time.monotonic() + 20
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers), f"workers {_alive(workers)} outlived the killed CLI"
    finally:
        cli.kill()
        for pid in _alive(workers):
            os.kill(pid, signal.SIGKILL)


def test_a_second_synth_into_the_same_folder_is_refused_while_the_first_writes(tmp_path: Path) -> None:
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)  # what a running `saga synth` holds
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(SagaError, match="another saga synth is writing this folder right now"):
            generate(tmp_path, SMALL)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written, nothing removed
    finally:
        os.close(fd)


def test_the_cli_writes_a_benchmark_the_extractor_reads(tmp_path: Path) -> None:
    """`saga synth` end to end in its own process, at its own (256 px, 32-48 frame) defaults: one clip per
    generator and one real clip, every one listed in labels.csv under its generator, beside taxonomy.toml and the
    stamp. (The phase-2 chain, test_cli_phase2, renders its larger benchmark in-process at a smaller size.)"""
    out = tmp_path / "videos"
    proc = run_saga("synth", "--out", str(out), "--per-class", "1", "--real", "1", "--seed", "3", check=True)
    assert "Traceback" not in proc.stderr
    clips = sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4"))
    assert len(clips) == N_SMALL - 1 and _listed(out) == set(clips)
    with open(out / "labels.csv", newline="") as f:
        assert all(row["path"].split("/")[0] == row["generator"] for row in csv.DictReader(f))
    assert (out / "taxonomy.toml").is_file() and (out / STAMP).is_file()
    from saga.pipeline.decode import decode_video
    from saga.pipeline.sampling import SamplingPolicy

    clip = decode_video(out / clips[0], SamplingPolicy(frames=8))  # whole clips of 256 x 256, >= 32 frames
    assert clip.frames.shape[1:] == (8, 256, 256, 3) and clip.mask.all() and clip.n_frames >= 32
