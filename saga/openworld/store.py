"""A JSON file and its tensors, committed together: the JSON names a content-addressed tensors file.

Two files cannot be replaced in one atomic step, so the tensors go to `<stem>.<hash>.safetensors`
(a new name each time their content changes) first, and `<stem>.json` (the commit point, naming
that file and its hash) is replaced second; superseded tensors files are removed last. A kill at
any point leaves the previous pair, or the new one, complete and readable; never a mix. With `seal`, the
JSON's values are also written into the tensors file's header, which its hash covers: a value edited in the
JSON alone (a threshold, k, the score's kind) no longer matches (`edited`). Writers hold
`pair_lock` of the folder: another writer's cleanup would delete the tensors file just committed, and
two enrollments of one run would each add their entry to the same old file (one lost).
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from saga.errors import SagaError
from saga.fileio import loads, read_json, write_bytes, write_json
from saga.locks import waiting_lock
from saga.runs.files import OPENWORLD_LOCK

SEAL = "values"  # the tensors file's metadata key holding the JSON's values (`save_pair(seal=True)`)
MISSING = object()


def pair_lock(folder: Path) -> AbstractContextManager[None]:
    """The folder's open-world writer lock, held across load -> save: a second writer waits for the first."""
    return waiting_lock(folder / OPENWORLD_LOCK, f"{folder}: another saga process is writing its open-world "
                                                 "files (enroll / openset fit / calibrate); waiting for it to "
                                                 "finish")


def class_mismatch(got: Any, want: list[str] | None) -> str:
    """How a file's `classes` differ from the run's, briefly ("" when they are the run's, or `want` is None)."""
    if not names(got):
        return "classes is not a list of names"
    if want is None or got == list(want):
        return ""
    if len(got) != len(want):
        return f"{len(got)} classes, the run has {len(want)}"
    i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    return f"class {i} is {got[i]!r}, the run's is {want[i]!r}"


def names(x: Any) -> bool:
    """A list of strings from a JSON file."""
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def finite(x: Any) -> bool:
    """A real number from a JSON file (not a bool, not NaN or infinite)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def save_pair(folder: Path, stem: str, tensors: dict[str, np.ndarray], meta: dict[str, Any],
              seal: bool = False) -> Path:
    """Write `<stem>.<hash>.safetensors`, then `<stem>.json` naming it; remove older tensors files.
    `seal`: the tensors file's header keeps a copy of `meta` too (`edited` compares the JSON with it).

    The caller holds `pair_lock(folder)`."""
    header = {"stem": stem, **({SEAL: json.dumps(meta, sort_keys=True)} if seal else {})}
    data = save_bytes({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in tensors.items()},
                      metadata=header)
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    name = f"{stem}.{digest[:16]}.safetensors"
    write_bytes(folder / name, data)
    write_json(folder / f"{stem}.json", {**meta, "tensors": name, "tensors_blake2b": digest})
    for old in folder.glob(f"{stem}.*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / f"{stem}.json"


def load_pair(folder: Path, stem: str, missing: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON and its tensors, the tensors checked against the hash the JSON recorded."""
    meta, tensors, _ = read_pair(folder, stem, missing)
    return meta, tensors


def read_pair(folder: Path, stem: str,
              missing: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
    """`load_pair`, and the values sealed in the tensors file (None when it was written without `seal`)."""
    meta = read_json(folder / f"{stem}.json", missing=missing)
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), str) or "/" in meta["tensors"]:
        raise SagaError(f"{folder / (stem + '.json')}: damaged (no tensors file named); {missing.lstrip('; ')}")
    path = folder / meta["tensors"]
    try:
        data = path.read_bytes()
    except OSError:
        raise SagaError(f"{path}: missing (named by {stem}.json); {missing.lstrip('; ')}") from None
    if hashlib.blake2b(data, digest_size=16).hexdigest() != meta.get("tensors_blake2b"):
        raise SagaError(f"{path}: does not match {stem}.json (damaged); {missing.lstrip('; ')}")
    try:
        tensors = {k: v.numpy() for k, v in load_bytes(data).items()}
    except Exception as exc:  # safetensors raises its own error types
        raise SagaError(f"{path}: unreadable safetensors ({exc}); {missing.lstrip('; ')}") from None
    return meta, tensors, sealed_values(data)


def sealed_values(data: bytes) -> dict[str, Any] | None:
    """The JSON values `save_pair(seal=True)` kept in a safetensors file's header (its hash already checked)."""
    try:
        size = int.from_bytes(data[:8], "little")
        sealed = loads(loads(data[8:8 + size])["__metadata__"][SEAL])
    except (KeyError, TypeError, ValueError):
        return None
    return sealed if isinstance(sealed, dict) else None


def edited(meta: dict[str, Any], sealed: dict[str, Any] | None) -> str:
    """The first value of the JSON that is not the one its writer sealed ("" when none, or nothing was sealed)."""
    if sealed is None:
        return ""
    for key in sorted((set(meta) | set(sealed)) - {"tensors", "tensors_blake2b"}):
        if meta.get(key, MISSING) != sealed.get(key, MISSING):
            got = repr(meta[key]) if key in meta else "missing"
            return f"{key} {got} is not the value fitted, {sealed.get(key, 'none')!r}"
    return ""
