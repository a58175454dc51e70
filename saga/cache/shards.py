"""Direct reads of a part's Zarr v3 arrays: the shard index parsed by hand, one read per shard.

Why: zarr's generic sharding codec decodes every inner chunk through its async pipeline,
which made whole-shard reads CPU-bound at ~0.2x a raw read of the same bytes
(docs/performance.md). The layouts saga writes are simple: C-order rows, a regular chunk
grid along axis 0 only, no compression, inner chunks stored in order. For exactly those
layouts this module reads the stored objects itself (one `readinto` per shard, the shard
index checked with its crc32c, `np.frombuffer` views when the inner chunks are contiguous).
Anything else (other codecs, chunking along other axes, a damaged index) goes through zarr,
so the store stays a plain Zarr v3 store and results are byte-identical to zarr's own read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from saga.errors import SagaError
from saga.fileio import loads

try:  # zarr's crc32c codec uses the same Castagnoli checksum
    import google_crc32c as _crc
except ImportError:  # pragma: no cover - a zarr install without it cannot write crc32c either
    _crc = None

EMPTY = 2**64 - 1  # offset and length of an absent inner chunk
SEQUENTIAL_AHEAD = 2  # objects hinted (POSIX_FADV_WILLNEED) ahead of a sequential scan
INDEX_CACHE = 4096  # parsed shard indexes kept for random reads (16 B per inner chunk each)


class Layout:
    """What a direct reader needs from an array's zarr.json; `Layout.parse` returns None when unsupported."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, fill: Any, rows: int, inner: int | None) -> None:
        self.shape, self.dtype, self.rows, self.inner = shape, dtype, rows, inner
        self.fill = np.array(fill, dtype)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.n_inner = rows // inner if inner else 1

    @classmethod
    def parse(cls, meta: dict[str, Any]) -> "Layout | None":
        """A Layout for saga's simple layouts; None (use zarr) for anything else."""
        try:
            shape = tuple(int(s) for s in meta["shape"])
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
            grid = meta["chunk_grid"]
            chunk = tuple(grid["configuration"]["chunk_shape"])
            keys = meta["chunk_key_encoding"]
            if (meta.get("zarr_format") != 3 or grid["name"] != "regular" or not shape or chunk[1:] != shape[1:]
                    or keys["name"] != "default" or keys.get("configuration", {}).get("separator", "/") != "/"
                    or meta.get("storage_transformers") or dtype.kind not in "biuf"):
                return None
            codecs = meta["codecs"]
            if len(codecs) == 1 and _plain_bytes(codecs[0]):
                return cls(shape, dtype, meta["fill_value"], chunk[0], None)
            if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed" or _crc is None:
                return None
            conf = codecs[0]["configuration"]
            inner = tuple(conf["chunk_shape"])
            index = conf["index_codecs"]
            if (inner[1:] != shape[1:] or chunk[0] % inner[0] or len(conf["codecs"]) != 1
                    or not _plain_bytes(conf["codecs"][0]) or conf.get("index_location", "end") != "end"
                    or len(index) != 2 or not _plain_bytes(index[0]) or index[1]["name"] != "crc32c"):
                return None
            return cls(shape, dtype, meta["fill_value"], chunk[0], inner[0])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None


def _plain_bytes(codec: dict[str, Any]) -> bool:
    return codec.get("name") == "bytes" and codec.get("configuration", {}).get("endian", "little") == "little"


class ShardError(Exception):
    """A stored object this reader cannot trust (bad index crc, out-of-range offsets): use zarr instead."""


class ArrayReader:
    """Rows of one stored array, read directly when its layout is understood, else through zarr."""

    def __init__(self, folder: Path, array: Any) -> None:
        self.folder, self.array = folder, array
        try:
            self.layout = Layout.parse(loads((folder / "zarr.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            self.layout = None
        self._index: dict[int, np.ndarray | None] = {}
        self._next = -1  # the object a sequential scan would read next

    @property
    def direct(self) -> bool:
        return self.layout is not None

    @property
    def chunk_rows(self) -> int:
        """Rows per stored object (a shard when sharded)."""
        return self.layout.rows if self.layout else int(self.array.chunks[0] if self.array.shards is None
                                                        else self.array.shards[0])

    def _key(self, k: int) -> Path:
        return self.folder.joinpath("c", str(k), *("0" * (len(self.layout.shape) - 1)))

    # -- whole objects ---------------------------------------------------------------------------
    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop): one read per stored object (a view when one object holds them all)."""
        if self.layout is None:
            return self._zarr(lambda: self.array[start:stop])
        rows = self.layout.rows
        first, last = start // rows, (stop - 1) // rows
        if first == self._next:  # a sequential scan: let the disk fetch what comes next meanwhile
            self.advise((last + 1) * rows, (last + 1 + SEQUENTIAL_AHEAD) * rows)
        self._next = last + 1
        pieces = []
        for k in range(first, last + 1):
            lo, hi = max(start, k * rows), min(stop, (k + 1) * rows)
            try:
                pieces.append(self._read_object(k, lo - k * rows, hi - k * rows))
            except ShardError:  # zarr decides: it reads what it can or raises its own error
                pieces.append(self._zarr(lambda: self.array[lo:hi]))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def advise(self, start: int, stop: int) -> None:
        """Ask the kernel to start reading rows [start, stop) now (POSIX_FADV_WILLNEED), so the disk
        works while the caller hashes or trains on what it already has. Best effort."""
        if self.layout is None or not hasattr(os, "posix_fadvise"):
            return
        for k in range(start // self.layout.rows, min(stop - 1, self.layout.shape[0] - 1) // self.layout.rows + 1):
            try:
                fd = os.open(self._key(k), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def _read_object(self, k: int, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of stored object k. Only those rows are allocated: the rows per object come from
        zarr.json, which a crafted cache may set to 10^9 while its files hold nothing (absent rows read as fill)."""
        lay = self.layout
        path = self._key(k)
        try:
            with open(path, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                buf = bytearray(size)
                if fh.readinto(buf) != size:
                    raise ShardError(f"{path}: short read")
        except FileNotFoundError:
            return np.full((hi - lo, *lay.shape[1:]), lay.fill)
        if lay.inner is None:
            if size != lay.rows * lay.row_bytes:
                raise ShardError(f"{path}: {size} bytes")
            return np.frombuffer(buf, lay.dtype).reshape(lay.rows, *lay.shape[1:])[lo:hi]
        index = self._parse_index(bytes(buf[size - 16 * lay.n_inner - 4:]), size, path)
        self._remember(k, index)
        chunk = lay.inner * lay.row_bytes
        if (index[:, 1] == chunk).all() and (index[:, 0] == np.arange(lay.n_inner, dtype=np.uint64) * chunk).all():
            return np.frombuffer(buf, lay.dtype, count=lay.rows * lay.row_bytes // lay.dtype.itemsize).reshape(
                lay.rows, *lay.shape[1:])[lo:hi]
        out = np.full((hi - lo, *lay.shape[1:]), lay.fill)
        for j in range(lo // lay.inner, (hi - 1) // lay.inner + 1):
            off = int(index[j, 0])
            if off != EMPTY:
                a, b = max(lo, j * lay.inner), min(hi, (j + 1) * lay.inner)
                stored = np.frombuffer(buf, lay.dtype, count=chunk // lay.dtype.itemsize, offset=off)
                out[a - lo:b - lo] = stored.reshape(lay.inner, *lay.shape[1:])[a - j * lay.inner:b - j * lay.inner]
        return out

    def _parse_index(self, tail: bytes, size: int, path: Path) -> np.ndarray:
        """(n_inner, 2) offsets and lengths, after checking the crc32c and the bounds."""
        lay = self.layout
        if size < 16 * lay.n_inner + 4 or _crc.value(tail[:-4]) != int.from_bytes(tail[-4:], "little"):
            raise ShardError(f"{path}: shard index checksum mismatch")
        index = np.frombuffer(tail[:-4], "<u8").reshape(lay.n_inner, 2)
        chunk = lay.inner * lay.row_bytes
        present = index[:, 0] != EMPTY
        if ((index[present, 1] != chunk).any() or (index[present, 0] + chunk > size - len(tail)).any()
                or ((index[:, 1] == EMPTY) != ~present).any()):
            raise ShardError(f"{path}: shard index out of range")
        return index

    def _remember(self, k: int, index: np.ndarray | None) -> None:
        if len(self._index) >= INDEX_CACHE:
            self._index.clear()
        self._index[k] = index

    # -- scattered rows ----------------------------------------------------------------------------
    def take(self, rows: np.ndarray, out: np.ndarray | None = None, dest: np.ndarray | None = None) -> np.ndarray:
        """The given rows (ascending), reading only the inner chunks that hold them.

        With `out` and `dest`, row rows[i] goes straight to out[dest[i]] (no intermediate copy)."""
        if out is None:
            out = np.empty((rows.size, *self.array.shape[1:]), self.array.dtype)
            dest = np.arange(rows.size)
        if self.layout is None:
            out[dest] = self._zarr(lambda: self.array.get_orthogonal_selection((rows,)))
            return out
        unit = self.layout.inner or self.layout.rows
        groups = rows // unit
        cuts = np.flatnonzero(np.diff(groups)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, rows.size]):
            try:
                out[dest[lo:hi]] = self._rows_of_unit(int(groups[lo]), rows[lo:hi])
            except ShardError:
                out[dest[lo:hi]] = self._zarr(lambda: self.array.get_orthogonal_selection((rows[lo:hi],)))
        return out

    def _zarr(self, read: Callable[[], np.ndarray]) -> np.ndarray:
        """A read by zarr itself; what its codecs raise on damaged bytes becomes one line naming the array."""
        try:
            return read()
        except Exception as exc:  # zarr/numcodecs raise ValueError, TypeError, ... for a damaged chunk
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SagaError(f"{self.folder}: damaged chunk data ({first}); `saga cache verify` lists the records "
                            "affected: re-extract them into a new cache") from None

    def _rows_of_unit(self, g: int, rows: np.ndarray) -> np.ndarray:
        """Rows of one inner chunk (sharded) or one chunk (unsharded), one pread for the span they cover."""
        lay = self.layout
        unit = lay.inner or lay.rows
        k, j = divmod(g * unit, lay.rows)
        j //= unit
        lo, hi = int(rows[0]) - g * unit, int(rows[-1]) - g * unit + 1
        path = self._key(k)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return np.full((rows.size, *lay.shape[1:]), lay.fill)
        try:
            base = 0
            if lay.inner is not None:
                index = self._index.get(k)
                if index is None:
                    size = os.fstat(fd).st_size
                    tail_n = 16 * lay.n_inner + 4
                    index = self._parse_index(os.pread(fd, tail_n, max(size - tail_n, 0)), size, path)
                    self._remember(k, index)
                base = int(index[j, 0])
                if base == EMPTY:
                    return np.full((rows.size, *lay.shape[1:]), lay.fill)
            data = os.pread(fd, (hi - lo) * lay.row_bytes, base + lo * lay.row_bytes)
        finally:
            os.close(fd)
        if len(data) != (hi - lo) * lay.row_bytes:
            raise ShardError(f"{path}: short read")
        span = np.frombuffer(data, lay.dtype).reshape(hi - lo, *lay.shape[1:])
        return span[rows - g * unit - lo]
