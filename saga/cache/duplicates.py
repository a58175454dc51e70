"""Records that hold the same video under two paths: a renamed or moved video extracted twice.

Why: after a rename or move, `saga extract` extracts the video again under its new path and the
old path's record stays, so the same video trains twice, and when the two paths fall in different
splits it leaks from train into val or test (or teaches two generators). Found from the index
columns: equal feature checksums (the same decoded frames), or equal size, mtime and file name
(a moved file, even where another decoder gave other features). Augmented copies are left out:
they are related to their source by design.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

import numpy as np

from saga.cache.manifest import AUGMENTED

if TYPE_CHECKING:
    from saga.cache.index import RecordIndex
    from saga.cache.manifest import VideoRecord

SHOWN = 10  # pairs named one per line; the rest are counted


def _groups(keys: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
    """Positions sharing a key (rows of `keys`), groups of two or more."""
    if positions.size < 2:
        return []
    rows = np.ascontiguousarray(keys[positions])
    flat = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    dup = np.flatnonzero(counts[inverse] > 1)
    order = dup[np.argsort(inverse[dup], kind="stable")]
    cuts = np.flatnonzero(np.diff(inverse[order])) + 1
    return [positions[g] for g in np.split(order, cuts)]


def _augmented(index: "RecordIndex", positions: np.ndarray) -> np.ndarray:
    """Whether each record's path starts with AUGMENTED, byte by byte over the path blob (no strings)."""
    blob, offsets = index.arrays["path_blob"], index.arrays["path_offsets"]
    prefix = np.frombuffer(AUGMENTED.encode(), np.uint8)
    starts = offsets[positions].astype(np.int64)
    hit = offsets[positions + 1].astype(np.int64) - starts >= prefix.size
    last = max(blob.size - 1, 0)
    for k, byte in enumerate(prefix.tolist()):
        if blob.size == 0:
            return np.zeros(positions.size, bool)
        hit &= blob[np.minimum(starts + k, last)] == byte
    return hit


def duplicate_pairs(index: "RecordIndex") -> list[tuple[int, int, str]]:
    """(first, other, why) for every ok record holding the same video as an earlier one (by path)."""
    a = index.arrays
    ok = np.flatnonzero(index.ok)
    ok = ok[~_augmented(index, ok)]
    summed = ok[a["checksum"][ok, 0] != 0]
    pairs: dict[tuple[int, int], str] = {}
    for group in _groups(a["checksum"], summed):
        for other in group[1:].tolist():
            pairs[(int(group[0]), other)] = "equal feature checksums"
    stamp = np.stack([a["size"].astype(np.int64), a["mtime_ns"].astype(np.int64)], axis=1)
    for group in _groups(stamp, ok):
        by_name: dict[str, int] = {}
        for p in group.tolist():
            first = by_name.setdefault(posixpath.basename(index.path(p)), p)
            if first != p and (first, p) not in pairs:
                pairs[(first, p)] = "equal size, mtime and file name"
    return sorted((i, j, why) for (i, j), why in pairs.items())


def duplicate_warnings(index: "RecordIndex", root: object) -> list[str]:
    """One warning line per pair (the first SHOWN), naming the fix; plus one counting the rest."""
    pairs = duplicate_pairs(index)
    lines = []
    for i, j, why in pairs[:SHOWN]:
        a, b = index.record(i), index.record(j)
        where = (f"splits {a.split}/{b.split}: the video leaks between splits" if a.split != b.split else
                 f"generators {a.generator}/{b.generator}" if a.generator != b.generator else f"split {a.split}")
        lines.append(f"{a.path} and {b.path} hold the same video ({why}; {where}): a video renamed or moved, then "
                     f"extracted again? drop the stale record with `saga cache prune {root} --videos DIR` "
                     "(DIR: the videos folder)")
    if len(pairs) > SHOWN:
        lines.append(f"{len(pairs) - SHOWN} more pair(s) of records hold the same video; "
                     f"`saga cache prune {root} --videos DIR` drops the records of videos no longer in DIR")
    return lines


VideoKeys = tuple[set[bytes], set[tuple[int, int, str]]]


def video_keys(index: "RecordIndex", positions: np.ndarray) -> VideoKeys:
    """What identifies the videos at `positions` (the rules of `duplicate_pairs`): their feature checksums, and
    their (size, mtime, file name)."""
    a = index.arrays
    sums = a["checksum"][positions]
    checksums = {bytes(row[1:]) for row in sums[sums[:, 0] != 0]}
    stamps = {(int(s), int(m), posixpath.basename(index.path(int(p))))
              for p, s, m in zip(positions.tolist(), a["size"][positions].tolist(), a["mtime_ns"][positions].tolist())}
    return checksums, stamps


def holds_one_of(record: "VideoRecord", keys: VideoKeys) -> bool:
    """Whether `record` holds one of the videos `keys` identifies (equal checksum, or size, mtime and file name)."""
    checksums, stamps = keys
    return (bool(record.checksum) and bytes.fromhex(record.checksum) in checksums) or (
        (record.size, record.mtime_ns, posixpath.basename(record.path)) in stamps)
