"""Reliability (issue #9), output folders: not writable, read-only run folders, a full disk (tmpfs).

Each case of docs/reliability.md is proven in one of the tests/test_reliability_*.py files.
Permission faults are injected (a PermissionError from the write path), so the tests run
as root too; the chmod variant skips as root, the read-only / tiny tmpfs mounts skip where
mounting is not permitted.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import typer

from saga.errors import SagaError, WriteError

TINY_RUN = dict(d_model=16, depth=1, heads=2, eval_batch_size=64, epochs=1, batch_size=32, lr=3e-3,
                warmup_epochs=0.5, patience=0, stream=False, min_steps=0)


@contextmanager
def mounted_tmpfs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` at `where` (skips the test where mounting is not permitted: no root, a sandbox)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:80]})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


def deny_writes(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Every write into `folder` (open for writing, mkdir, rename into it) raises PermissionError(EACCES)."""
    folder = Path(os.path.abspath(folder))

    def inside(path: object) -> bool:
        try:
            return Path(os.path.abspath(os.fsdecode(path))).is_relative_to(folder)  # type: ignore[arg-type]
        except TypeError:
            return False  # a file descriptor

    def denied(path: object) -> PermissionError:
        return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]

    real_open, real_mkdir, real_replace = io.open, os.mkdir, os.replace

    def fake_open(file: object, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if any(c in mode for c in "wax+") and inside(file):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    def fake_mkdir(path: object, *args: object, **kwargs: object) -> None:
        if inside(path):
            raise denied(path)
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    def fake_replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if inside(dst):
            raise denied(dst)
        real_replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_replace)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small synthetic cache and a finished 1-epoch stage-1 run on it."""
    from test_train import build_cache

    from saga.train.stage1 import Stage1Config, train_stage1

    root = tmp_path_factory.mktemp("outputs")
    cache = build_cache(root / "cache", real=12, per_gen=2)
    run = train_stage1(cache.root, root / "run", Stage1Config(**TINY_RUN))
    return cache.root, run


def _small_toml(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY_RUN.items()))
    return path


# --- not writable ------------------------------------------------------------------------------------------

def test_check_writable_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.fileio import check_writable, write_json

    target = tmp_path / "locked"
    target.mkdir()
    deny_writes(monkeypatch, target)
    for call in (lambda: check_writable(target), lambda: check_writable(target / "sub"),
                 lambda: write_json(target / "x.json", {})):
        with pytest.raises(WriteError, match=r"locked: not writable \(permission denied\); make it writable or "
                                             "choose another output folder") as info:
            call()
        assert "\n" not in str(info.value) and info.value.errno == errno.EACCES
        assert isinstance(info.value, OSError)  # code that handles OSError around a write still does
    assert list(target.iterdir()) == []  # no temporary file left behind
    with pytest.raises(SagaError, match="exists and is not a folder"):
        check_writable(Path(__file__))


def test_train_probe_report_evaluate_refuse_an_unwritable_out_in_one_line(
        small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.commands import explain_cmds, phase1, phase2

    cache, run = small
    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes(monkeypatch, locked)
    calls = {
        "train": lambda: phase2.train(stage=1, cache=cache, out=locked / "run", config=_small_toml(tmp_path)),
        "attribute": lambda: phase2.attribute(level="BIN-L", cache=cache, scratch=True, out=locked / "a",
                                              config=_small_toml(tmp_path)),
        "probe": lambda: phase2.probe(cache=cache, out=locked / "probe", level="BIN-L"),
        "report": lambda: explain_cmds.report(runs=[run], out=locked / "r.html"),
        "evaluate --out": lambda: phase2.evaluate(run=run, cache=cache, out=locked / "m", probe=False),
        "extract": lambda: phase1.extract(videos=tmp_path, out=locked / "c", encoder="saga-tiny-vit",
                                          pretrained="none", workers=0, device="cpu"),
    }
    for name, call in calls.items():
        with pytest.raises(WriteError, match=f"{locked}: not writable") as info:
            call()
        assert "\n" not in str(info.value), name
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; the injected tests cover it")
def test_a_chmod_read_only_out_is_one_line(small: tuple[Path, Path], tmp_path: Path) -> None:
    from saga.commands import explain_cmds

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(WriteError, match="not writable"):
            explain_cmds.report(runs=[small[1]], out=locked / "r.html")
    finally:
        locked.chmod(0o700)


# --- evaluate on a read-only run folder ---------------------------------------------------------------------

def test_evaluate_on_a_read_only_run_prints_the_results_and_says_how_to_save_them(
        small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from saga.commands import phase2

    cache, run = small
    before = sorted(p.name for p in run.iterdir())
    with monkeypatch.context() as patch:
        deny_writes(patch, run)
        with pytest.raises(typer.Exit) as info:
            phase2.evaluate(run=run, cache=cache, format="json", probe=False)
    assert info.value.exit_code == 1
    out, err = capsys.readouterr()
    metrics = json.loads(out)  # the results are printed, not lost
    assert metrics["level"] == "BIN-L" and metrics["n"] > 0
    assert f"{run}: not writable" in err and "--out FOLDER" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == before
    phase2.evaluate(run=run, cache=cache, format="json", probe=False, out=tmp_path / "elsewhere")
    saved = json.loads((tmp_path / "elsewhere" / "metrics-test.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]


def test_evaluate_on_a_read_only_mount(small: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The same on a real read-only file system (EROFS), where mounting is permitted."""
    import shutil

    from saga.commands import phase2

    cache, run = small
    with mounted_tmpfs(tmp_path / "ro", "4m") as mnt:
        shutil.copytree(run, mnt / "run")
        remount(mnt, "ro")
        with pytest.raises(typer.Exit):
            phase2.evaluate(run=mnt / "run", cache=cache, format="json", probe=False)
        out, err = capsys.readouterr()
        assert json.loads(out)["n"] > 0 and "read-only file system" in err and "--out" in err


def test_messages_are_one_line_whatever_the_path_length(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a terminal (a log, a pipe): rich would wrap at 80 columns and break a long path in two."""
    from saga.commands.common import console, err

    path = "/tmp/" + "a-long-folder-name/" * 8 + "runs/stage1"
    err.print(f"reused: {path} already holds this finished run")
    console.print(f"stage-1 run: {path}")
    captured = capsys.readouterr()
    assert captured.err == f"reused: {path} already holds this finished run\n"
    assert captured.out == f"stage-1 run: {path}\n"


def test_the_cli_starts_without_torch_or_zarr() -> None:
    """`saga --help` and a bad flag answer in a second: torch and zarr load only in the command that needs them."""
    code = ("import sys, saga.cli; heavy = sorted(m for m in ('torch', 'zarr', 'faiss', 'sklearn') "
            "if m in sys.modules); print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


# --- a reader that goes away (`saga train 2>&1 | head -4`, a pager quit) -------------------------------------

def _saga_into_a_closed_pipe(args: list[str], stderr_too: bool, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI with stdout (and stderr when `stderr_too`) a pipe whose reader has gone before the first line, so
    every write to it fails with EPIPE whatever the timing; a stderr left open is captured."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "saga", *args], stdout=write,
                              stderr=write if stderr_too else subprocess.PIPE, text=True, timeout=300, cwd=cwd,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write)


def test_training_runs_to_the_end_when_its_reader_goes_away(small: tuple[Path, Path], tmp_path: Path) -> None:
    """rich turned the first epoch line into a closed pipe into a silent exit 1: the training stopped there."""
    cache, _ = small
    run = tmp_path / "run"
    proc = _saga_into_a_closed_pipe(["train", "--cache", str(cache), "--out", str(run), "--config",
                                     str(_small_toml(tmp_path)), "--epochs", "3", "--device", "cpu"], True, tmp_path)
    assert proc.returncode == 0
    assert (run / "done.json").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_extraction_ends_0_and_quietly_when_stdout_is_closed(tmp_path: Path, tiny_args: list[str]) -> None:
    """Its summary went into a closed pipe: exit 1 ("some videos failed") for a complete cache."""
    from conftest import make_video_tree

    from saga.cache.store import FeatureCache

    videos = make_video_tree(tmp_path / "v", per_class=1)
    proc = _saga_into_a_closed_pipe(["extract", "--videos", str(videos), "--out", str(tmp_path / "c"), *tiny_args],
                                    False, tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert len(FeatureCache.open(tmp_path / "c").ok_records()) == 3


def test_a_closed_stdout_is_pointed_at_dev_null_and_the_writer_goes_on(tmp_path: Path) -> None:
    from saga.commands.streams import GuardedStream

    read, write = os.pipe()
    os.close(read)
    stream = GuardedStream(os.fdopen(write, "w"))
    try:
        assert stream.write("lost\n") == 5
        stream.flush()  # EPIPE: the descriptor now writes to /dev/null
        stream.write("also lost\n")
        stream.flush()
        assert stream.gone and os.path.samefile(f"/proc/self/fd/{write}", os.devnull)
    finally:
        stream.close()


def test_predict_stops_quietly_once_its_reader_has_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its output is its whole product: it stops after the record that found the pipe closed (141, as `yes | head`
    leaves `yes`) instead of predicting the rest for nobody."""
    from types import SimpleNamespace

    from saga import cli
    from saga.commands import predict_cmds
    from saga.commands.streams import ReaderGone

    shown: list[str] = []
    monkeypatch.setattr(predict_cmds, "print_json", lambda obj: shown.append(obj["path"]))
    tally = predict_cmds.Tally(json=True)
    pred = SimpleNamespace(status="ok", warnings=[], to_dict=lambda: {"path": "a.mp4"})
    tally.show(pred)
    monkeypatch.setattr(predict_cmds, "reader_gone", lambda: True)
    with pytest.raises(ReaderGone):
        tally.show(pred)
    assert shown == ["a.mp4", "a.mp4"] and tally.done == 2
    with pytest.raises(SystemExit) as caught:
        cli._finish(ReaderGone())
    assert caught.value.code == 141
