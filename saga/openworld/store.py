"""A JSON file and its tensors, committed together: the JSON names a content-addressed tensors file.

Two files cannot be replaced in one atomic step, so the tensors go to `<stem>.<hash>.safetensors`
(a new name each time their content changes) first, and `<stem>.json` (the commit point, naming
that file and its hash) is replaced second; superseded tensors files are removed last. A kill at
any point leaves the previous pair, or the new one, complete and readable; never a mix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from saga.errors import SagaError
from saga.fileio import read_json, write_bytes, write_json


def save_pair(folder: Path, stem: str, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write `<stem>.<hash>.safetensors`, then `<stem>.json` naming it; remove older tensors files."""
    data = save_bytes({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in tensors.items()},
                      metadata={"stem": stem})
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
    return meta, tensors
