"""Reliability (issue #9), the feature cache: sealed parts, checked reads, NaN refused, export/import.

Each case of docs/reliability.md is proven in one of the tests/test_reliability_*.py files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_saga
from saga.errors import SagaError

# --- cache integrity -----------------------------------------------------------------------------------------

def make_cache(tmp_path: Path, parts: int = 2):
    """A cache of `parts` sealed parts (4, 5, ... records) under tmp_path/c."""
    from test_cache import fill, provenance

    from saga.cache.store import FeatureCache

    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    for seed in range(parts):
        fill(cache, 4 + seed, shard_rows=4, seed=seed)
    return FeatureCache.open(tmp_path / "c")


def _manifests(root: Path) -> list[Path]:
    from saga.cache.store import MANIFEST

    return sorted((root / "parts").glob("*/" + MANIFEST))


def test_a_clean_cache_has_no_structural_errors(tmp_path: Path) -> None:
    assert make_cache(tmp_path).check_structure() == ([], [])


def test_verify_fails_on_a_manifest_truncated_mid_line(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    manifest = _manifests(cache.root)[0]
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2])
    errors, _ = type(cache).open(cache.root).check_structure()
    assert any("changed since it was sealed" in e for e in errors), errors
    proc = run_saga("cache", "verify", str(cache.root))
    assert proc.returncode == 1 and "truncated or edited" in proc.stderr


def test_verify_fails_on_a_deleted_part(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    shutil.rmtree(_manifests(cache.root)[1].parent)
    errors, _ = type(cache).open(cache.root).check_structure()
    assert any("is missing" in e for e in errors), errors


def test_verify_fails_on_an_edited_label_or_split(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    manifest = _manifests(cache.root)[0]
    manifest.write_text(manifest.read_text().replace('"split":"train"', '"split":"test"', 1))
    errors, _ = type(cache).open(cache.root).check_structure()
    assert any("changed since it was sealed" in e for e in errors), errors


@pytest.mark.parametrize("edit", [("dim", 16), ("sampling", {"frames": 9, "mode": "consecutive", "windows": 2})])
def test_edited_cache_attributes_are_named(tmp_path: Path, edit: tuple) -> None:
    from saga.cache.store import FeatureCache

    cache = make_cache(tmp_path)
    meta = cache.root / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["saga"][edit[0]] = edit[1]
    meta.write_text(json.dumps(doc))
    cache = FeatureCache.open(cache.root)
    assert any("zarr.json was edited" in e for e in cache.check_structure()[0])
    with pytest.raises(SagaError, match="zarr.json was edited"):
        cache.read(cache.ok_records()[:1])


def test_reads_refuse_corrupt_bytes_naming_the_record(tmp_path: Path) -> None:
    from saga.cache.store import FeatureCache

    cache = make_cache(tmp_path, parts=1)
    shard = sorted(cache.root.glob("parts/*/features/c/1/0/0"))[0]
    raw = bytearray(shard.read_bytes())
    raw[10:20] = bytes(x ^ 0xFF for x in raw[10:20])
    shard.write_bytes(bytes(raw))
    cache = FeatureCache.open(cache.root)
    with pytest.raises(SagaError, match=r"real/v2.mp4 .*do not match their checksum"):
        cache.read(cache.ok_records())
    with pytest.raises(SagaError, match="do not match their checksum"):
        for ref in cache.shards(cache.ok_records()):
            cache.read_shard(ref)


def test_nan_features_are_never_stored(tmp_path: Path) -> None:
    from test_cache import W, T, D, provenance, record

    from saga.cache.store import FeatureCache, PartWriter, next_part_name

    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    writer = PartWriter(cache, next_part_name(cache), capacity=2 * W, shard_rows=2)
    feats = np.ones((W, T, D), np.float16)
    writer.add(record(0), feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    feats[0, 0, 0] = np.nan
    writer.add(record(1), feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    recs = {r.path: r for r in FeatureCache.open(tmp_path / "c").records()}
    assert recs["real/v0.mp4"].ok and not recs["real/v1.mp4"].ok
    assert "NaN" in recs["real/v1.mp4"].error


def test_nan_rows_written_behind_our_back_are_a_data_error(tmp_path: Path) -> None:
    """A NaN row whose checksum matches (e.g. an old cache) is named as a data error, not a learning rate."""
    from saga.cache.manifest import feature_checksum

    cache = make_cache(tmp_path, parts=1)
    recs = cache.ok_records()[:1]
    data = cache.read(recs)
    data["features"][0, 0, 0, 0] = np.nan
    recs[0].checksum = feature_checksum(data["features"][0], data["mask"][0], data["timestamps"][0])
    with pytest.raises(SagaError, match="NaN/inf .*data error"):
        cache.check_rows(recs, data)


def test_export_refuses_a_damaged_cache_and_a_bad_import_leaves_nothing(tmp_path: Path) -> None:
    from saga.cache.export import export_h5, import_h5
    from saga.cache.store import FeatureCache

    cache = make_cache(tmp_path)
    good = tmp_path / "good.h5"
    export_h5(cache, good)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SagaError):
        import_h5(bad, tmp_path / "imported")
    assert not (tmp_path / "imported" / "zarr.json").exists()
    assert len(import_h5(good, tmp_path / "imported").ok_records()) == len(cache.ok_records())
    shutil.rmtree(_manifests(cache.root)[1].parent)
    with pytest.raises(SagaError, match="refusing to export a damaged cache"):
        export_h5(FeatureCache.open(cache.root), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("damage", ["shard index", "truncated mask chunk"])
def test_damage_that_zarr_itself_must_read_is_one_line_naming_the_array(tmp_path: Path, damage: str) -> None:
    """saga hands a chunk it cannot parse to zarr, whose codec errors used to escape as tracebacks."""
    from saga.cache.store import FeatureCache

    cache = make_cache(tmp_path, parts=1)
    if damage == "shard index":  # the index sits at the end of a shard, with its own crc32c
        shard = sorted(cache.root.glob("parts/*/features/c/1/0/0"))[0]
        raw = bytearray(shard.read_bytes())
        raw[-10] ^= 1
        shard.write_bytes(bytes(raw))
        array = "features"
    else:
        chunk = sorted(cache.root.glob("parts/*/mask/c/0/0"))[0]
        chunk.write_bytes(chunk.read_bytes()[:10])
        array = "mask"
    cache = FeatureCache.open(cache.root)
    with pytest.raises(SagaError, match=rf"/{array}: damaged chunk data .*`saga cache verify`") as caught:
        cache.read(cache.ok_records())
    assert "\n" not in str(caught.value)
    proc = run_saga("cache", "export", str(cache.root), "--h5", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_verify_reports_every_record_of_an_unreadable_part_and_still_checks_the_others(tmp_path: Path) -> None:
    from test_cache import fill

    cache = make_cache(tmp_path, parts=1)  # part 1: v0-v3
    fill(cache, 5, shard_rows=4, seed=1, start=10)  # part 2: v10-v14
    first, second = (m.parent for m in _manifests(cache.root))
    (first / "zarr.json").unlink()
    shard = sorted(second.glob("features/c/0/0/0"))[0]
    raw = bytearray(shard.read_bytes())
    raw[10:20] = bytes(x ^ 0xFF for x in raw[10:20])
    shard.write_bytes(bytes(raw))
    proc = run_saga("cache", "verify", str(cache.root))
    named = [line for line in proc.stderr.splitlines() if line.startswith("corrupt ") and "(part " in line]
    assert proc.returncode == 1
    assert sum(first.name in line for line in named) == 4  # it used to name one record, of the wrong part
    assert any(second.name in line and "checksum mismatch" in line for line in named)  # and stop there


def test_import_refuses_an_export_with_cut_rows_or_changed_values(tmp_path: Path) -> None:
    import h5py

    from saga.cache.export import export_h5, import_h5

    cache = make_cache(tmp_path)
    good = tmp_path / "good.h5"
    export_h5(cache, good)
    for damage in ("cut", "nan"):
        bad = tmp_path / f"{damage}.h5"
        shutil.copy(good, bad)
        with h5py.File(bad, "r+") as h5:
            if damage == "cut":  # rows cut while the manifest still lists every ok record
                for key in ("features", "mask", "timestamps"):
                    rows = h5[key][:-2]
                    del h5[key]
                    h5.create_dataset(key, data=rows)
            else:
                rows = h5["features"][1]
                rows.flat[0] = np.nan
                h5["features"][1] = rows
        with pytest.raises(SagaError, match=f"{bad}: the file is damaged"):
            import_h5(bad, tmp_path / damage)
        assert not (tmp_path / damage / "zarr.json").exists()


def test_import_into_a_path_under_a_file_blames_the_path_not_the_export(tmp_path: Path) -> None:
    from saga.cache.export import export_h5, import_h5

    export_h5(make_cache(tmp_path), tmp_path / "good.h5")
    (tmp_path / "afile").write_text("")
    with pytest.raises(SagaError, match=r"afile: exists and is not a folder"):
        import_h5(tmp_path / "good.h5", tmp_path / "afile" / "sub")


def test_verify_names_a_corrupt_manifest_line_and_the_part_it_breaks(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    manifest = _manifests(cache.root)[0]
    lines = manifest.read_text().splitlines(keepends=True)
    lines[1] = '{"path": 1}\n'
    manifest.write_text("".join(lines))
    proc = run_saga("cache", "verify", str(cache.root))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{manifest}:2: corrupt manifest line" in proc.stderr and "changed since it was sealed" in proc.stderr


def test_info_on_a_cache_with_a_number_its_columns_cannot_hold_is_one_line(tmp_path: Path) -> None:
    """A hand-edited n_frames of 10**30 passed the type check, then every read was an OverflowError traceback."""
    cache = make_cache(tmp_path, parts=1)
    manifest = _manifests(cache.root)[0]
    lines = manifest.read_text().splitlines(keepends=True)
    lines[1] = json.dumps({**json.loads(lines[1]), "n_frames": 10**30}) + "\n"
    manifest.write_text("".join(lines))
    proc = run_saga("cache", "info", str(cache.root))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"{manifest}:2: corrupt manifest line (field 'n_frames' must be an integer from 0 to" in proc.stderr
    assert "restore the file" in proc.stderr


# --- caches made before parts were sealed --------------------------------------------------------------------

def test_an_unsealed_cache_warns_once_and_says_how_to_check_it(tmp_path: Path) -> None:
    import warnings

    from saga.cache.store import PARTS_LOG, SEAL, FeatureCache
    from saga.runs import make_provenance, unsealed_parts

    cache = make_cache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_provenance(cache, 0)  # sealed: silent
    (cache.root / PARTS_LOG).unlink()  # what an older saga left: no parts log, no seals
    for seal in cache.root.glob(f"parts/*/{SEAL}"):
        seal.unlink()
    cache = FeatureCache.open(cache.root)
    assert len(unsealed_parts(cache)) == 2
    with pytest.warns(UserWarning, match=rf"{cache.root}: 2 of 2 part\(s\) are not sealed \(made by an older saga"
                                         rf".*check and seal them with `saga cache verify --seal {cache.root}`") as caught:
        make_provenance(cache, 0)
        make_provenance(cache, 0)  # once per cache and process
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


def test_verify_seal_seals_an_old_caches_parts_only_when_every_check_passes(tmp_path: Path) -> None:
    from saga.cache.store import PARTS_LOG, SEAL, FeatureCache
    from saga.locks import lock_folder, unlock_folder
    from saga.runs import unsealed_parts

    cache = make_cache(tmp_path)
    (cache.root / PARTS_LOG).unlink()  # what an older saga left: no parts log, no seals
    for seal in cache.root.glob(f"parts/*/{SEAL}"):
        seal.unlink()
    feature = next(cache.root.glob("parts/*/features/c/*/*/*"))
    good = feature.read_bytes()
    feature.write_bytes(bytes(len(good)))  # one record's bytes zeroed: nothing may be sealed
    proc = run_saga("cache", "verify", "--seal", str(cache.root))
    assert proc.returncode == 1 and "sealed" not in proc.stdout
    assert len(unsealed_parts(FeatureCache.open(cache.root))) == 2
    feature.write_bytes(good)
    lock_folder(cache.root, "an extraction is writing it")  # its part is unsealed because it is being written
    try:
        proc = run_saga("cache", "verify", "--seal", str(cache.root))
    finally:
        unlock_folder(cache.root)
    assert proc.returncode == 2 and "another saga extract is writing this cache right now" in proc.stderr
    proc = run_saga("cache", "verify", "--seal", str(cache.root), check=True)
    assert "sealed 2 part(s)" in proc.stdout
    cache = FeatureCache.open(cache.root)
    assert unsealed_parts(cache) == [] and cache.check_structure() == ([], [])
    manifest = _manifests(cache.root)[0]  # from now on an edit is detected
    manifest.write_text(manifest.read_text().replace('"split":"train"', '"split":"test"', 1))
    assert any("changed since it was sealed" in e for e in FeatureCache.open(cache.root).check_structure()[0])


def _as_zarr_v2(part: Path) -> None:
    """The part rewritten, same values, as a Zarr v2 group (`.zgroup`) of v2 arrays (`.zarray`)."""
    import zarr

    old = zarr.open_group(zarr.storage.LocalStore(part), mode="r")
    data = {k: old[k][:] for k in ("features", "mask", "timestamps")}
    for key in data:
        shutil.rmtree(part / key)
    (part / "zarr.json").unlink()
    zarr.open_group(zarr.storage.LocalStore(part), mode="a", zarr_format=2)
    for key, values in data.items():
        v2 = zarr.create_array(zarr.storage.LocalStore(part / key), shape=values.shape, dtype=values.dtype,
                               chunks=values.shape, compressors=None, zarr_format=2)
        v2[:] = values


def test_a_part_stored_as_zarr_v2_is_refused_in_one_line(tmp_path: Path) -> None:
    """A saga cache is Zarr v3 (docs/cache-format.md): a part in another format is unreadable, named in one line
    (a v2 group was read as if it were one of saga's and `verify` called the cache clean)."""
    from saga.cache.store import FeatureCache

    cache = make_cache(tmp_path, parts=1)
    part = _manifests(cache.root)[0].parent
    _as_zarr_v2(part)
    proc = run_saga("cache", "verify", str(cache.root))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert any(part.name in line and "unreadable" in line for line in proc.stderr.splitlines())
    fresh = FeatureCache.open(cache.root)
    with pytest.raises(SagaError, match=f"part {part.name} is .*Zarr v3") as err:
        fresh.read(fresh.ok_records())
    assert "\n" not in str(err.value)
