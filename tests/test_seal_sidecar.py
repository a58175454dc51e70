"""The record index's sidecar (`manifest.index.npz`) is keyed on the manifest's size, mtime, inode and ctime: an
edit of a sealed manifest that keeps its size and puts its mtime back (`touch -r`, `cp -p` / `rsync -t` of an
edited copy) used to keep the stale digest, so every reader's seal check passed the edited label."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from saga.cache import columns
from saga.cache.sealcheck import check_seals
from saga.cache.store import FeatureCache
from saga.errors import SagaError


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    from test_train import build_cache

    cache = build_cache(tmp_path_factory.mktemp("sealed") / "c", real=4, per_gen=1)
    FeatureCache.open(cache.root).records()  # writes each sealed part's sidecar
    return cache


def _copy(cache: FeatureCache, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the cache (times kept) opened once, so its sidecars hold its own keys; its first manifest."""
    root = tmp_path / "cache"
    shutil.copytree(cache.root, root)
    check_seals(FeatureCache.open(root))
    manifest = sorted(root.glob("parts/*/manifest.jsonl"))[0]
    assert manifest.with_name(columns.SIDECAR).is_file()
    return root, manifest


def _swapped(manifest: Path) -> bytes:
    """The manifest with its first record's BIN-L label swapped for one of the same length."""
    raw = manifest.read_bytes()
    first = raw.index(b"\n")
    line = raw[:first].replace(b'"BIN-L":"real"', b'"BIN-L":"fake"')
    assert len(line) == first and line != raw[:first]
    return line + raw[first:]


def _past_ctime_of(path: Path, probe: Path) -> None:
    """Wait until the file system's clock has moved past `path`'s ctime (a coarse clock ticks every few ms), so
    that a write now gives it another ctime: the one thing this test relies on, checked, not assumed."""
    for _ in range(2000):
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > path.stat().st_ctime_ns:
            return
        time.sleep(0.001)
    pytest.fail("the file system's ctime did not move in 2 s")


def _refused(root: Path, part: str) -> None:
    with pytest.raises(SagaError, match=rf"part {part}'s manifest.jsonl changed since it was sealed"):
        check_seals(FeatureCache.open(root))


def test_an_edit_keeping_size_and_mtime_is_refused(sealed: FeatureCache, tmp_path: Path) -> None:
    root, manifest = _copy(sealed, tmp_path)
    before = manifest.stat()
    edited = _swapped(manifest)
    _past_ctime_of(manifest, tmp_path / "probe")
    with open(manifest, "r+b") as fh:  # in place: the same inode
        fh.write(edited)
    os.utime(manifest, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    after = manifest.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    _refused(root, manifest.parent.name)


def test_an_edited_copy_put_in_place_with_its_mtime_is_refused(sealed: FeatureCache, tmp_path: Path) -> None:
    """`cp -p edited manifest.jsonl`, `rsync -t`: another file (inode) with the old size and mtime."""
    root, manifest = _copy(sealed, tmp_path)
    before = manifest.stat()
    copy = tmp_path / "edited.jsonl"
    copy.write_bytes(_swapped(manifest))
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(copy, manifest)
    _refused(root, manifest.parent.name)


def test_a_copied_cache_is_parsed_once_then_read_from_its_sidecars(sealed: FeatureCache, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of the stricter key: a copy (new inodes and ctimes) parses each part once, not every time."""
    root = tmp_path / "cache"
    shutil.copytree(sealed.root, root)
    parsed: list[Path] = []
    real = columns.PartColumns.parse.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(columns.PartColumns, "parse", classmethod(lambda cls, m: parsed.append(m) or real(cls, m)))
    check_seals(FeatureCache.open(root))
    assert len(parsed) == len(FeatureCache.open(root).part_names()) == 2
    check_seals(FeatureCache.open(root))
    assert len(parsed) == 2
