"""A run folder's tsig.npz from someone else is read within its own size: a deflate bomb or a header claiming
a huge array is one line ("damaged T-Sigs"), never inflated or allocated."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy

from saga.errors import SagaError
from saga.explain.tsig import load_tsigs, tsig_weights, write_tsigs
from saga.npzfile import read_npz


def _tsigs(tmp_path: Path) -> Path:
    sigs = {c: {"map": np.full((4, 4), i, np.float32), "profile": np.arange(4, dtype=np.float32), "n": 3}
            for i, c in enumerate(("real", "fake"))}
    return write_tsigs(sigs, tmp_path / "run", stamp={"run_model": "abc123"})["npz"]


def test_saga_s_own_tsig_npz_reads_back(tmp_path: Path) -> None:
    path = _tsigs(tmp_path)
    got = load_tsigs(path)
    assert list(got) == ["real", "fake"] and got["fake"]["n"] == 3 and got["fake"]["map"][0, 0] == 1
    assert tsig_weights(path) == "abc123"


def test_a_deflate_bomb_in_a_tsig_npz_is_one_line_and_never_inflated(tmp_path: Path) -> None:
    path = _tsigs(tmp_path)
    with np.load(path) as z:
        members = {k: z[k] for k in z.files}
    members["maps"] = np.zeros((2, 4096, 4096), np.float32)  # 128 MiB of zeros, deflated to ~130 KB
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **members)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(SagaError, match="damaged T-Sigs"):
            load_tsigs(path)
        assert tsig_weights(path) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated reading a 128 MiB bomb"


def test_a_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    """numpy allocates the shape a header claims before reading: 8 bytes claiming 8 GB is refused first."""
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (8 << 30,)})
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.npy", header.getvalue() + bytes(8))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="claims more"):
            read_npz(path, ("a",))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
