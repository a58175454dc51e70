"""What every cache and run folder records so that it can be reproduced."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent

PACKAGES = ("saga", "torch", "torchvision", "open_clip_torch", "timm", "zarr", "numpy", "decord", "av", "faiss-cpu",
            "scikit-learn")


def versions() -> dict[str, str]:
    """Python's and the packages' versions, and which saga code ran (`source_digest`, `source_commit`): saga's
    version number stays the same across the commits between releases, so it alone could not tell two runs'
    code apart."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["saga_source"] = source_digest()
    commit = source_commit()
    if commit:
        out["saga_commit"] = commit
    return out


@functools.lru_cache(maxsize=1)
def source_digest(package: Path = PACKAGE_DIR) -> str:
    """blake2b of every file of the saga package (code, taxonomies, model configs) by relative path, so an edit,
    a checkout of another commit or an upgrade changes it; bytecode caches are left out. About 10 ms, once."""
    h = hashlib.blake2b(digest_size=8)
    for path in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(package).as_posix().encode() + b"\0")
        h.update(hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def source_commit(package: Path = PACKAGE_DIR) -> str:
    """The git commit saga runs from when it runs from a checkout ("" otherwise: an installed wheel, no git);
    "+edited" marks a checkout whose saga package differs from that commit."""
    if not (package.parent / ".git").exists():
        return ""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # a read must not take the index lock from the user's git
    try:
        head = subprocess.run(["git", "-C", str(package.parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, env=env)
        if head.returncode != 0:
            return ""
        edited = subprocess.run(["git", "-C", str(package.parent), "status", "--porcelain", "--", package.name],
                                capture_output=True, text=True, timeout=5, env=env)
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+edited" if edited.returncode == 0 and edited.stdout.strip() else "")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    import os

    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
