"""One part's manifest as numpy columns, and the checksummed sidecar that saves re-parsing it.

Why: a million `VideoRecord` objects cost ~1.6 KB each and 26 s to parse (docs/performance.md).
Columns cost ~100 B per record. The manifest (JSONL) stays the source of truth: the sidecar
`manifest.index.npz` beside it is derived, written atomically (only for sealed parts, whose
manifest never changes again), keyed on the manifest's size, mtime, inode and ctime, covered by a blake2b
digest, and rebuilt whenever it is missing, stale, damaged or from another version. A cache on
read-only storage simply parses every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from saga.cache.manifest import INT_RANGES, OK, iter_lines, manifest_digest, parse_line
from saga.errors import SagaError
from saga.fileio import atomic_path, loads
from saga.npzfile import read_member, stored_members

SIDECAR = "manifest.index.npz"
VERSION = 3  # 3: rows sorted by path, one per path
SORT_CHUNK = 65536
CHUNK = 65536  # lines parsed into Python lists before becoming numpy (bounds the parse's transient memory)
INTS = ("size", "mtime_ns", "row", "windows", "n_frames")
CODED = ("status", "generator", "split", "error", "backend", "labels", "fps")  # few distinct values: table + codes
PATH_CODEC = ("utf-8", "surrogatepass")  # json may give lone surrogates (non-UTF-8 file names)
SIDECAR_RATIO = 4  # a sidecar holds at most this many bytes per byte of its manifest (+ 1 MiB); saga's hold < 1
# Every column a sidecar must hold: one written by another saga version (same VERSION, other columns)
# is rebuilt, never half-used.
COLUMNS = frozenset((*INTS, *CODED, "checksum", "crc32c", "path_blob", "path_offsets"))


class PartColumns:
    """Columns of one part's committed records, in manifest order (a later line of a path wins in merging)."""

    def __init__(self, arrays: dict[str, np.ndarray], tables: dict[str, list[str]], extra: dict[int, dict],
                 manifest: tuple[int, str] | None = None) -> None:
        self.arrays, self.tables, self.extra = arrays, tables, extra
        # (complete lines, blake2b) of the manifest parsed, what its seal records: kept in the sidecar, so the
        # seal check of every training run (saga.cache.sealcheck) never hashes an unchanged manifest again
        self.manifest = manifest

    def __len__(self) -> int:
        return int(self.arrays["row"].size)

    @classmethod
    def parse(cls, manifest: Path) -> "PartColumns":
        builder = _Builder()
        for number, line in iter_lines(manifest):
            data = parse_line(line, manifest, number)
            try:
                _check_place(data, manifest.parent.name)
                builder.add(data)
            except ValueError as exc:
                raise SagaError(f"{manifest}:{number}: corrupt manifest line ({exc}); restore the file or "
                                "re-extract") from None
        cols = builder.finish()
        cols.manifest = manifest_digest(manifest)
        return cols

    @classmethod
    def load(cls, manifest: Path, write: bool) -> "PartColumns":
        """From the sidecar when it is current, else parsed (and the sidecar rewritten when `write`)."""
        key = _manifest_key(manifest)
        cols = _read_sidecar(manifest.with_name(SIDECAR), key)
        if cols is None:
            cols = cls.parse(manifest)
            if write:
                _write_sidecar(manifest.with_name(SIDECAR), key, cols)
        return cols


def _check_place(data: dict[str, Any], part: str) -> None:
    """ValueError unless an ok record names the part it is in and where its rows are: reading goes by the folder
    and the row whatever `part` says, so a line copied from another part read this part's rows as its video's."""
    if data["status"] != OK:
        return
    if data.get("part") != part:
        raise ValueError(f"an ok record of part {part} says part {json.dumps(data.get('part'))[:40]}")
    for key in ("row", "windows"):
        if key not in data:
            raise ValueError(f"an ok record without {key!r}")


class _Builder:
    """Accumulates parsed lines in chunks of CHUNK, interning the coded columns."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, int]] = {k: {} for k in CODED}
        self.lists: dict[str, list[Any]] = {}
        self.chunks: list[dict[str, np.ndarray]] = []
        self.extra: dict[int, dict] = {}
        self._labels: dict[tuple, str] = {}
        self.n = 0
        self._reset()

    def _reset(self) -> None:
        self.lists = {k: [] for k in (*INTS, "checksum", "crc32c", "path", *CODED)}

    def add(self, data: dict[str, Any]) -> None:
        lists = self.lists
        for key in INTS:
            lists[key].append(data.get(key, -1 if key == "row" else 0))
        lists["checksum"].append(_checksum_bytes(data.get("checksum", "")))
        lists["crc32c"].append(_crc(data.get("crc32c", "")))
        lists["path"].append(data["path"].encode(*PATH_CODEC))
        for key in CODED:
            value = float(data.get(key, 0.0)) if key == "fps" else data.get(key, "")
            if key == "labels":  # a few distinct label sets: dumped to JSON once each
                seen = self._labels.get(tuple(value.items()))
                value = seen if seen is not None else self._labels.setdefault(
                    tuple(value.items()), json.dumps(value, sort_keys=True))
            lists[key].append(self.tables[key].setdefault(value, len(self.tables[key])))
        if data.get("extra"):
            self.extra[self.n] = data["extra"]
        self.n += 1
        if len(lists["path"]) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        lists = self.lists
        if not lists["path"]:
            return
        chunk = {key: np.array(lists[key], np.int64) for key in INTS}
        chunk["crc32c"] = np.array(lists["crc32c"], np.int64)
        chunk["checksum"] = np.frombuffer(b"".join(lists["checksum"]), np.uint8).reshape(-1, 17)
        lengths = np.fromiter((len(p) for p in lists["path"]), np.int64, len(lists["path"]))
        chunk["path_len"] = lengths
        chunk["path_blob"] = np.frombuffer(b"".join(lists["path"]), np.uint8)
        for key in CODED:
            chunk[key] = np.array(lists[key], np.int32)
        self.chunks.append(chunk)
        self._reset()

    def finish(self) -> PartColumns:
        self._flush()
        keys = (*INTS, "checksum", "crc32c", "path_len", "path_blob", *CODED)
        if self.chunks:
            arrays = {}
            for k in keys:  # column by column, freeing the chunks' copies as it goes
                arrays[k] = np.concatenate([c.pop(k) for c in self.chunks])
        else:
            arrays = {k: np.zeros((0, 17) if k == "checksum" else 0, _dtype(k)) for k in keys}
        offsets = np.zeros(arrays["path_len"].size + 1, np.int64)
        np.cumsum(arrays.pop("path_len"), out=offsets[1:])
        arrays["path_offsets"] = offsets
        tables = {k: list(v) for k, v in self.tables.items()}
        keep = sorted_unique(arrays["path_blob"], arrays["path_offsets"])
        extra = self.extra
        if keep is not None:  # sorted and deduplicated once, here, so that opening need not sort again
            arrays, extra = reorder(arrays, extra, keep)
        return PartColumns(narrow(arrays, tables), tables, extra)


def narrow(arrays: dict[str, np.ndarray], tables: dict[str, list]) -> dict[str, np.ndarray]:
    """The smallest integer dtype each column needs (codes of a 20-entry table: 1 byte, not 8)."""
    for key, arr in arrays.items():
        if key in CODED:
            arrays[key] = arr.astype(np.uint8 if len(tables[key]) <= 256 else np.uint16
                                     if len(tables[key]) <= 65536 else np.int32, copy=False)
        elif key in ("windows", "n_frames", "row") and arr.size:
            for small in (np.int16, np.int32):
                if np.iinfo(small).min <= arr.min() and arr.max() <= np.iinfo(small).max:
                    arrays[key] = arr.astype(small, copy=False)
                    break
    return arrays


def _dtype(key: str) -> type:
    return {"checksum": np.uint8, "path_blob": np.uint8}.get(key, np.int32 if key in CODED else np.int64)


def _crc(text: str) -> int:
    """The crc32c as an int; -1 when absent (caches written before it was recorded)."""
    if not text:
        return -1
    if len(text) != 8:
        raise ValueError(f"crc32c {text[:40]!r} is not 8 hex digits")
    return int(text, 16)


def _checksum_bytes(text: str) -> bytes:
    """17 bytes: a flag (1 = a blake2b-128 hex checksum) and its 16 bytes; other text keeps flag 0."""
    if len(text) == 32:
        try:
            return b"\x01" + bytes.fromhex(text)
        except ValueError:
            pass
    if text:
        raise ValueError(f"checksum {text[:40]!r} is not 32 hex digits")
    return bytes(17)


# -- sidecar ---------------------------------------------------------------------------------------
def _manifest_key(manifest: Path) -> list[int]:
    """Size, mtime, inode and ctime: size and mtime alone let a same-length edit whose mtime was put back
    (`touch -r`, `cp -p` / `rsync -t` of an edited copy) keep the stale columns and digest, so the seal check
    passed an edited label. No user tool sets ctime, and replacing the file changes the inode; a copied or
    hard-linked cache costs one re-parse per part (then its sidecar is rewritten)."""
    try:
        st = manifest.stat()
    except FileNotFoundError:
        return [0, 0, 0, 0]
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _digest(arrays: dict[str, np.ndarray], meta_text: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).data)
    h.update(meta_text.encode())
    return h.hexdigest()


def _write_sidecar(path: Path, key: list[int], cols: PartColumns) -> None:
    """Best effort: a read-only cache or a full disk only costs the next open a re-parse."""
    meta = json.dumps({"version": VERSION, "key": key, "tables": cols.tables, "manifest": cols.manifest,
                       "extra": {str(i): e for i, e in cols.extra.items()}}, sort_keys=True)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.frombuffer(meta.encode(), np.uint8),
                         digest=np.frombuffer(_digest(cols.arrays, meta).encode(), np.uint8), **cols.arrays)
    except OSError:
        pass


def _read_sidecar(path: Path, key: list[int]) -> PartColumns | None:
    """The sidecar's columns when it matches the manifest's key, its digest and saga's layout; else None (rebuild).

    A received cache's sidecar is untrusted: its size is bounded by its manifest's (`_limit`) before anything is
    read, the key is compared before any column is decompressed, and the tables and codes are checked, since
    the digest proves only that the file is whole, not that saga wrote it."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = stored_members(zf, path.stat().st_size, _limit(key), len(COLUMNS) + 2)
            if members is None or "meta" not in members:
                return None
            meta_text = read_member(zf, members["meta"]).tobytes().decode()
            meta = loads(meta_text)
            if not isinstance(meta, dict) or meta.get("version") != VERSION or meta.get("key") != key:
                return None
            data = {k: read_member(zf, info) for k, info in members.items() if k != "meta"}
        digest = data.pop("digest").tobytes().decode()
    except Exception:  # noqa: BLE001 - missing, truncated, not a zip/npz: it is only a cache, rebuild it
        return None
    if set(data) != COLUMNS or _digest(data, meta_text) != digest or not _consistent(data, meta):
        return None
    manifest = meta.get("manifest")  # absent in an older saga's sidecar: parsed (and rewritten) once
    if not (isinstance(manifest, list) and len(manifest) == 2 and type(manifest[0]) is int
            and isinstance(manifest[1], str)):
        return None
    return PartColumns(data, meta["tables"], {int(i): e for i, e in meta["extra"].items()}, tuple(manifest))


def _limit(key: list[int]) -> int:
    """The most bytes a sidecar of this manifest may hold: its columns take < 70 B per line of >= ~90 B."""
    return SIDECAR_RATIO * max(key[0], 0) + (1 << 20)


def _consistent(data: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
    """Whether columns and tables have the shapes, types and code ranges that indexing them relies on."""
    tables, extra = meta.get("tables"), meta.get("extra")
    if not isinstance(tables, dict) or set(tables) != set(CODED) or not isinstance(extra, dict):
        return False
    n = data["row"].size
    if any(arr.dtype.kind not in "iu" or arr.ndim != 1 for k, arr in data.items() if k != "checksum"):
        return False
    if data["checksum"].shape != (n, 17) or any(data[k].size != n for k in (*INTS, *CODED, "crc32c")) or any(
            data[k].dtype != np.uint8 for k in ("checksum", "path_blob")):
        return False
    offsets = data["path_offsets"]
    if (offsets.size != n + 1 or offsets[0] != 0 or offsets[-1] != data["path_blob"].size
            or (offsets[1:] < offsets[:-1]).any()):
        return False
    if not all(_table_ok(k, tables[k]) and (n == 0 or 0 <= data[k].min() <= data[k].max() < len(tables[k]))
               for k in CODED):
        return False
    if n and not all(INT_RANGES[k][0] <= data[k].min() and data[k].max() <= INT_RANGES[k][1] for k in INTS):
        return False  # what `check_fields` refuses in a manifest line
    return all(isinstance(e, dict) and i.isascii() and i.isdigit() and int(i) < n for i, e in extra.items())


def _table_ok(key: str, table: Any) -> bool:
    """A coded column's table as `_Builder` makes it: text, numbers for fps, JSON objects of labels."""
    if not isinstance(table, list):
        return False
    if key == "fps":
        return all(type(v) in (int, float) and 0 <= v <= sys.float_info.max for v in table)
    if not all(isinstance(v, str) for v in table):
        return False
    return key != "labels" or all(_labels_ok(v) for v in table)


def _labels_ok(text: str) -> bool:
    try:
        labels = loads(text)
    except ValueError:
        return False
    return isinstance(labels, dict) and all(v is None or isinstance(v, str) for v in labels.values())


def sidecar_writable(folder: Path) -> bool:
    """Only a sealed part's manifest is final; an unsealed one is still being appended to."""
    return (folder / "seal.json").exists() and os.access(folder, os.W_OK)


# -- path order ----------------------------------------------------------------------------------
def sorted_unique(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """Positions of each distinct path's last occurrence, in path order (bytewise = code-point order);
    None when the paths already are sorted and distinct (a sidecar's, a single part's): no reordering."""
    n = offsets.size - 1
    if n == 0:
        return np.zeros(0, np.int64)
    lengths = np.diff(offsets)
    width = -(-max(int(lengths.max()), 1) // 8) * 8  # whole big-endian uint64 words: numeric sorts, not strcmp
    keys = np.zeros((n, width), np.uint8)
    for lo in range(0, n, SORT_CHUNK):  # chunked so the gather's index array stays small
        hi = min(lo + SORT_CHUNK, n)
        col = np.arange(width)
        valid = col < lengths[lo:hi, None]
        src = (offsets[lo:hi, None] + col)[valid]
        keys[lo:hi][valid] = blob[src]
    words = keys.view(">u8")  # (n, width / 8); zero padding sorts a prefix first, as strcmp does
    del keys
    if n == 1 or _strictly_increasing(words):
        return None
    order = np.lexsort(words.T[::-1])  # stable; the first word is the primary key
    ordered = words[order]
    last = np.r_[(ordered[1:] != ordered[:-1]).any(1), True]
    return order[last]


def gather_blob(blob: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes of the kept paths, concatenated in their new order."""
    out = np.empty(int(lengths.sum()), np.uint8)
    dst = np.r_[0, np.cumsum(lengths)]
    for lo in range(0, starts.size, SORT_CHUNK):
        hi = min(lo + SORT_CHUNK, starts.size)
        rel = np.arange(int(dst[hi] - dst[lo])) - np.repeat(dst[lo:hi] - dst[lo], lengths[lo:hi])
        out[dst[lo]:dst[hi]] = blob[np.repeat(starts[lo:hi], lengths[lo:hi]) + rel]
    return out


def _strictly_increasing(words: np.ndarray) -> bool:
    """Whether rows of big-endian words are in strictly increasing lexicographic order (O(n))."""
    a, b = words[:-1], words[1:]
    differ = a != b
    first = differ.argmax(1)
    rows = np.arange(a.shape[0])
    return bool(differ.any(1).all() and (b[rows, first] > a[rows, first]).all())


def reorder(arrays: dict[str, np.ndarray], extra: dict[int, dict],
            keep: np.ndarray) -> tuple[dict[str, np.ndarray], dict[int, dict]]:
    """Rows `keep` in that order; `arrays` is emptied column by column as they are reordered."""
    offsets = arrays.pop("path_offsets")
    starts, lengths = offsets[:-1][keep], np.diff(offsets)[keep]
    del offsets
    out = {"path_blob": gather_blob(arrays.pop("path_blob"), starts, lengths)}
    out["path_offsets"] = np.r_[0, np.cumsum(lengths)].astype(np.uint32 if out["path_blob"].size < 2**32
                                                               else np.int64)
    for key in list(arrays):
        out[key] = arrays.pop(key)[keep]
    new_pos = {int(old): i for i, old in enumerate(keep) if int(old) in extra} if extra else {}
    return out, {new_pos[o]: extra[o] for o in extra if o in new_pos}
