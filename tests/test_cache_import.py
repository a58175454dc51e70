"""`saga cache import` builds the cache in a hidden folder beside --out and renames it into place once it
opens and verifies: concurrent, failed and killed imports never leave (or remove) a cache at --out; killed
imports' and exports' temporaries are swept (QA cachetools 1, 2, 4, 5)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ended_writers_temp
from saga import cli
from saga.cache import export
from saga.cache.export import digest, export_h5, import_h5
from saga.cache.store import FeatureCache, PartWriter
from saga.errors import SagaError
from test_cache_export_fixes import exported


def dead_pid() -> int:
    """The PID of a process that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def edited(path: Path, edit) -> Path:  # noqa: ANN001 - edit(attrs, manifest lines)
    """`path` with its attributes or manifest edited and its digest recomputed (the digest is not a MAC)."""
    with h5py.File(path, "a") as h5:
        attrs, manifest = json.loads(h5.attrs["saga"]), list(h5["manifest"].asstr()[:])
        edit(attrs, manifest)
        h5.attrs["saga"] = json.dumps(attrs)
        del h5["manifest"]
        h5.create_dataset("manifest", data=np.array(manifest, dtype=object), dtype=h5py.string_dtype())
        h5.attrs["digest"] = digest(h5.attrs["saga"], manifest, list(h5["splits"].asstr()[:]))
    return path


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name)


def test_while_an_import_writes_out_holds_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = exported(tmp_path), tmp_path / "imp"
    seen: list[bool] = []
    close = PartWriter.close

    def closing(self: PartWriter) -> None:  # the last write of the import: a SIGKILL here must leave no cache
        seen.append((out / "zarr.json").exists() or (out / "parts").exists())
        close(self)

    monkeypatch.setattr(PartWriter, "close", closing)
    assert len(import_h5(path, out).records()) == 3
    assert seen == [False] and leftovers(tmp_path) == []


def test_a_killed_imports_hidden_folder_is_removed_and_the_import_rerun(tmp_path: Path) -> None:
    path, out = exported(tmp_path), tmp_path / "imp"
    stale = tmp_path / f".imp.tmp-{dead_pid()}"
    shutil.copytree(tmp_path / "c", stale)  # half a cache, as a SIGKILL leaves it
    assert len(import_h5(path, out).records()) == 3
    assert not stale.exists() and leftovers(tmp_path) == []


def test_a_second_import_into_the_same_out_is_refused_in_one_line(tmp_path: Path) -> None:
    path, out = exported(tmp_path), tmp_path / "imp"
    running = tmp_path / f".imp.tmp-{os.getppid()}"  # another import, still running
    running.mkdir()
    with pytest.raises(SagaError, match=f"imp: another `saga cache import` into it is running \\(process "
                                        f"{os.getppid()}\\)"):
        import_h5(path, out)
    assert running.is_dir() and not out.exists()


def test_a_cache_published_meanwhile_is_neither_removed_nor_doubled(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = exported(tmp_path), tmp_path / "imp"
    first = import_h5(path, tmp_path / "first").root
    check = export._check_imported

    def other_import_finishes_first(*args: object) -> None:
        shutil.copytree(first, out)  # the concurrent import that wins the race publishes its cache
        check(*args)

    monkeypatch.setattr(export, "_check_imported", other_import_finishes_first)
    with pytest.raises(SagaError, match="imp: something was written there while this import ran"):
        import_h5(path, out)
    cache = FeatureCache.open(out)
    assert cache.part_names() == ["p000001-r000"] and len(cache.records()) == 3
    assert cache.check_structure()[0] == [] and cache.verify() == [] and leftovers(tmp_path) == []


def test_a_failed_import_never_removes_the_cache_another_one_published(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = exported(tmp_path), tmp_path / "imp"
    first = import_h5(path, tmp_path / "first").root
    bad = tmp_path / "bad.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as h5:
        h5["features"][2, 0, 0, 0] += 1  # the last row: found damaged after the others were written
    add = PartWriter.add

    def another_import_publishes(self: PartWriter, *args: object) -> None:
        if not out.exists():
            shutil.copytree(first, out)
        add(self, *args)

    monkeypatch.setattr(PartWriter, "add", another_import_publishes)
    with pytest.raises(SagaError, match="the file is damaged"):
        import_h5(bad, out)
    cache = FeatureCache.open(out)
    assert len(cache.records()) == 3 and cache.verify() == [] and leftovers(tmp_path) == []


def test_an_export_the_cache_would_refuse_imports_nothing(tmp_path: Path) -> None:
    path = exported(tmp_path)

    def other_split(_: dict, manifest: list[str]) -> None:
        entry = json.loads(manifest[0])
        entry["split"] = "test"  # the split plan says train
        manifest[0] = json.dumps(entry)

    for name in ("t.h5", "s.h5"):
        shutil.copy(path, tmp_path / name)
    no_taxonomy = edited(tmp_path / "t.h5", lambda attrs, _: attrs.pop("taxonomy"))
    for bad, said in ((no_taxonomy, "taxonomy is missing or not valid"),
                      (edited(tmp_path / "s.h5", other_split), "differs from the split plan")):
        with pytest.raises(SagaError, match=said):
            import_h5(bad, tmp_path / "imp")
        assert not (tmp_path / "imp").exists() and leftovers(tmp_path) == []
    assert len(import_h5(path, tmp_path / "imp").records()) == 3  # the folder is free for a good import


def test_an_interrupted_import_says_nothing_was_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path, out = exported(tmp_path), tmp_path / "imp"

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM (the CLI raises a KeyboardInterrupt)

    monkeypatch.setattr(PartWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        import_h5(path, out)
    assert not out.exists() and leftovers(tmp_path) == []
    try:  # as typer hands it to the CLI: Exit(130) from the interrupt, then SystemExit
        try:
            raise SystemExit(130) from caught.value
        except SystemExit as exc:
            cli._interrupted(exc)
    except SystemExit:
        pass
    assert capsys.readouterr().err.strip() == f"interrupted: nothing was imported into {out}; rerun the same command"


def test_a_killed_exports_temporary_files_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    path = exported(tmp_path)
    stale, live = tmp_path / f".c.h5.tmp-{dead_pid()}", tmp_path / f".c.h5.tmp-{os.getppid()}"
    other = tmp_path / f".notes.h5.tmp-{dead_pid()}"  # another file's: not this export's to judge
    for tmp in (stale, live, other):
        tmp.write_bytes(b"half an export")
    export_h5(FeatureCache.open(tmp_path / "c"), path)
    assert not stale.exists() and live.exists() and other.exists()


def test_an_import_on_another_host_is_left_alone_and_named(tmp_path: Path) -> None:
    """Machines sharing the disk: the hidden folder of an import on another host was judged by its PID here and
    removed under it when that PID was free here. Its owner cannot be checked from here: the import is refused,
    naming the host and the folder to delete if that import was killed."""
    path, out = exported(tmp_path), tmp_path / "imp"
    theirs = ended_writers_temp(out.resolve(), host="node-7.cluster")
    shutil.copytree(tmp_path / "c", theirs)  # half a cache
    with pytest.raises(SagaError, match=r"imp: another `saga cache import` into it is running \(process \d+ on host "
                                        r"node-7\.cluster; if that import is no longer running, delete "
                                        f"{re.escape(str(theirs))}\\); wait for it to finish"):
        import_h5(path, out)
    assert theirs.is_dir() and not out.exists()
    shutil.rmtree(theirs)  # as the error says, once that import is known to be dead
    assert len(import_h5(path, out).records()) == 3


KILLED_CREATING = """
import os, signal, sys
from pathlib import Path
from saga.cache import store
from saga.cache.export import import_h5

def killed(tmp, target):  # the instant its empty hidden cache exists, before it is moved into place
    os.kill(os.getpid(), signal.SIGKILL)

store._publish = killed
import_h5(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_an_import_killed_as_it_creates_its_empty_cache_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    """A SIGKILL right as the import created its empty cache left `..OUT.tmp-PID.tmp-PID-TID` (the creation's own
    hidden folder, beside the import's) that no import or sweep matched: it stayed for ever."""
    path, out = exported(tmp_path), tmp_path / "imp"
    proc = subprocess.run([sys.executable, "-c", KILLED_CREATING, str(path), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [name for name in leftovers(tmp_path) if name.startswith("..imp.tmp-")]  # what the kill left
    assert len(import_h5(path, out).records()) == 3
    assert leftovers(tmp_path) == []


# --- hostile sizes: a small file must not make the import allocate what it only claims ---------------------------

def _claiming(path: Path, name: str) -> Path:
    """`path` with one dataset replaced by a huge one whose bytes are stored nowhere (HDF5 reads its fill value)."""
    with h5py.File(path, "a") as h5:
        n = h5["features"].shape[0]
        del h5[name]
        if name == "features":  # each row claims 2 GB of float16
            h5.create_dataset(name, (n, 1000, 1000, 1000), np.float16, chunks=(1, 1, 1000, 1000))
        else:  # 10^9 manifest lines
            h5.create_dataset(name, (10**9,), dtype=h5py.string_dtype(), chunks=(10**6,))
    return path


@pytest.mark.parametrize("name", ["features", "manifest", "splits"])
def test_an_export_claiming_huge_arrays_is_refused_before_reading_them(tmp_path: Path, name: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _claiming(exported(tmp_path), name)
    assert path.stat().st_size < 100_000
    read = h5py.Dataset.__getitem__

    def bounded(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - a read of a huge claim is the bug
        assert self.size * self.dtype.itemsize < 2**20, f"read of {self.name} {self.shape} before any check"
        return read(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", bounded)
    with pytest.raises(SagaError) as err:
        import_h5(path, tmp_path / "imp")
    assert str(path) in str(err.value) and "export it again" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "imp").exists()


@pytest.mark.parametrize("field, value", [("n_frames", 10**30), ("size", "12"), ("fps", float("nan"))])
def test_an_export_whose_record_a_cache_cannot_hold_is_refused(tmp_path: Path, field: str, value: object) -> None:
    """Imported unchecked, a crafted 10**30 (or a wrong type) made a cache whose every read then failed."""
    def edit(attrs: dict, manifest: list[str]) -> None:
        manifest[0] = json.dumps({**json.loads(manifest[0]), field: value})

    path = edited(exported(tmp_path), edit)
    with pytest.raises(SagaError) as err:
        import_h5(path, tmp_path / "imp")
    text = str(err.value)
    assert text.startswith(f"{path}: damaged saga cache export") and f"field {field!r} must be" in text
    assert "\n" not in text and not (tmp_path / "imp").exists()
