"""Reading records' arrays out of a cache: random rows, whole shards, and the checks of every read.

Why a module of its own: the read path must run at disk speed (docs/performance.md), so it
works on columns (`Located`) and on the direct shard reader (`saga.cache.shards`), never on
one VideoRecord at a time; `FeatureCache.read`, `shards` and `read_shard` delegate here.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import google_crc32c
import numpy as np

from saga.cache.index import Located, RecordIndex, lazy
from saga.cache.manifest import VideoRecord
from saga.cache.seal import MANIFEST
from saga.errors import SagaError

if TYPE_CHECKING:
    from saga.cache.store import FeatureCache

ARRAYS = ("features", "mask", "timestamps")
HASH_THREADS = min(2, os.cpu_count() or 1)
PARALLEL_BYTES = 1 << 20  # below this a thread hand-off costs more than it saves
SPARSE, SPARSE_ROWS = 4, 4096  # a shard read spanning more rows than max(4x those asked for, 4096) reads just those


@dataclass(frozen=True)
class ShardRef:
    """One stored shard of a part and the committed records whose rows lie in it (ordered by row).

    `records` is lazy when the records came from the cache's index; `positions` are the records'
    positions in the sequence given to `FeatureCache.shards`."""

    part: str
    start: int
    stop: int
    records: Sequence[VideoRecord]
    positions: np.ndarray
    rows: np.ndarray  # first row of each record


def empty(cache: "FeatureCache", n: int) -> dict[str, np.ndarray]:
    w, t, d = cache.windows, cache.frames, cache.dim
    return {"features": np.empty((n, w, t, d), np.float16), "mask": np.empty((n, w, t), bool),
            "timestamps": np.empty((n, w, t), np.float32)}


def check_layout(cache: "FeatureCache", index: RecordIndex) -> None:
    """Every ok record's `windows` is the cache's and its `row` a real one: a read takes W rows from `row` of the
    record's own part whatever its line says, so a line edited, or copied from another part or cache, read other
    videos' frames (or -1: the last row) in silence where it had no checksum, else failed as "corrupt cache"."""
    a, w = index.arrays, cache.windows
    bad = np.flatnonzero(index.ok & ((a["windows"] != w) | (a["row"] < 0) | (a["row"] % w != 0)))
    if bad.size:
        i = int(bad[0])
        raise SagaError(_misplaced(cache, index.parts[int(index.part[i])], index.path(i),
                                   f"row {int(a['row'][i])} and {int(a['windows'][i])} window(s)",
                                   f"every video of this cache holds {w} window(s) (sampling.windows) from a row "
                                   f">= 0 that is a multiple of {w}"))
    unsummed = index.ok & (a["checksum"][:, 0] == 0) & (a["crc32c"] < 0)
    if not unsummed.any():  # a record read from another's rows fails its checksum; the sort costs ~2 s at 10M
        return
    ok = np.flatnonzero(index.ok)
    part, row = index.part[ok], a["row"][ok]
    order = np.lexsort((row, part))
    same = np.flatnonzero((part[order][1:] == part[order][:-1]) & (row[order][1:] == row[order][:-1]))
    if same.size:  # two videos on the same rows (a line copied over another's), one of them without a checksum
        i, j = int(ok[order[same[0]]]), int(ok[order[same[0] + 1]])
        raise SagaError(_misplaced(cache, index.parts[int(index.part[j])], index.path(j), f"row {int(a['row'][j])}",
                                   f"the record of {index.path(i)} holds that row"))


def _check_inside(cache: "FeatureCache", loc: Located) -> None:
    """Every ok record's rows lie within its part's arrays (past their end a read gave zeros, the fill value)."""
    w = cache.windows
    for code in np.unique(loc.part[loc.ok]).tolist():
        name = loc.parts[code]
        sel = np.flatnonzero((loc.part == code) & loc.ok)
        ends = loc.row[sel].astype(np.int64) + w
        rows = cache.part(name)["features"].shape[0]
        if ends.max() > rows:
            rec = loc.records[int(sel[int(np.argmax(ends))])]
            raise SagaError(_misplaced(cache, name, rec.path, f"row {rec.row}",
                                       f"part {name} holds {rows} rows and every video {w} of them"))


def _misplaced(cache: "FeatureCache", part: str, path: str, says: str, why: str) -> str:
    return (f"{cache.root / 'parts' / part / MANIFEST}: the record of {path} says {says}, but {why}; the line was "
            "edited or copied from another part or cache: restore the file, or delete the part, rerun `saga extract` "
            "and `saga cache verify --seal`")


def read(cache: "FeatureCache", records: Sequence[VideoRecord], check: bool) -> dict[str, np.ndarray]:
    """features (n, W, T, D), mask, timestamps for records in any order (grouped by part, rows ascending)."""
    loc = Located.of(records)
    if not loc.ok.all():
        rec = records[int(np.flatnonzero(~loc.ok)[0])]
        raise SagaError(f"{rec.path}: has no features (status {rec.status}: {rec.error})")
    _check_inside(cache, loc)
    w = cache.windows
    out = empty(cache, len(records))
    for code in np.unique(loc.part):
        idx = np.flatnonzero(loc.part == code)
        rows = (loc.row[idx, None].astype(np.int64) + np.arange(w)).ravel()
        dest = (idx[:, None] * w + np.arange(w)).ravel()  # flat (record, window) slot of each row
        order = np.argsort(rows, kind="stable")
        readers = cache.readers(loc.parts[code])
        for name, arr in out.items():  # rows land in place: no copy of the whole read
            readers[name].take(rows[order], arr.reshape(-1, *arr.shape[2:]), dest[order])
    if check:
        check_rows(cache, loc, out)
    return out


def shards(cache: "FeatureCache", records: Sequence[VideoRecord]) -> list[ShardRef]:
    """Records grouped by stored shard (in part, then shard order), each group ordered by row."""
    loc = Located.of(records)
    if not len(records):
        return []
    _check_inside(cache, loc)
    size = np.array([cache.readers(p)["features"].chunk_rows for p in loc.parts], np.int64)
    shard = loc.row // size[loc.part]
    rank = np.empty(len(loc.parts), np.int64)
    rank[np.argsort(np.array(loc.parts))] = np.arange(len(loc.parts))
    order = np.lexsort((loc.row, shard, rank[loc.part]))
    key = np.stack([loc.part[order].astype(np.int64), shard[order]], 1)
    cuts = np.flatnonzero((key[1:] != key[:-1]).any(1)) + 1
    refs = []
    windows = cache.windows
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, order.size]):
        pos = order[lo:hi]
        code, s = int(loc.part[pos[0]]), int(shard[pos[0]])
        group = records.take(pos) if lazy(records) else tuple(records[i] for i in pos)
        rows = loc.row[pos].astype(np.int64)
        refs.append(ShardRef(loc.parts[code], s * int(size[code]), int(rows.max()) + windows, group, pos, rows))
    return refs


def read_shard(cache: "FeatureCache", ref: ShardRef, check: bool) -> dict[str, np.ndarray]:
    """The arrays of a shard's records, (n, W, ...) in `ref.records` order: one stored object per array."""
    readers = cache.readers(ref.part)
    w = cache.windows
    rel = (ref.rows[:, None] - ref.start + np.arange(w)).ravel()
    contiguous = rel.size and rel[0] == 0 and bool((np.diff(rel) == 1).all())
    sparse = ref.stop - ref.start > max(SPARSE * rel.size, SPARSE_ROWS)  # a crafted row 10^9 of a 10^9-row shard
    out = {}
    for name in ARRAYS:
        if sparse:  # only the rows asked for: a whole-span block would allocate every row between them
            data = readers[name].take(ref.start + np.sort(rel))[np.argsort(np.argsort(rel, kind="stable"))]
        else:
            block = readers[name].block(ref.start, ref.stop)
            data = block[: rel.size] if contiguous else block[rel]
        out[name] = data.reshape(len(ref.rows), w, *data.shape[1:])
    if check:
        check_rows(cache, Located.of(ref.records), out)
    return out


def advise(cache: "FeatureCache", ref: ShardRef) -> None:
    """Start the kernel reading a shard that will be read soon (the streaming reader's look-ahead)."""
    for r in cache.readers(ref.part).values():
        r.advise(ref.start, ref.stop)


def nonfinite(features: np.ndarray) -> np.ndarray:
    """Per record: any NaN/inf in its float16 features (exponent bits all ones), ~15x faster than isfinite."""
    bits = features.reshape(features.shape[0], -1).view(np.uint16)
    return np.bitwise_and(bits, 0x7FFF).max(1, initial=0) >= 0x7C00 if bits.size else np.zeros(len(bits), bool)


def _mismatches(loc: Located, data: dict[str, np.ndarray], idx: list[int]) -> list[int]:
    """Records among idx whose bytes do not match: a matching crc32c passes at once (~7 GB/s); without
    one, or when it differs, the blake2b-128 decides (the record's checksum of record)."""
    bad = []
    for i in idx:
        crc = int(loc.crc32c[i])
        if crc >= 0:
            value = 0
            for name in ARRAYS:
                value = google_crc32c.extend(value, np.ascontiguousarray(data[name][i]).tobytes())
            if value == crc:
                continue
            if not loc.checksum[i, 0]:
                bad.append(i)
                continue
        h = hashlib.blake2b(digest_size=16)
        for name in ARRAYS:
            h.update(memoryview(np.ascontiguousarray(data[name][i])).cast("B"))
        if h.digest() != loc.checksum[i, 1:].tobytes():
            bad.append(i)
    return bad


def check_rows(cache: "FeatureCache", loc: Located, data: dict[str, np.ndarray]) -> None:
    """Every record's checksum and finiteness; a SagaError naming the first bad record.

    Hashing is the one CPU cost of a checked read (~0.9 GB/s per core), so big reads hash on
    HASH_THREADS threads; the result is the same as hashing in order."""
    todo = np.flatnonzero(loc.checksum[:, 0] | (loc.crc32c >= 0)).tolist()
    nbytes = sum(a[:1].nbytes for a in data.values()) * len(todo)
    if HASH_THREADS > 1 and nbytes >= PARALLEL_BYTES:
        halves = [todo[k::HASH_THREADS] for k in range(HASH_THREADS)]
        bad = sorted(i for found in _pool().map(lambda h: _mismatches(loc, data, h), halves) for i in found)
    else:
        bad = _mismatches(loc, data, todo)
    if bad:
        rec = loc.records[bad[0]]
        raise SagaError(f"{cache.root}: {rec.path} (part {rec.part}, row {rec.row}): stored features do not "
                        "match their checksum (corrupt cache); run `saga cache verify` and re-extract")
    wrong = nonfinite(data["features"])
    if wrong.any():
        rec = loc.records[int(np.flatnonzero(wrong)[0])]
        raise SagaError(f"{cache.root}: {rec.path}: features contain NaN/inf (a data error in the cache, "
                        "not a training problem); run `saga cache verify` and re-extract it")


_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="saga-hash"))
    return _POOL[0]
