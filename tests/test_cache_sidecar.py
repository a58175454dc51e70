"""The record-index sidecar (`manifest.index.npz`) of a received cache is untrusted: a crafted one is rebuilt
from the manifest, never decompressed without bound, never a traceback."""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from saga.cache import columns
from saga.cache.store import MANIFEST, FeatureCache

from test_cache_index import _odd_cache, _reference


def _cache_with_sidecar(tmp_path: Path) -> tuple[Path, Path]:
    root = _odd_cache(tmp_path)
    FeatureCache.open(root).records()  # writes the sidecars of the sealed parts
    return root, sorted(root.glob(f"parts/*/{columns.SIDECAR}"))[0]


def test_a_deflate_bomb_in_a_sidecar_is_never_decompressed(tmp_path: Path) -> None:
    """A member of a few KB that inflates to 64 MiB (the manifest's key matches): rebuilt from the manifest
    without inflating it (it used to decompress every member before any check)."""
    root, sidecar = _cache_with_sidecar(tmp_path)
    want = _reference(root)
    with np.load(sidecar) as npz:
        members = {k: npz[k] for k in npz.files}
    members["path_blob"] = np.zeros(64 << 20, np.uint8)
    with open(sidecar, "wb") as fh:
        np.savez_compressed(fh, **members)
    assert sidecar.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        got = list(FeatureCache.open(root).records())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == want
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated reading a 64 MiB bomb"


def _sizes_claimed(sidecar: Path, size: int) -> None:
    """Patch every member's uncompressed size in the central directory (the headers a reader trusts)."""
    raw = bytearray(sidecar.read_bytes())
    with zipfile.ZipFile(sidecar) as zf:
        infos = zf.infolist()
    start = raw.find(b"PK\x01\x02")
    for _ in infos:
        raw[start + 24:start + 28] = size.to_bytes(4, "little")
        n, m, k = (int.from_bytes(raw[start + o:start + o + 2], "little") for o in (28, 30, 32))
        start += 46 + n + m + k
    sidecar.write_bytes(bytes(raw))


def test_a_sidecar_whose_headers_claim_huge_members_is_rebuilt(tmp_path: Path) -> None:
    root, sidecar = _cache_with_sidecar(tmp_path)
    _sizes_claimed(sidecar, 0xFFFF0000)
    key = columns._manifest_key(sidecar.with_name(MANIFEST))
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: object, *args: object, **kw: object) -> object:
        opened.append(str(name))
        return real_open(self, name, *args, **kw)

    zipfile.ZipFile.open = spy  # type: ignore[method-assign]
    try:
        assert columns._read_sidecar(sidecar, key) is None
    finally:
        zipfile.ZipFile.open = real_open  # type: ignore[method-assign]
    assert opened == []  # refused from the directory alone
    assert list(FeatureCache.open(root).records()) == _reference(root)


def _crafted(cols: columns.PartColumns, case: str) -> columns.PartColumns:
    arrays, tables = dict(cols.arrays), {k: list(v) for k, v in cols.tables.items()}
    if case == "labels not JSON":
        tables["labels"] = ["{not json"] * len(tables["labels"])
    elif case == "labels a list":
        tables["labels"] = ["[1, 2]"] * len(tables["labels"])
    elif case == "labels nested deeply":
        tables["labels"] = ["[" * 100_000] * len(tables["labels"])
    elif case == "status code out of range":
        arrays["status"] = np.full_like(arrays["status"], 200)
    elif case == "path offsets past the blob":
        arrays["path_offsets"] = arrays["path_offsets"] * 1000
    elif case == "a short column":
        arrays["size"] = arrays["size"][:1]
    elif case == "generator a number":
        tables["generator"] = [7] * len(tables["generator"])
    elif case == "checksums not bytes":
        arrays["checksum"] = arrays["checksum"].astype(np.int16)
    elif case == "n_frames negative":
        arrays["n_frames"] = np.full_like(arrays["n_frames"], -7)
    elif case == "fps NaN":
        tables["fps"] = [float("nan")] * len(tables["fps"])
    elif case == "an extra not keyed by a row":
        return columns.PartColumns(arrays, tables, {"\u00b2": {"note": 1}})  # type: ignore[dict-item]
    return columns.PartColumns(arrays, tables, cols.extra)


CASES = ["labels not JSON", "labels a list", "labels nested deeply", "status code out of range",
         "path offsets past the blob", "a short column", "generator a number", "checksums not bytes",
         "an extra not keyed by a row", "n_frames negative", "fps NaN"]


@pytest.mark.parametrize("case", CASES)
def test_a_crafted_sidecar_with_a_valid_digest_is_rebuilt_from_the_manifest(tmp_path: Path, case: str) -> None:
    """The digest only proves the file is whole, not that saga wrote it: its tables and columns are checked
    too (a malformed label table was a JSONDecodeError traceback, bad codes an IndexError or wrong records)."""
    root, sidecar = _cache_with_sidecar(tmp_path)
    want = _reference(root)
    manifest = sidecar.with_name(MANIFEST)
    key = columns._manifest_key(manifest)
    columns._write_sidecar(sidecar, key, _crafted(columns.PartColumns.parse(manifest), case))
    assert columns._read_sidecar(sidecar, key) is None
    assert list(FeatureCache.open(root).records()) == want
