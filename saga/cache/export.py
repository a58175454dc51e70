"""One-file HDF5 export of a cache for sharing, and the import that rebuilds the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from saga.cache.manifest import VideoRecord, feature_checksum
from saga.cache.store import ATTR_KEY, FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.fileio import atomic_path, check_writable

FORMAT = "saga-cache-h5/1"
CHUNK_VIDEOS = 256


def export_h5(cache: FeatureCache, path: Path) -> int:
    """Write every record (failed ones too, without features) into one HDF5 file; returns #videos with features."""
    if path.is_dir():
        raise SagaError(f"{path}: is a folder; pass --h5 with a file name, e.g. {path / 'cache.h5'}")
    if not path.parent.is_dir():
        raise SagaError(f"{path.parent}: no such folder; create it or pass another --h5")
    errors, _ = cache.check_structure()
    if errors:
        raise SagaError(f"{cache.root}: refusing to export a damaged cache ({errors[0]}); run `saga cache verify`")
    records = cache.records()
    ok = [r for r in records if r.ok]
    w, t, d = cache.windows, cache.frames, cache.dim
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["format"] = FORMAT
        h5.attrs[ATTR_KEY] = json.dumps(cache.attrs)
        feats = h5.create_dataset("features", (len(ok), w, t, d), np.float16, chunks=(1, w, t, d) if ok else None)
        mask = h5.create_dataset("mask", (len(ok), w, t), bool)
        stamps = h5.create_dataset("timestamps", (len(ok), w, t), np.float32)
        for start in range(0, len(ok), CHUNK_VIDEOS):
            part = ok[start:start + CHUNK_VIDEOS]
            data = cache.read(part)
            feats[start:start + len(part)] = data["features"]
            mask[start:start + len(part)] = data["mask"]
            stamps[start:start + len(part)] = data["timestamps"]
        manifest = [r.to_json() for r in ok] + [r.to_json() for r in records if not r.ok]
        h5.create_dataset("manifest", data=np.array(manifest, dtype=object), dtype=h5py.string_dtype())
    return len(ok)


def import_h5(path: Path, out: Path) -> FeatureCache:
    """Rebuild a cache (same provenance and cache id) from an exported HDF5 file."""
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise SagaError(f"{path}: not an HDF5 file ({exc}); pass a file written by `saga cache export`") from None
    check_writable(out)  # a bad --out is not a damaged export
    with h5:
        if h5.attrs.get("format") != FORMAT:
            raise SagaError(f"{path}: not a saga cache export (format {h5.attrs.get('format')!r})")
        if (out / "zarr.json").exists():
            raise SagaError(f"{out}: already a cache; import into a new folder")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SagaError(f"{out}: exists and is not empty; import into a new folder")
        try:
            attrs = json.loads(h5.attrs[ATTR_KEY])
            records = [VideoRecord.from_dict(json.loads(s)) for s in h5["manifest"].asstr()[:]]
            n_ok = h5["features"].shape[0]
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise SagaError(f"{path}: damaged saga cache export ({type(exc).__name__}: {exc})") from None
        try:
            _import_into(path, h5, out, attrs, records, n_ok)
        except BaseException as exc:
            shutil.rmtree(out, ignore_errors=True)  # never leave a half cache that blocks the next import
            if isinstance(exc, (SagaError, KeyboardInterrupt)) or not isinstance(exc, Exception):
                raise
            raise SagaError(f"{path}: damaged saga cache export ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was imported") from None
    return FeatureCache.open(out)


def _import_into(path: Path, h5: h5py.File, out: Path, attrs: dict, records: list[VideoRecord], n_ok: int) -> None:
    """Every row is checked against its record's checksum before it is written: a damaged export
    (cut rows, flipped bytes, NaN) is refused instead of becoming a cache that looks whole."""
    damaged = f"{path}: the file is damaged"
    if n_ok > len(records) or not all(r.ok and r.checksum for r in records[:n_ok]) or any(
            r.ok for r in records[n_ok:]):
        raise SagaError(f"{damaged} ({n_ok} feature rows for {sum(r.ok for r in records)} ok records); "
                        "export it again")
    cache = FeatureCache.create_or_open(out, attrs)
    writer = PartWriter(cache, next_part_name(cache), capacity=max(n_ok, 1) * cache.windows)
    for i, rec in enumerate(records):
        if i < n_ok:
            rows = (np.ascontiguousarray(h5["features"][i], np.float16), np.ascontiguousarray(h5["mask"][i], bool),
                    np.ascontiguousarray(h5["timestamps"][i], np.float32))
            if feature_checksum(*rows) != rec.checksum:
                raise SagaError(f"{damaged}: {rec.path}'s features do not match their checksum; export it again")
            writer.add(rec, *rows)
        else:
            writer.add_failure(rec)
    writer.close()
