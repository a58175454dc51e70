"""Reading .npz files that may come from someone else (a received cache's sidecar, a run folder's tsig.npz).

`np.load` inflates a deflated member in full and allocates whatever shape a member's .npy header claims
before reading it: a few KB of crafted file can ask for GBs. saga writes its .npz files with `np.savez`
(members stored, not deflated), so a reader here accepts stored members only and checks every header
against the bytes its member holds: what is read is then bounded by the file's own size.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy


def stored_members(zf: zipfile.ZipFile, size: int, limit: int, most: int) -> dict[str, zipfile.ZipInfo] | None:
    """NAME -> member of an npz saga could have written (at most `most` stored .npy members, the file and
    their sum within `limit` bytes); None otherwise."""
    infos = zf.infolist()
    if size > limit or sum(i.file_size for i in infos) > limit or len(infos) > most:
        return None
    if any(i.compress_type != zipfile.ZIP_STORED or not i.filename.endswith(".npy") for i in infos):
        return None
    return {i.filename[:-4]: i for i in infos}


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One member, after its .npy header was found to claim no more than the member holds (numpy allocates
    the claimed shape before reading). ValueError when it claims more, or holds Python objects."""
    with zf.open(info) as fh:
        version = npy.read_magic(fh)
        header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if header is None:
            raise ValueError(f"npy version {version}")
        shape, _, dtype = header(fh)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
            raise ValueError(f"{info.filename}: header claims more than the member holds")
    with zf.open(info) as fh:
        return npy.read_array(fh, allow_pickle=False)


def read_npz(path: Path, names: tuple[str, ...], most: int = 64) -> dict[str, np.ndarray]:
    """The members `names` of the .npz at `path` that it holds, each read within the file's own size.
    OSError, zipfile.BadZipFile or ValueError when it is not an npz saga could have written."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        members = stored_members(zf, size, size, most)
        if members is None:
            raise ValueError("deflated, oversized or foreign members")
        return {name: read_member(zf, members[name]) for name in names if name in members}
