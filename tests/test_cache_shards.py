"""The direct shard reader returns exactly what zarr returns, and hands zarr what it does not understand."""

from __future__ import annotations

import json
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr

from saga.cache.shards import ArrayReader, Layout
from saga.cache.store import FeatureCache, next_part_name
from saga.errors import SagaError

from test_cache import fill, provenance

N_VIDEOS, SHARD = 20, 32  # W=2: 40 rows, 2 shards of 2 inner chunks (16 rows), the last one partial


def _part(tmp_path: Path) -> tuple[FeatureCache, Path]:
    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    fill(cache, N_VIDEOS, shard_rows=SHARD)
    cache = FeatureCache.open(tmp_path / "c")
    return cache, tmp_path / "c" / "parts" / next_part_name(cache, pass_id=1)


def _same_as_zarr(folder: Path, name: str, rows: np.ndarray | None = None) -> ArrayReader:
    arr = zarr.open_array(zarr.storage.LocalStore(folder / name, read_only=True), mode="r")
    reader = ArrayReader(folder / name, arr)
    n = arr.shape[0]
    np.testing.assert_array_equal(reader.block(0, n), arr[:])
    for start, stop in ((0, SHARD), (SHARD, n), (5, 37), (3, 4)):
        got, want = reader.block(start, stop), arr[start:stop]
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    rows = np.unique(np.random.default_rng(0).integers(0, n, 15)) if rows is None else rows
    assert reader.take(rows).tobytes() == arr.get_orthogonal_selection((rows,)).tobytes()
    return reader


def test_direct_reads_are_byte_identical_to_zarr(tmp_path: Path) -> None:
    _, folder = _part(tmp_path)
    for name in ("features", "mask", "timestamps"):
        assert _same_as_zarr(folder, name).direct


def test_inner_chunks_out_of_order_and_missing_objects(tmp_path: Path) -> None:
    """A shard whose inner chunks are stored in another order (another writer) and a deleted shard."""
    _, folder = _part(tmp_path)
    shard = folder / "features" / "c" / "0" / "0" / "0"
    raw = shard.read_bytes()
    chunk = (len(raw) - 2 * 16 - 4) // 2
    index = np.array([[chunk, chunk], [0, chunk]], "<u8").tobytes()  # chunk 1 first in the file
    shard.write_bytes(raw[chunk:2 * chunk] + raw[:chunk] + index + google_crc32c.value(index).to_bytes(4, "little"))
    _same_as_zarr(folder, "features")
    (folder / "features" / "c" / "1" / "0" / "0").unlink()
    (folder / "mask" / "c" / "1" / "0").unlink()
    _same_as_zarr(folder, "features")
    _same_as_zarr(folder, "mask")


def test_unknown_layouts_and_damaged_indexes_go_to_zarr(tmp_path: Path) -> None:
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "g"), mode="w", zarr_format=3)
    data = np.random.default_rng(1).standard_normal((40, 4, 8)).astype(np.float16)
    transpose = [zarr.codecs.TransposeCodec(order=(0, 2, 1))]
    for name, kw in {"zstd": dict(compressors=zarr.codecs.ZstdCodec()),
                     "split": dict(chunks=(8, 2, 8), compressors=None),
                     "transposed": dict(compressors=None, filters=transpose)}.items():
        group.create_array(name, shape=data.shape, dtype="float16", chunks=kw.pop("chunks", (8, 4, 8)), **kw)[:] = data
        reader = ArrayReader(tmp_path / "g" / name, group[name])
        assert not reader.direct
        np.testing.assert_array_equal(reader.block(0, 40), data)
        np.testing.assert_array_equal(reader.take(np.array([1, 9, 30])), data[[1, 9, 30]])
    assert Layout.parse({"zarr_format": 2}) is None
    _, folder = _part(tmp_path)
    shard = folder / "features" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF  # the index checksum: the direct reader must not trust it, zarr decides
    shard.write_bytes(bytes(raw))
    arr = zarr.open_array(zarr.storage.LocalStore(folder / "features", read_only=True), mode="r")
    reader = ArrayReader(folder / "features", arr)
    try:
        want = arr[0:SHARD]
    except Exception as exc:  # zarr refuses the shard: so must we, in one line naming the array and zarr's reason
        with pytest.raises(SagaError, match=r"features: damaged chunk data \(") as refused:
            reader.block(0, SHARD)
        assert str(exc).splitlines()[0][:40] in str(refused.value)
    else:
        np.testing.assert_array_equal(reader.block(0, SHARD), want)


def test_crc32c_is_the_fast_check_and_blake2b_decides(tmp_path: Path) -> None:
    cache, folder = _part(tmp_path)
    recs = cache.ok_records()
    assert all(len(r.crc32c) == 8 for r in recs)
    manifest = folder / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["crc32c"] = "00000000"  # a wrong fast checksum, the blake2b still right: the read passes
    manifest.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    cache = FeatureCache.open(tmp_path / "c")
    cache.read(cache.ok_records())
    shard = folder / "features" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0x01  # one flipped bit in the first record's features
    shard.write_bytes(bytes(raw))
    cache = FeatureCache.open(tmp_path / "c")
    with pytest.raises(SagaError, match="do not match their checksum"):
        cache.read(cache.ok_records())
    with pytest.raises(SagaError, match="do not match their checksum"):
        [cache.read_shard(ref) for ref in cache.shards(cache.ok_records())]
    assert len(cache.verify()) == 1


def _claiming(tmp_path: Path, rows: int) -> FeatureCache:
    """A cache whose arrays' zarr.json claim `rows` rows per shard, with the stored shards deleted."""
    cache, folder = _part(tmp_path)
    for name in ("features", "mask", "timestamps"):
        meta = json.loads((folder / name / "zarr.json").read_text())
        meta["shape"][0] = meta["chunk_grid"]["configuration"]["chunk_shape"][0] = rows
        if meta["codecs"][0]["name"] == "sharding_indexed":  # inner chunks as large: no index to store
            meta["codecs"][0]["configuration"]["chunk_shape"][0] = rows
        (folder / name / "zarr.json").write_text(json.dumps(meta))
        for obj in [p for p in (folder / name / "c").rglob("*") if p.is_file()]:
            obj.unlink()
    return FeatureCache.open(cache.root)


@pytest.mark.parametrize("far", [False, True])
def test_a_crafted_shard_size_allocates_only_the_rows_read(tmp_path: Path, far: bool) -> None:
    """zarr.json claiming 4M rows per shard, stored nowhere: a read used to allocate every claimed row (256 MB
    here, tens of GB at real sizes); far: a record moved to the shard's last row, so the span between is huge."""
    import tracemalloc

    cache = _claiming(tmp_path, 4_000_000)
    if far:
        manifest = next((cache.root / "parts").glob("*/manifest.jsonl"))
        lines = manifest.read_text().splitlines()
        first = json.loads(lines[0])
        lines[0] = json.dumps({**first, "row": 4_000_000 - first["windows"]})
        manifest.write_text("\n".join(lines) + "\n")
        (manifest.parent / "manifest.index.npz").unlink(missing_ok=True)
        cache = FeatureCache.open(cache.root)
    records = cache.ok_records()
    tracemalloc.start()
    try:
        bad = cache.verify()
        with pytest.raises(SagaError):
            cache.read(records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(bad) == len(records) and peak < 16 * 2**20, peak
