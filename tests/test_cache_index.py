"""The columnar record index: same records as the manifests say, a sidecar that is only a cache,
list semantics for callers, and manifest lines of the wrong type refused in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from saga.cache import columns
from saga.cache.index import lazy
from saga.cache.manifest import VideoRecord, check_fields, read_manifest
from saga.cache.store import MANIFEST, FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.train.data import StreamingFeatures, View

from test_cache import D, T, W, fill, provenance, record


def _reference(root: Path) -> list[VideoRecord]:
    """The merge rule, spelled out on VideoRecord objects: a later part wins, sorted by path."""
    merged: dict[str, VideoRecord] = {}
    for part in sorted(p.name for p in (root / "parts").iterdir() if p.is_dir()):
        for rec in read_manifest(root / "parts" / part / MANIFEST):
            rec.part = part
            merged[rec.path] = rec
    return sorted(merged.values(), key=lambda r: r.path)


def _odd_cache(tmp_path: Path) -> Path:
    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    fill(cache, 6, seed=0)
    writer = PartWriter(cache, next_part_name(cache), capacity=3 * W, shard_rows=2)
    for i, name in enumerate(["real/v1.mp4", "real/é ü.mp4", "real/\udcff-not-utf8.mp4"]):
        rec = record(i)
        rec.path, rec.extra, rec.fps, rec.backend = name, ({"note": i} if i else {}), 29.97, "pyav"
        writer.add(rec, np.full((W, T, D), i, np.float16), np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    return tmp_path / "c"


def test_index_gives_the_records_the_manifests_say(tmp_path: Path) -> None:
    root = _odd_cache(tmp_path)
    cache = FeatureCache.open(root)
    assert list(cache.records()) == _reference(root)
    assert [r.path for r in cache.ok_records("train")] == [r.path for r in _reference(root) if r.ok]
    assert cache.ok_records("test") == [] and len(cache.records()) == 9
    assert cache.records().paths() == [r.path for r in _reference(root)]
    from saga.model.inference import record_targets

    for level, classes in (("GEN-L", ["nope", "real"]), ("SD-L", ["real"])):
        want = record_targets(list(cache.records()), level, classes)
        assert cache.records().targets(level, classes).tolist() == want.tolist()


def test_sidecar_is_used_rebuilt_when_stale_or_damaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _odd_cache(tmp_path)
    want = _reference(root)
    assert list(FeatureCache.open(root).records()) == want
    sidecars = sorted(root.glob(f"parts/*/{columns.SIDECAR}"))
    assert len(sidecars) == 2  # sealed parts only
    calls = []
    parse = columns.PartColumns.parse
    monkeypatch.setattr(columns.PartColumns, "parse", classmethod(lambda cls, m: calls.append(m) or parse(m)))
    assert list(FeatureCache.open(root).records()) == want and calls == []  # both from their sidecar
    raw = bytearray(sidecars[0].read_bytes())
    raw[-200] ^= 0xFF  # damaged: the digest (or the zip) says so, the manifest is parsed again
    sidecars[0].write_bytes(bytes(raw))
    assert list(FeatureCache.open(root).records()) == want and len(calls) == 1
    manifest = sidecars[1].with_name(MANIFEST)
    first = json.loads(manifest.read_text().splitlines()[0])
    with open(manifest, "a") as fh:  # an appended line (same path): the later line wins
        fh.write(json.dumps({**first, "split": "val"}) + "\n")
    got = FeatureCache.open(root).records()
    assert len(calls) == 2 and list(got) == _reference(root)
    assert [r.split for r in got if r.path == first["path"]] == ["val"]


@pytest.mark.parametrize("field, value, message", [
    ("size", "12", "field 'size' must be an integer, got str"),
    ("row", True, "field 'row' must be an integer, got bool"),
    ("labels", ["real"], "field 'labels' must be an object"),
    ("fps", "fast", "field 'fps' must be a number"),
    ("checksum", "xyz", "checksum 'xyz' is not 32 hex digits"),
    ("path", None, "field 'path' must be a string"),
])
def test_wrong_field_types_are_one_line_errors(tmp_path: Path, field: str, value: object, message: str) -> None:
    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    fill(cache, 3)
    manifest = next((tmp_path / "c" / "parts").glob("*/" + MANIFEST))
    lines = manifest.read_text().splitlines(keepends=True)
    edited = {**json.loads(lines[1]), field: value}
    manifest.write_text(lines[0] + json.dumps(edited) + "\n" + "".join(lines[2:]))
    for sidecar in manifest.parent.glob(columns.SIDECAR):
        sidecar.unlink()
    with pytest.raises(SagaError) as err:
        FeatureCache.open(tmp_path / "c").records()
    text = str(err.value)
    assert text.startswith(f"{manifest}:2: corrupt manifest line") and message in text and "\n" not in text
    with pytest.raises(SagaError, match=f"{manifest}:2: "):
        read_manifest(manifest)


def test_record_lists_behave_as_lists(tmp_path: Path) -> None:
    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    fill(cache, 8)
    cache = FeatureCache.open(tmp_path / "c")
    recs = cache.ok_records()
    both = recs[:2] + recs[5:]
    assert lazy(both) and [r.path for r in both] == [r.path for r in list(recs)[:2] + list(recs)[5:]]
    assert lazy(recs) and len(recs[2:5]) == 3 and recs[-1].path == list(recs)[-1].path
    recs = cache.ok_records()
    copy = recs[:]
    random.Random(0).shuffle(copy)  # a copy that is modified becomes a plain list of the same records
    assert not lazy(copy) and sorted(r.path for r in copy) == [r.path for r in recs] and lazy(recs)
    recs[0].split = "val"  # handed-out records keep their changes, and reads then use the objects
    assert recs[0].split == "val" and not lazy(recs)
    assert cache.read(recs)["features"].shape == (8, W, T, D)


def test_streaming_over_lazy_records_equals_a_plain_list(tmp_path: Path) -> None:
    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    fill(cache, 12, shard_rows=4)
    cache = FeatureCache.open(tmp_path / "c")
    labels = np.arange(12) % 2
    runs = []
    for records in (cache.ok_records(), list(cache.ok_records())):
        data = StreamingFeatures(cache, records, labels, buffer_shards=2)
        view = View(T, train=True, jitter=1)
        runs.append([(b.x, b.index) for b in data.batches(5, view, seed=3, shuffle=True, balance=True)])
        assert data.take(np.array([3, 1, 3]), view).x.shape == (3, T, D)
    for (xa, ia), (xb, ib) in zip(*runs, strict=True):
        assert xa.equal(xb) and ia.equal(ib)


def test_a_sidecar_with_other_columns_is_rebuilt_not_half_used(tmp_path: Path) -> None:
    """A sidecar another saga version wrote (same version number, a column missing) is parsed again."""
    root = _odd_cache(tmp_path)
    want = _reference(root)
    FeatureCache.open(root).records()  # writes the sidecars
    sidecar = sorted(root.glob(f"parts/*/{columns.SIDECAR}"))[0]
    manifest = sidecar.with_name(MANIFEST)
    full = columns.PartColumns.parse(manifest)
    older = columns.PartColumns({k: v for k, v in full.arrays.items() if k != "crc32c"}, full.tables, full.extra)
    columns._write_sidecar(sidecar, columns._manifest_key(manifest), older)  # digest and version valid
    assert columns._read_sidecar(sidecar, columns._manifest_key(manifest)) is None
    assert list(FeatureCache.open(root).records()) == want


def test_identity_lines_from_the_columns_equal_the_records_and_keep_the_run_digest(tmp_path: Path) -> None:
    """Runs record a digest of these lines: the fast path must give the same bytes, odd names included."""
    import hashlib

    from saga.cache.index import identity_line
    from saga.runs.origin import cache_digest

    cache = FeatureCache.open(_odd_cache(tmp_path))
    records = cache.ok_records()
    assert lazy(records)
    assert list(records.identity_lines(chunk=2)) == [identity_line(r) for r in list(records)]
    h = hashlib.blake2b(digest_size=16)  # the formula runs have recorded since the digest existed
    for r in list(cache.ok_records()):
        h.update(f"{r.path}\0{r.split}\0{r.checksum}\n".encode("utf-8", "surrogateescape"))
    assert cache_digest(cache) == h.hexdigest()


_BAD_NUMBERS = [(f, v) for f in ("size", "mtime_ns", "row", "windows", "n_frames") for v in (10**30, 2**63)] + [
    ("size", -2), ("mtime_ns", -(2**63) - 1), ("row", -2), ("windows", -1), ("n_frames", -1), ("row", 2**62),
    ("windows", 2**31), ("fps", float("nan")), ("fps", float("inf")), ("fps", float("-inf")), ("fps", -1.0),
    pytest.param("fps", 10**400, id="fps-int-past-float")]


@pytest.mark.parametrize("field, value", _BAD_NUMBERS)
def test_numbers_out_of_range_are_one_line_errors(tmp_path: Path, field: str, value: object) -> None:
    """A number the int64 columns cannot hold (or its meaning does not allow) names the line, not an OverflowError."""
    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    fill(cache, 3)
    manifest = next((tmp_path / "c" / "parts").glob("*/" + MANIFEST))
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(lines[0] + json.dumps({**json.loads(lines[1]), field: value}) + "\n" + "".join(lines[2:]))
    for sidecar in manifest.parent.glob(columns.SIDECAR):
        sidecar.unlink()
    with pytest.raises(SagaError) as err:
        FeatureCache.open(tmp_path / "c").records()
    text = str(err.value)
    assert text.startswith(f"{manifest}:2: corrupt manifest line (field {field!r} must be ") and "\n" not in text
    with pytest.raises(SagaError, match=f"{manifest}:2: .*field '{field}'"):
        read_manifest(manifest)


@pytest.mark.parametrize("field, value", [("size", -1), ("size", 2**63 - 1), ("mtime_ns", -(2**63)),
                                          ("mtime_ns", -5), ("row", -1), ("n_frames", 2**63 - 1), ("fps", 0),
                                          ("fps", 1e308), ("windows", 0)])
def test_numbers_at_the_edges_of_their_range_are_read(field: str, value: object) -> None:
    """-1 (a file that could not be stat'ed, a failed video's row) and pre-1970 mtimes are what saga writes."""
    rec = {**json.loads(record(0).to_json()), field: value}
    check_fields(rec)
    built = columns._Builder()
    built.add(rec)
    cols = built.finish()
    got = cols.tables["fps"][cols.arrays["fps"][0]] if field == "fps" else cols.arrays[field][0]
    assert got == value
