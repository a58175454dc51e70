"""Atomic file writes: write to a temporary name beside the target, then `os.replace`.

A reader (or a resumed run) never sees half a file, and a killed writer leaves at most
a hidden `.name.tmp-<pid>` file behind, never a damaged target. Every module that
writes a file another process may read uses these helpers.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from saga.errors import SagaError


def temp_path(path: str | Path) -> Path:
    """The hidden temporary name beside `path` that `atomic_path` writes first."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Indented JSON (non-JSON values as str), newline-terminated."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path, missing: str = "", corrupt: str = "") -> Any:
    """Parse a JSON file; a missing or corrupt file is a SagaError naming it (plus the given hints)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SagaError(f"{path}: missing{missing}") from None
    except json.JSONDecodeError as exc:
        raise SagaError(f"{path}: corrupt JSON ({exc}){corrupt}") from None
