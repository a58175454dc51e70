"""The feature cache: the contract between phase 1 (extract) and phase 2 (train).

Layout (Zarr v3; see docs/cache-format.md):

    CACHE/zarr.json                 root group; attributes["saga"] = provenance
    CACHE/parts/<part>/             one part per extraction pass and rank
        features    (N, T, D) float16, sharded (S, T, D), inner chunks (16, T, D)
        mask        (N, T) bool      real (True) vs padded frames
        timestamps  (N, T) float32   seconds
        manifest.jsonl              committed records (the commit point)

A part is written by exactly one writer, one whole shard at a time, and a record
is committed only after its shard is written, so a killed run leaves nothing that
readers trust and two writers never share a shard. Later parts supersede earlier
records of the same video.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from saga.cache.provenance import CacheProvenance, EncoderSpec
from saga.cache.manifest import OK, ManifestWriter, VideoRecord, feature_checksum, read_manifest
from saga.errors import SagaError
from saga.taxonomy import Taxonomy

SCHEMA_VERSION = 1
ATTR_KEY = "saga"
MANIFEST = "manifest.jsonl"
SPLIT_PLAN = "splits.jsonl"  # path -> split, recorded once before extraction
DEFAULT_SHARD_ROWS = 128
# Rows per inner chunk of a shard: 16 reads whole shards ~8x faster than 1 row per chunk
# (zarr decodes each inner chunk separately) and random rows ~1.5x faster (bench/cache_read.py).
INNER_ROWS = 16


@dataclass(frozen=True)
class ShardRef:
    """One stored shard of a part and the committed records whose rows lie in it."""

    part: str
    start: int
    stop: int
    records: tuple[VideoRecord, ...]


class FeatureCache:
    """A feature cache on disk: provenance, merged manifest, and array access."""

    def __init__(self, root: Path, attrs: dict[str, Any]) -> None:
        self.root = root
        self.attrs = attrs
        self._parts: dict[str, dict[str, zarr.Array]] = {}
        self._records: list[VideoRecord] | None = None

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> "FeatureCache":
        root = Path(root)
        meta = root / "zarr.json"
        if not meta.is_file():
            raise SagaError(f"{root}: not a saga cache (no zarr.json); create one with `saga extract --out {root}`")
        try:
            attrs = dict(zarr.open_group(zarr.storage.LocalStore(root, read_only=True), mode="r").attrs)
        except Exception as exc:  # zarr raises many types for a damaged store
            raise SagaError(f"{root}: unreadable cache metadata ({exc}); re-extract into a new folder") from None
        if ATTR_KEY not in attrs:
            raise SagaError(f"{root}: a Zarr store but not a saga cache (no '{ATTR_KEY}' attributes)")
        saga = attrs[ATTR_KEY]
        if saga.get("schema_version") != SCHEMA_VERSION:
            raise SagaError(f"{root}: cache schema {saga.get('schema_version')} != {SCHEMA_VERSION}; re-extract it")
        return cls(root, saga)

    @classmethod
    def create_or_open(cls, root: str | Path, provenance: dict[str, Any]) -> "FeatureCache":
        """Open an existing cache after checking it is compatible, or create it atomically."""
        root = Path(root)
        if (root / "zarr.json").exists():
            cache = cls.open(root)
            cache.check_compatible(provenance)
            return cache
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise SagaError(f"{root}: exists and is not a saga cache; choose an empty or new --out folder")
        attrs = {**provenance, "schema_version": SCHEMA_VERSION}
        attrs.setdefault("cache_id", uuid.uuid4().hex)  # an import keeps the exported id
        tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
        group.attrs[ATTR_KEY] = attrs
        (tmp / "parts").mkdir()
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
        return cls(root, attrs)

    def check_compatible(self, provenance: dict[str, Any]) -> None:
        differ = self.provenance.differences(CacheProvenance.from_dict(provenance, "this pass"))
        if not differ:
            return
        key = differ[0]
        if key == "taxonomy":
            raise SagaError(f"{self.root}: refusing to append with a different taxonomy; use the cache's own")
        mine, theirs = self.attrs.get(key), provenance.get(key)
        raise SagaError(
            f"{self.root}: refusing to append: the cache was built with {key}={_short(mine)}, "
            f"this run uses {_short(theirs)}; extract into a new --out folder"
        )

    @property
    def provenance(self) -> CacheProvenance:
        return CacheProvenance.from_dict(self.attrs, str(self.root))

    @property
    def encoder_spec(self) -> EncoderSpec:
        return self.provenance.encoder

    # -- properties ----------------------------------------------------------------
    @property
    def cache_id(self) -> str:
        return str(self.attrs["cache_id"])

    @property
    def frames(self) -> int:
        return int(self.attrs["sampling"]["frames"])

    @property
    def windows(self) -> int:
        return int(self.attrs["sampling"].get("windows", 1))

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy.from_dict(self.attrs["taxonomy"], origin=f"{self.root} (taxonomy)")

    @property
    def split_plan_path(self) -> Path:
        return self.root / SPLIT_PLAN

    def part_names(self) -> list[str]:
        parts = self.root / "parts"
        return sorted(p.name for p in parts.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- records -------------------------------------------------------------------
    def records(self, refresh: bool = False) -> list[VideoRecord]:
        """Committed records, one per video: a later part's record supersedes an earlier one."""
        if self._records is None or refresh:
            merged: dict[str, VideoRecord] = {}
            for part in self.part_names():
                for rec in read_manifest(self.root / "parts" / part / MANIFEST):
                    rec.part = part
                    merged[rec.path] = rec
            self._records = sorted(merged.values(), key=lambda r: r.path)
        return self._records

    def ok_records(self, split: str | None = None) -> list[VideoRecord]:
        return [r for r in self.records() if r.ok and (split is None or r.split == split)]

    # -- arrays ----------------------------------------------------------------------
    def part(self, name: str) -> dict[str, zarr.Array]:
        """A part's arrays, opened once (opening re-parses zarr.json: ~9 % of a read's time)."""
        if name not in self._parts:
            store = zarr.storage.LocalStore(self.root / "parts" / name, read_only=True)
            group = zarr.open_group(store, mode="r")
            self._parts[name] = {key: group[key] for key in ("features", "mask", "timestamps")}
        return self._parts[name]

    def read(self, records: Sequence[VideoRecord]) -> dict[str, np.ndarray]:
        """features (n, W, T, D) float16, mask (n, W, T), timestamps (n, W, T) for the records."""
        n, w, t, d = len(records), self.windows, self.frames, self.dim
        out = {
            "features": np.empty((n, w, t, d), np.float16),
            "mask": np.empty((n, w, t), bool),
            "timestamps": np.empty((n, w, t), np.float32),
        }
        by_part: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            if not rec.ok:
                raise SagaError(f"{rec.path}: has no features (status {rec.status}: {rec.error})")
            by_part.setdefault(rec.part, []).append(i)
        for part, idx in by_part.items():
            rows = np.concatenate([np.arange(records[i].row, records[i].row + w) for i in idx])
            order = np.argsort(rows, kind="stable")
            group = self.part(part)
            for name, arr in out.items():
                data = np.empty((len(rows), *arr.shape[2:]), arr.dtype)
                data[order] = group[name].get_orthogonal_selection((rows[order],))
                arr[idx] = data.reshape(len(idx), w, *arr.shape[2:])
        return out

    def shards(self, records: Sequence[VideoRecord]) -> list[ShardRef]:
        """Group records by stored shard, so a streaming reader reads each shard object once."""
        groups: dict[tuple[str, int], list[VideoRecord]] = {}
        size: dict[str, int] = {}
        for rec in records:
            if rec.part not in size:
                size[rec.part] = int(self.part(rec.part)["features"].shards[0])
            groups.setdefault((rec.part, rec.row // size[rec.part]), []).append(rec)
        refs = []
        for (part, shard), recs in sorted(groups.items()):
            start = shard * size[part]
            stop = max(r.row + r.windows for r in recs)
            refs.append(ShardRef(part, start, stop, tuple(sorted(recs, key=lambda r: r.row))))
        return refs

    def read_shard(self, ref: ShardRef) -> dict[str, np.ndarray]:
        """The arrays of a shard's records, (n, W, ...) in `ref.records` order."""
        group = self.part(ref.part)
        block = {name: group[name][ref.start : ref.stop] for name in ("features", "mask", "timestamps")}
        w = self.windows
        rows = np.concatenate([np.arange(r.row, r.row + w) for r in ref.records]) - ref.start
        return {k: v[rows].reshape(len(ref.records), w, *v.shape[1:]) for k, v in block.items()}

    def verify(self) -> list[tuple[VideoRecord, str]]:
        """Records whose stored bytes no longer match their checksum (or cannot be read)."""
        bad = []
        for ref in self.shards(self.ok_records()):
            try:
                data = self.read_shard(ref)
            except Exception as exc:  # a damaged shard fails in the codec pipeline
                bad.extend((rec, f"unreadable shard ({type(exc).__name__}: {exc})") for rec in ref.records)
                continue
            for i, rec in enumerate(ref.records):
                if feature_checksum(data["features"][i], data["mask"][i], data["timestamps"][i]) != rec.checksum:
                    bad.append((rec, "checksum mismatch"))
        return bad


class PartWriter:
    """Writes one new part: rows buffered into whole shards, records committed after their shard."""

    def __init__(self, cache: FeatureCache, name: str, capacity: int, shard_rows: int = DEFAULT_SHARD_ROWS) -> None:
        self.cache, self.name = cache, name
        self.shard_rows = max(1, min(shard_rows, capacity))
        t, d, w = cache.frames, cache.dim, cache.windows
        self.windows = w
        final = cache.root / "parts" / name
        if final.exists():
            raise SagaError(f"{final}: part already exists; another extraction is writing this cache?")
        tmp = cache.root / "parts" / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
        cap, s = max(capacity, 1), self.shard_rows
        inner = math.gcd(s, INNER_ROWS)
        group.create_array("features", shape=(cap, t, d), dtype="float16", chunks=(inner, t, d), shards=(s, t, d),
                           compressors=None, fill_value=0)
        group.create_array("mask", shape=(cap, t), dtype="bool", chunks=(s, t), compressors=None, fill_value=False)
        group.create_array("timestamps", shape=(cap, t), dtype="float32", chunks=(s, t), compressors=None,
                           fill_value=0)
        (tmp / MANIFEST).touch()
        os.replace(tmp, final)
        self._arrays = {k: zarr.open_group(zarr.storage.LocalStore(final), mode="r+")[k]
                        for k in ("features", "mask", "timestamps")}
        self._manifest = ManifestWriter(final / MANIFEST)
        self._buf = {
            "features": np.zeros((s, t, d), np.float16),
            "mask": np.zeros((s, t), bool),
            "timestamps": np.zeros((s, t), np.float32),
        }
        self._capacity = cap
        self._next_row = 0  # first row not yet assigned
        self._flushed = 0  # rows durably written
        self._fill = 0  # rows in the buffer
        self._pending: list[VideoRecord] = []
        self.committed = 0

    def add(self, record: VideoRecord, features: np.ndarray, mask: np.ndarray, timestamps: np.ndarray) -> None:
        """Queue a video's (W, T, D) features; its record commits once its rows are on disk."""
        features = np.ascontiguousarray(features, np.float16)
        mask = np.ascontiguousarray(mask, bool)
        timestamps = np.ascontiguousarray(timestamps, np.float32)
        if features.shape[0] != self.windows:
            raise ValueError(f"expected {self.windows} windows, got {features.shape[0]}")
        if self._next_row + self.windows > self._capacity:
            raise ValueError("part capacity exceeded")
        record.part, record.row, record.windows, record.status = self.name, self._next_row, self.windows, OK
        record.checksum = feature_checksum(features, mask, timestamps)
        self._next_row += self.windows
        self._pending.append(record)
        for w in range(self.windows):
            self._buf["features"][self._fill] = features[w]
            self._buf["mask"][self._fill] = mask[w]
            self._buf["timestamps"][self._fill] = timestamps[w]
            self._fill += 1
            if self._fill == self.shard_rows:
                self._flush()
        self._commit_ready()

    def add_failure(self, record: VideoRecord) -> None:
        """A failed video has no rows: its record commits at once."""
        self._manifest.commit([record])
        self.committed += 1

    def close(self) -> None:
        if self._fill:
            self._flush()
        self._commit_ready()
        self._manifest.close()

    def _flush(self) -> None:
        start = self._flushed
        for key, arr in self._arrays.items():
            arr[start : start + self._fill] = self._buf[key][: self._fill]
        self._flushed += self._fill
        self._fill = 0

    def _commit_ready(self) -> None:
        ready = [r for r in self._pending if r.row + r.windows <= self._flushed]
        if ready:
            self._manifest.commit(ready)
            self.committed += len(ready)
            self._pending = [r for r in self._pending if r.row + r.windows > self._flushed]


def next_part_name(cache: FeatureCache, rank: int = 0, pass_id: int | None = None) -> str:
    """Parts are named pass-then-rank so that later passes sort (and win) last."""
    if pass_id is None:
        passes = [int(p.split("-")[0][1:]) for p in cache.part_names() if p.startswith("p")]
        pass_id = max(passes, default=0) + 1
    return f"p{pass_id:06d}-r{rank:03d}"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
