"""The cache's records as one columnar index, and lazy `VideoRecord` views over it.

Why: memory and start-up must stay flat from 10 k to 10 M videos. The merged index holds
~100 B per record in numpy arrays (sorted by path, a later part's record of a path winning,
the same rule and order as before); `VideoRecord` objects are only built when a caller
touches one (`RecordList[i]`, iteration), so `cache.ok_records("train")` at a million videos
costs an index array, not a million objects. The training loaders and the cache's readers use
the columns directly (`locate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, MutableSequence, Sequence, overload

import numpy as np

from saga.cache.columns import CODED, PATH_CODEC, PartColumns, narrow, reorder, sidecar_writable, sorted_unique
from saga.cache.manifest import OK, VideoRecord



class RecordIndex:
    """Every committed record of a cache, one row per video, sorted by path."""

    def __init__(self, parts: list[str], part: np.ndarray, arrays: dict[str, np.ndarray],
                 tables: dict[str, list[str]], extra: dict[int, dict]) -> None:
        self.parts, self.part, self.arrays, self.tables, self.extra = parts, part, arrays, tables, extra
        self._labels = [json.loads(t) for t in tables["labels"]]
        self.digests: dict[str, tuple[int, str] | None] = {}  # part -> its manifest's (lines, blake2b), see build
        ok_code = tables["status"].index(OK) if OK in tables["status"] else -1
        self.ok = arrays["status"] == ok_code

    def __len__(self) -> int:
        return int(self.part.size)

    @classmethod
    def build(cls, root: Path, parts: list[str], manifest: str) -> "RecordIndex":
        """Merge the parts' columns (sidecars when current), dedupe by path (the last wins), sort by path.

        Column by column, each source freed as soon as it is used, so the peak stays near one index."""
        loaded = [PartColumns.load(root / p / manifest, sidecar_writable(root / p)) for p in parts]
        if not loaded:
            return cls([], np.zeros(0, np.int16), PartColumns.parse(root / "none" / manifest).arrays,
                       {k: [] for k in CODED}, {})
        tables: dict[str, dict[Any, int]] = {k: {} for k in CODED}
        remaps = {k: [np.array([tables[k].setdefault(v, len(tables[k])) for v in c.tables[k]] or [0], np.int32)
                      for c in loaded] for k in CODED}
        sizes = [len(c) for c in loaded]
        blob_sizes = [int(c.arrays["path_blob"].size) for c in loaded]
        extra = {sum(sizes[:j]) + i: e for j, c in enumerate(loaded) for i, e in c.extra.items()}
        digests = {name: c.manifest for name, c in zip(parts, loaded)}
        part = np.repeat(np.arange(len(loaded), dtype=np.int16), sizes)
        merged: dict[str, np.ndarray] = {}
        for key in list(loaded[0].arrays):
            pieces = [c.arrays.pop(key) for c in loaded]
            if key in CODED:  # per-part codes -> cache-wide codes
                pieces = [remaps[key][j][arr] if len(loaded) > 1 else arr for j, arr in enumerate(pieces)]
            elif key == "path_offsets":
                pieces = [arr[:-1].astype(np.int64) + sum(blob_sizes[:j]) for j, arr in enumerate(pieces)]
                pieces.append(np.array([sum(blob_sizes)], np.int64))
            merged[key] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
            del pieces
        del loaded
        keep = sorted_unique(merged["path_blob"], merged["path_offsets"])
        tables_out = {k: list(v) for k, v in tables.items()}
        index = cls._subset(parts, part, narrow(merged, tables_out), tables_out, extra, keep)
        index.digests = digests
        return index

    @classmethod
    def _subset(cls, parts: list[str], part: np.ndarray, arrays: dict[str, np.ndarray],
                tables: dict[str, list[str]], extra: dict[int, dict], keep: np.ndarray | None) -> "RecordIndex":
        """The kept rows in their new order (None: all, as they are)."""
        if keep is None:
            return cls(parts, part, arrays, tables, extra)
        out, extra = reorder(arrays, extra, keep)
        return cls(parts, part[keep], out, tables, extra)

    # -- one record -----------------------------------------------------------------------------
    def path(self, i: int) -> str:
        off = self.arrays["path_offsets"]
        return self.arrays["path_blob"][off[i]:off[i + 1]].tobytes().decode(*PATH_CODEC)

    def checksum(self, i: int) -> str:
        raw = self.arrays["checksum"][i]
        return raw[1:].tobytes().hex() if raw[0] else ""

    def record(self, i: int) -> VideoRecord:
        """A fresh VideoRecord of row i (its own labels dict, so callers may modify it)."""
        return next(self.iter_records(np.array([i], np.int64)))

    def iter_records(self, positions: np.ndarray, chunk: int = 4096) -> Iterator[VideoRecord]:
        """Fresh VideoRecords of these rows, columns converted a chunk at a time (~5x faster than one by one)."""
        a, t = self.arrays, self.tables
        coded = {k: t[k] for k in ("status", "generator", "split", "error", "backend", "fps")}
        for lo in range(0, positions.size, chunk):
            pos = positions[lo:lo + chunk]
            col = {k: a[k][pos].tolist() for k in ("size", "mtime_ns", "row", "windows", "n_frames", "crc32c",
                                                   "labels", *coded)}
            starts, stops = a["path_offsets"][pos].tolist(), a["path_offsets"][pos + 1].tolist()
            blob = a["path_blob"]
            sums = a["checksum"][pos]
            hexes = [s[1:].tobytes().hex() if s[0] else "" for s in sums]
            parts = [self.parts[p] for p in self.part[pos].tolist()]
            for j, p in enumerate(pos.tolist()):
                crc = col["crc32c"][j]
                yield VideoRecord(
                    path=blob[starts[j]:stops[j]].tobytes().decode(*PATH_CODEC), size=col["size"][j],
                    mtime_ns=col["mtime_ns"][j], status=coded["status"][col["status"][j]],
                    generator=coded["generator"][col["generator"][j]], labels=dict(self._labels[col["labels"][j]]),
                    split=coded["split"][col["split"][j]], error=coded["error"][col["error"][j]], part=parts[j],
                    row=col["row"][j], windows=col["windows"][j], checksum=hexes[j],
                    crc32c=f"{crc:08x}" if crc >= 0 else "", n_frames=col["n_frames"][j],
                    fps=float(coded["fps"][col["fps"][j]]), backend=coded["backend"][col["backend"][j]],
                    extra=dict(self.extra[p]) if p in self.extra else {})

    # -- selections -----------------------------------------------------------------------------
    def code(self, column: str, value: str) -> int:
        """The code of `value` in a coded column (-1 when no record has it)."""
        table = self.tables[column]
        return table.index(value) if value in table else -1

    def select(self, ok_only: bool = False, split: str | None = None) -> "RecordList":
        keep = self.ok.copy() if ok_only else np.ones(len(self), bool)
        if split is not None:
            keep &= self.arrays["split"] == self.code("split", split)
        return RecordList(self, np.flatnonzero(keep))


class RecordList(MutableSequence[VideoRecord]):
    """A lazily materialised list of records: `positions` into a RecordIndex.

    Indexing or iterating builds fresh VideoRecord objects; slicing and `take` give another lazy
    view. It behaves as a list: the first change (`shuffle`, `sort`, item assignment, append)
    materialises it into a plain list of records, which it then stays (`lazy` is False)."""

    def __init__(self, index: RecordIndex, positions: np.ndarray) -> None:
        self.index, self.positions = index, np.asarray(positions, np.int64)
        self._items: list[VideoRecord] | None = None
        self._touched: dict[int, VideoRecord] = {}  # records handed out by [i]: callers may modify them

    @property
    def lazy(self) -> bool:
        """True while the columns describe these records: nothing handed out by [i], nothing changed."""
        return self._items is None and not self._touched

    def _list(self) -> list[VideoRecord]:
        if self._items is None:
            self._items = [self._touched.get(i) or r for i, r in enumerate(self.index.iter_records(self.positions))]
            self._touched = {}
        return self._items

    def __len__(self) -> int:
        return int(self.positions.size) if self._items is None else len(self._items)

    @overload
    def __getitem__(self, i: int) -> VideoRecord: ...
    @overload
    def __getitem__(self, i: slice) -> "RecordList": ...
    def __getitem__(self, i: Any) -> Any:
        if self._items is not None:
            return self._items[i]
        if isinstance(i, slice):
            if self._touched:
                return self._list()[i]
            return RecordList(self.index, self.positions[i])
        i = range(len(self))[i]  # negative indexes, IndexError
        if i not in self._touched:  # the same object every time, as in a list
            self._touched[i] = self.index.record(int(self.positions[i]))
        return self._touched[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        self._list()[i] = value

    def __delitem__(self, i: Any) -> None:
        del self._list()[i]

    def insert(self, i: int, value: VideoRecord) -> None:
        self._list().insert(i, value)

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._list().sort(key=key, reverse=reverse)

    def copy(self) -> "Sequence[VideoRecord]":
        return self[:] if self.lazy else list(self)

    def __iter__(self) -> Iterator[VideoRecord]:
        if self._items is not None:
            yield from self._items
            return
        touched = self._touched
        for i, rec in enumerate(self.index.iter_records(self.positions)):
            yield touched.get(i) or rec

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordList) and self.lazy and other.lazy and self.index is other.index:
            return np.array_equal(self.positions, other.positions)
        return isinstance(other, Sequence) and list(self) == list(other)

    def __add__(self, other: Sequence[VideoRecord]) -> "Sequence[VideoRecord]":
        if isinstance(other, RecordList) and self.lazy and other.lazy and other.index is self.index:
            return RecordList(self.index, np.r_[self.positions, other.positions])
        return list(self) + list(other)

    def __radd__(self, other: Sequence[VideoRecord]) -> list[VideoRecord]:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return f"RecordList({len(self)} records{'' if self.lazy else ', materialised'})"

    def take(self, which: np.ndarray) -> "Sequence[VideoRecord]":
        which = np.asarray(which, np.int64)
        if not self.lazy:
            return [self[i] for i in which.tolist()]
        return RecordList(self.index, self.positions[which])

    def targets(self, level: str, classes: Sequence[str]) -> np.ndarray:
        """Class index at `level` of each record (-1: none), from the label-set codes: what
        `record_targets` computes, without building a VideoRecord per record."""
        if not self.lazy:
            index = {c: i for i, c in enumerate(classes)}
            return np.array([index.get(r.labels.get(level), -1) if r.labels.get(level) is not None else -1
                             for r in self], np.int64)
        index = {c: i for i, c in enumerate(classes)}
        per_set = np.array([index.get(labels.get(level), -1) if labels.get(level) is not None else -1
                            for labels in self.index._labels] or [-1], np.int64)
        return per_set[self.index.arrays["labels"][self.positions]]

    def identity_lines(self, chunk: int = 65536) -> Iterator[bytes]:
        """b"path\\0split\\0checksum\\n" per record (encoded as `identity_line` does), from the columns:
        what a run's cache digest hashes, without building a VideoRecord per video."""
        if not self.lazy:
            yield from (identity_line(r) for r in self)
            return
        a, splits = self.index.arrays, [s.encode() for s in self.index.tables["split"]]
        blob, offsets = a["path_blob"], a["path_offsets"]
        for lo in range(0, self.positions.size, chunk):
            pos = self.positions[lo:lo + chunk]
            starts, stops, codes = offsets[pos].tolist(), offsets[pos + 1].tolist(), a["split"][pos].tolist()
            sums = a["checksum"][pos]
            for j in range(pos.size):
                path = blob[starts[j]:stops[j]].tobytes()
                if b"\xed" in path:  # maybe a lone surrogate (non-UTF-8 name): re-encode as identity_line does
                    path = path.decode(*PATH_CODEC).encode("utf-8", "surrogateescape")
                digest = sums[j][1:].tobytes().hex().encode() if sums[j][0] else b""
                yield b"".join((path, b"\0", splits[codes[j]], b"\0", digest, b"\n"))

    def paths(self) -> list[str]:
        if not self.lazy:
            return [r.path for r in self]
        return [self.index.path(p) for p in self.positions.tolist()]


def identity_line(record: VideoRecord) -> bytes:
    """What identifies a record's features in a cache digest: its path, split and checksum."""
    return f"{record.path}\0{record.split}\0{record.checksum}\n".encode("utf-8", "surrogateescape")


def lazy(records: Sequence[VideoRecord]) -> bool:
    """Whether `records` is an unmodified view of a cache's index (its columns can be used)."""
    return isinstance(records, RecordList) and records.lazy


@dataclass
class Located:
    """Where records' rows are, as arrays: what reading and checking need, without VideoRecord objects."""

    records: Sequence[VideoRecord]
    parts: list[str]
    part: np.ndarray  # code into parts, per record
    row: np.ndarray
    checksum: np.ndarray  # (n, 17): flag + blake2b-128
    crc32c: np.ndarray  # -1: none recorded
    ok: np.ndarray

    @classmethod
    def of(cls, records: Sequence[VideoRecord]) -> "Located":
        if lazy(records):
            idx, pos = records.index, records.positions
            return cls(records, idx.parts, idx.part[pos], idx.arrays["row"][pos], idx.arrays["checksum"][pos],
                       idx.arrays["crc32c"][pos], idx.ok[pos])
        names: dict[str, int] = {}
        part = np.array([names.setdefault(r.part, len(names)) for r in records], np.int16)
        row = np.array([r.row for r in records], np.int64)
        checksum = np.zeros((len(records), 17), np.uint8)
        for i, r in enumerate(records):
            if r.checksum:
                checksum[i, 0], checksum[i, 1:] = 1, np.frombuffer(bytes.fromhex(r.checksum), np.uint8)
        ok = np.array([r.ok for r in records], bool)
        crc = np.array([int(r.crc32c, 16) if len(r.crc32c) == 8 else -1 for r in records], np.int64)
        return cls(records, list(names), part, row, checksum, crc, ok)
