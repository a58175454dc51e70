"""The feature cache: the contract between phase 1 (extract) and phase 2 (train).

Layout (Zarr v3; see docs/cache-format.md):

    CACHE/zarr.json                 root group; attributes["saga"] = provenance
    CACHE/parts/<part>/             one part per extraction pass and rank
        features    (N, T, D) float16, sharded (S, T, D), inner chunks (16, T, D)
        mask        (N, T) bool      real (True) vs padded frames
        timestamps  (N, T) float32   seconds
        manifest.jsonl              committed records (the commit point)

A part is written by exactly one writer (`saga.cache.partwriter`), one whole shard at a
time, and a record is committed only after its shard is written, so a killed run leaves
nothing that readers trust and two writers never share a shard. Later parts supersede
earlier records of the same video.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from saga.cache import integrity, reader
from saga.cache.index import Located, RecordIndex, RecordList
from saga.cache.manifest import VideoRecord
from saga.cache.meta import require_cache
from saga.cache.partwriter import DEFAULT_SHARD_ROWS, INNER_ROWS, PartWriter
from saga.cache.provenance import CacheProvenance, EncoderSpec, encoder_identity, first_difference
from saga.cache.reader import ShardRef
from saga.cache.seal import MANIFEST, PARTS_LOG, SEAL, seal_leftover_parts, seal_part, unsealed_parts
from saga.cache.shards import ArrayReader
from saga.errors import SagaError, brief
from saga.fileio import sweep_siblings, temp_path, writing
from saga.locks import LOCK
from saga.progress import ProgressFn
from saga.taxonomy import Taxonomy

SCHEMA_VERSION = 1
ATTR_KEY = "saga"
SPLIT_PLAN = "splits.jsonl"  # path -> split, recorded once before extraction

# PartWriter (saga.cache.partwriter) is re-exported: extract, import and tests import it from here
__all__ = ["DEFAULT_SHARD_ROWS", "FeatureCache", "INNER_ROWS", "MANIFEST", "PARTS_LOG", "PartWriter", "SEAL", "ShardRef",
           "next_part_name", "seal_leftover_parts", "seal_part", "unsealed_parts"]


class FeatureCache:
    """A feature cache on disk: provenance, merged manifest, and array access."""

    def __init__(self, root: Path, attrs: dict[str, Any]) -> None:
        self.root = root
        self.attrs = attrs
        self._parts: dict[str, dict[str, zarr.Array]] = {}
        self._readers: dict[str, dict[str, ArrayReader]] = {}
        self._index: RecordIndex | None = None

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> "FeatureCache":
        root = require_cache(root)
        try:
            attrs = dict(zarr.open_group(zarr.storage.LocalStore(root, read_only=True), mode="r", zarr_format=3).attrs)
        except Exception as exc:  # zarr raises many types for a damaged store (or a v2 group: not a saga cache)
            raise SagaError(f"{root}: unreadable cache metadata ({exc}); re-extract into a new folder") from None
        if ATTR_KEY not in attrs:
            raise SagaError(f"{root}: a Zarr store but not a saga cache (no '{ATTR_KEY}' attributes)")
        saga = attrs[ATTR_KEY]
        version = saga.get("schema_version") if isinstance(saga, dict) else SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise SagaError(f"{root}: cache schema {brief(version)} != {SCHEMA_VERSION}; re-extract it")
        integrity.check_attrs(root, saga)
        return cls(root, saga)

    @classmethod
    def create_or_open(cls, root: str | Path, provenance: dict[str, Any]) -> "FeatureCache":
        """Open an existing cache after checking it is compatible, or create it atomically.

        Two processes creating the same cache at once both end with the one that was published first."""
        root = Path(root)
        if not (root / "zarr.json").exists():
            if root.exists() and (not root.is_dir() or any(p.name != LOCK for p in root.iterdir())):
                raise SagaError(f"{root}: exists and is not a saga cache; choose an empty or new --out folder")
            attrs = {**provenance, "schema_version": SCHEMA_VERSION}
            attrs.setdefault("cache_id", uuid.uuid4().hex)  # an import keeps the exported id
            if _create(root, attrs):
                return cls(root, attrs)
        cache = cls.open(root)
        cache.check_compatible(provenance)
        return cache

    def check_compatible(self, provenance: dict[str, Any]) -> None:
        differ = self.provenance.differences(CacheProvenance.from_dict(provenance, "this pass"))
        if not differ:
            return
        key = differ[0]
        if key == "taxonomy":
            raise SagaError(f"{self.root}: refusing to append with a different taxonomy; use the cache's own")
        mine, theirs = first_difference(_shown(key, self.attrs, provenance), _shown(key, provenance, self.attrs))
        raise SagaError(
            f"{self.root}: refusing to append: the cache was built with {key}={mine}, "
            f"this run uses {theirs}; extract into a new --out folder"
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
        if not parts.is_dir():
            raise SagaError(f"{parts}: missing (every cache has a parts folder); restore it or re-extract")
        return sorted(p.name for p in parts.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- records -------------------------------------------------------------------
    def index(self, refresh: bool = False) -> RecordIndex:
        """The committed records as columns (parsed once; sealed parts from their sidecar)."""
        if self._index is None or refresh:
            index = RecordIndex.build(self.root / "parts", self.part_names(), MANIFEST)
            reader.check_layout(self, index)  # a record's windows and row, before anything reads by them
            self._index = index
        return self._index

    def records(self, refresh: bool = False) -> RecordList:
        """Committed records, one per video, by path: a later part's record supersedes an earlier one.

        A lazy list: each VideoRecord is built when touched, so a 10M-record cache costs columns only."""
        return self.index(refresh).select()

    def readable(self) -> bool:
        """Whether the records can be listed (no corrupt manifest line)."""
        try:
            self.index()
        except SagaError:
            return False
        return True

    def ok_records(self, split: str | None = None) -> RecordList:
        return self.index().select(ok_only=True, split=split)

    # -- arrays ----------------------------------------------------------------------
    def part(self, name: str) -> dict[str, zarr.Array]:
        """A part's arrays, opened once (opening re-parses zarr.json: ~9 % of a read's time)."""
        if name not in self._parts:
            try:
                store = zarr.storage.LocalStore(self.root / "parts" / name, read_only=True)
                group = zarr.open_group(store, mode="r", zarr_format=3)  # a v2 group is not one of saga's
                arrays = {key: group[key] for key in ("features", "mask", "timestamps")}
            except Exception as exc:  # a deleted or damaged part, or one in another format
                raise SagaError(f"{self.root}: part {name} is missing or unreadable, not a Zarr v3 group of saga's "
                                f"arrays ({type(exc).__name__}); run `saga cache verify`") from None
            shape = arrays["features"].shape
            if tuple(shape[1:]) != (self.frames, self.dim) or arrays["mask"].shape[1:] != (self.frames,):
                raise SagaError(
                    f"{self.root}: the cache attributes say frames={self.frames}, dim={self.dim} but part {name} "
                    f"stores ({shape[1]}, {shape[2]}); zarr.json was edited: restore it or re-extract")
            self._parts[name] = arrays
        return self._parts[name]

    def readers(self, name: str) -> dict[str, ArrayReader]:
        """A part's arrays behind the direct shard reader (zarr for layouts it does not know)."""
        if name not in self._readers:
            arrays = self.part(name)
            folder = self.root / "parts" / name
            self._readers[name] = {key: ArrayReader(folder / key, arr) for key, arr in arrays.items()}
        return self._readers[name]

    def check_rows(self, records: Sequence[VideoRecord], data: dict[str, np.ndarray]) -> None:
        """The cheap check of every read: checksum and finite features; a SagaError naming the record."""
        reader.check_rows(self, Located.of(records), data)

    def read(self, records: Sequence[VideoRecord], check: bool = True) -> dict[str, np.ndarray]:
        """features (n, W, T, D) float16, mask (n, W, T), timestamps (n, W, T) for the records.

        With `check` every record's checksum and finiteness is checked (`check_rows`)."""
        return reader.read(self, records, check)

    def shards(self, records: Sequence[VideoRecord]) -> list[ShardRef]:
        """Group records by stored shard, so a streaming reader reads each shard object once."""
        return reader.shards(self, records)

    def read_shard(self, ref: ShardRef, check: bool = True) -> dict[str, np.ndarray]:
        """The arrays of a shard's records, (n, W, ...) in `ref.records` order (checked like `read`)."""
        return reader.read_shard(self, ref, check)

    def verify(self, progress: ProgressFn | None = None) -> list[tuple[VideoRecord, str]]:
        """Records whose stored bytes no longer match their checksum (or cannot be read); `progress`: their count."""
        return integrity.verify(self, progress)

    def check_structure(self) -> tuple[list[str], list[str]]:
        """(errors, warnings) about the cache as a whole, each one line (see `integrity.check_structure`)."""
        return integrity.check_structure(self)


def _create(root: Path, attrs: dict[str, Any]) -> bool:
    """Build the empty cache under a hidden name and move it into place; False when another process
    (or thread) published one there first."""
    target = root.resolve()  # `--out .` has no name to put a temporary folder beside
    sweep_siblings(target)  # a creator killed here (this host's, its PID dead) left its hidden folder
    tmp = temp_path(target, thread=True)
    try:
        with writing(root):
            group = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
            group.attrs[ATTR_KEY] = attrs
            (tmp / "parts").mkdir()
            return _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> bool:
    """Rename the new cache onto `target`, or fill an empty `target` (zarr.json, the mark, last), never
    over another cache: ENOTEMPTY / EEXIST mean one was published there first (False)."""
    try:
        if target.exists():  # an empty folder (perhaps the current one, or holding only the lock)
            os.replace(tmp / "parts", target / "parts")  # an empty parts/ is replaced; a filled one refuses
            _link_new(tmp / "zarr.json", target / "zarr.json")
        else:
            os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def _link_new(src: Path, dst: Path) -> None:
    """Put `src` at `dst` only if nothing is there (EEXIST otherwise): a hard link, or a plain replace
    on a file system without hard links."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        os.replace(src, dst)


def next_part_name(cache: FeatureCache, rank: int = 0, pass_id: int | None = None) -> str:
    """Parts are named pass-then-rank so that later passes sort (and win) last. A name in parts.jsonl (a
    deleted or retired part) is never reused: its log line would seal the new part."""
    from saga.cache.seal import all_names

    if pass_id is None:
        names = set(cache.part_names()) | all_names(cache.root)
        passes = [int(p.split("-")[0][1:]) for p in names if p.startswith("p") and p.split("-")[0][1:].isdigit()]
        pass_id = max(passes, default=0) + 1
    return f"p{pass_id:06d}-r{rank:03d}"


def _shown(key: str, attrs: dict[str, Any], other: dict[str, Any]) -> str:
    """A provenance value as it was compared with `other`'s: the encoder with its architecture where both passes
    record one, else by its identity (a local-dir: by the folder it resolved to, not the path as typed)."""
    if key == "encoder" and attrs.get("architecture") and other.get("architecture"):
        return f"{attrs.get('encoder')} ({attrs['architecture']})"
    if key == "encoder":
        return encoder_identity(attrs)
    return str(attrs.get(key))
