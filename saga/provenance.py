"""What every cache and run folder records so that it can be reproduced."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
from typing import Any

PACKAGES = ("saga", "torch", "torchvision", "open_clip_torch", "timm", "zarr", "numpy", "decord", "av", "faiss-cpu",
            "scikit-learn")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    import os

    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
