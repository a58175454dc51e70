"""torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), read without importing torch.

The one rule for "is this one process?": the CLI's refusal of one-process commands under torchrun
(`saga.cli`), `saga.commands.common.is_main` and `saga.distributed.context` all read WORLD_SIZE
here, so they cannot disagree on " 1 ", "0" or "abc". Torch-free because the CLI asks before any
command has imported torch: a bad option's one-line error must not wait seconds for it
(docs/performance.md).
"""

from __future__ import annotations

import os
import re

from saga.errors import SagaError

_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take "1_0" and other scripts' digits


def env_int(name: str, default: int) -> int:
    """The integer in environment variable `name` (spaces around it ignored); `default` when unset or blank;
    else a one-line SagaError naming the variable."""
    value = os.environ.get(name, "")
    text = value.strip()
    if not text:
        return default
    if not _INTEGER.fullmatch(text):
        raise SagaError(f"environment variable {name}={value!r} is not an integer (set by torchrun); unset it")
    return int(text)


def world_size() -> int:
    """torchrun's WORLD_SIZE: 1 when unset or blank; 0 counts as one process too (`single_process`)."""
    world = env_int("WORLD_SIZE", 1)
    if world < 0:
        raise SagaError(f"environment variable WORLD_SIZE={os.environ['WORLD_SIZE']!r} is negative (set by "
                        "torchrun); unset it")
    return world


def single_process() -> bool:
    """Whether this process runs alone: WORLD_SIZE unset, blank, 0 or 1 (a SagaError when it is no integer)."""
    return world_size() <= 1
