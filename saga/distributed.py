"""Running saga under torchrun: who this process is, the process group, and the few collectives saga needs.

`torchrun --nproc-per-node N -m saga extract|train|attribute ...` starts N copies of the
command; torchrun tells each its place through the environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without torchrun (WORLD_SIZE unset or 1) every
helper here is a no-op that returns what a single process would have, so the
single-process code paths stay exactly as they were. See docs/distributed.md.

Backends: gloo on CPU, nccl on CUDA (each rank on cuda:LOCAL_RANK). The object
collectives pickle; they only ever carry saga's own data between its own ranks.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from saga.errors import SagaError, reason
from saga import torchrun_env

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main: bool = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context() -> Dist:
    """Rank, world size and local rank from the torchrun environment (0, 1, 0 without it; WORLD_SIZE read by
    `saga.torchrun_env`, the rule the CLI uses too)."""
    world = torchrun_env.world_size()
    if world <= 1:
        return Dist()
    if "RANK" not in os.environ:
        raise SagaError(f"WORLD_SIZE={world} but RANK is not set; launch with torchrun")
    rank, local = torchrun_env.env_int("RANK", 0), torchrun_env.env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise SagaError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    return Dist(rank=rank, world_size=world, local_rank=local, is_main=rank == 0)


def resolve_device(name: str | torch.device) -> torch.device:
    """--device ("auto", "cpu", "cuda", "cuda:N"): the one resolver every command and API uses.

    Under torchrun a CUDA device is the rank's own; an unknown name or CUDA on a machine without
    it is a one-line SagaError.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SagaError(f"--device {name}: unknown device ({reason(exc, 200)}); use auto, cpu, cuda or cuda:N"
                        ) from None
    if device.type not in ("cpu", "cuda"):  # mps, meta, xpu...: saga is built and tested for these two only
        raise SagaError(f"--device {name}: not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SagaError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return local_device(device)


def local_device(device: torch.device) -> torch.device:
    """Under torchrun a CUDA device is this rank's own GPU, cuda:LOCAL_RANK; anything else is unchanged."""
    ctx = context()
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def init(device: torch.device | str | None = None) -> Dist:
    """Join the torchrun job (once): nccl when `device` is CUDA, else gloo. A no-op without torchrun."""
    ctx = context()
    if not ctx.enabled or tdist.is_initialized():
        return ctx
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
        tdist.init_process_group("nccl", device_id=torch.device("cuda", ctx.local_rank))
    else:
        tdist.init_process_group("gloo")
    atexit.register(_shutdown)
    return ctx


SHUTDOWN_LIMIT = 30.0  # seconds the process group's teardown at exit may take (torchrun's own grace period)
_SINK: list[Any] = []  # the watchdog's traceback file, kept open while it is armed


def _shutdown() -> None:
    """Tear the process group down at exit, within SHUTDOWN_LIMIT seconds, else end the process (status 1).

    Why: destroy_process_group can hang (pytorch#75097; gloo has no abort), and torchrun acts only once a rank
    exits: when every rank hangs there (both printed their error), the job hung for ever. faulthandler's
    watchdog is a C thread that needs no GIL, so it also ends a teardown blocked inside C++; its traceback
    goes to stderr with SAGA_DEBUG=1, else nowhere (the command's own line is already out)."""
    if not tdist.is_initialized():
        return
    if not _SINK:
        _SINK.append(sys.stderr if os.environ.get("SAGA_DEBUG") else open(os.devnull, "w"))
    faulthandler.dump_traceback_later(SHUTDOWN_LIMIT, exit=True, file=_SINK[0])
    try:
        tdist.destroy_process_group()
    finally:
        faulthandler.cancel_dump_traceback_later()


def _active() -> bool:
    if not context().enabled:
        return False
    if not tdist.is_initialized():
        raise SagaError("running under torchrun but the process group is not initialised: call saga.distributed.init()")
    return True


def _coll_device() -> torch.device:
    """Where tensors must live for the group's backend."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- a lost peer ---------------------------------------------------------------------------------------
# gloo reports a rank that died (SIGKILL, the OOM killer) as a plain RuntimeError naming its TCP transport
# ("Connection closed by peer", "Read error ... Connection reset by peer"); nccl and the store raise DistError.
_PEER_SIGNS = ("gloo/transport", "closed by peer", "reset by peer", "Broken pipe")


def is_lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another rank is gone (not a bug in saga's own code)."""
    if not isinstance(exc, RuntimeError):
        return False
    return isinstance(exc, getattr(tdist, "DistError", ())) or any(s in str(exc) for s in _PEER_SIGNS)


def lost_peer_error(exc: BaseException) -> SagaError | None:
    """The one-line error for a rank that lost its peers, or None when `exc` is something else (or there
    is no process group: a single process's RuntimeErrors are never reworded)."""
    if not (context().enabled and tdist.is_initialized() and is_lost_peer(exc)):
        return None
    return SagaError(f"rank {context().rank} lost contact with another rank (it died or was killed); "
                     "committed work is kept; rerun the same command to resume")


@contextmanager
def _collective() -> Iterator[None]:
    """Turn a collective's lost-peer failure into the one-line SagaError (torchrun's other ranks would
    otherwise print a 50-line gloo traceback each)."""
    try:
        yield
    except RuntimeError as exc:
        error = lost_peer_error(exc)
        if error is None:
            raise
        raise error from exc


# -- collectives (all no-ops for one process) -------------------------------------------------------
def barrier() -> None:
    if _active():
        with _collective():
            tdist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s object on every rank."""
    if not _active():
        return obj
    box = [obj]
    with _collective():
        tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's object, in rank order, on every rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * context().world_size
    with _collective():
        tdist.all_gather_object(out, obj)
    return out


def all_gather_arrays(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's array (same dtype and trailing shape; any number of rows), in rank order, on every rank.

    Sent as tensors (padded to the longest), not pickled, so large embedding matrices travel fast.
    """
    array = np.ascontiguousarray(array)
    if not _active():
        return [array]
    rows = [int(r) for r in all_gather_object(int(array.shape[0]))]
    device = _coll_device()
    local = torch.from_numpy(array)
    pad = torch.zeros((max(rows), *array.shape[1:]), dtype=local.dtype)
    pad[: array.shape[0]] = local
    pad = pad.to(device)
    out = [torch.empty_like(pad) for _ in rows]
    with _collective():
        tdist.all_gather(out, pad)
    return [t[:n].cpu().numpy() for t, n in zip(out, rows)]


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Sums over ranks of a few numbers (same keys on every rank), in float64."""
    if not _active():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_coll_device())
    with _collective():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return dict(zip(keys, t.cpu().tolist()))


def run_on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank.

    For the decisions one process must make (create a cache, plan a pass, open a run folder):
    when it raises, every rank raises a SagaError with the same message, so all ranks stop
    together with the same exit code instead of waiting for one that has gone.
    """
    ctx = context()
    if not ctx.enabled:
        return fn()
    _active()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = str(exc) if isinstance(exc, SagaError) else f"{type(exc).__name__}: {exc}"
            broadcast_object((None, error))
            raise
    result, error = broadcast_object((result, error))
    if error is not None:
        raise SagaError(error)
    return result


def run_everywhere(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank; when it fails on any rank, every rank raises (so no rank waits for a lost one)."""
    ctx = context()
    if not ctx.enabled:
        return fn()
    result, error, original = None, None, None
    try:
        result = fn()
    except Exception as exc:
        original = exc
        error = str(exc) if isinstance(exc, SagaError) else f"{type(exc).__name__}: {exc}"
    errors = all_gather_object(error)
    if original is not None:
        raise original
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if failed:
        raise SagaError(f"rank {failed[0][0]}: {failed[0][1]}")
    return result  # type: ignore[return-value]


def check_same_settings(settings: dict[str, Any], what: str) -> None:
    """Refuse, on every rank with the same line, ranks launched with different settings (another command
    line or config file on another node): rank 0 plans the work for all of them, so a rank reading other
    videos or training another schedule would silently corrupt the cache or the run, or hang."""
    if not _active():
        return
    seen = all_gather_object(json.loads(json.dumps(settings, sort_keys=True, default=str)))
    for rank, other in enumerate(seen):
        if other != seen[0]:
            key, first, theirs = _first_difference(seen[0], other)
            raise SagaError(f"the ranks were launched with different {what} settings ({key}: rank 0 {first!r}, "
                            f"rank {rank} {theirs!r}); run the same command, with the same files at the same paths, "
                            "on every node (mount shared folders at one path)")


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any]:
    """The first differing (dotted) key of two nested dicts, with both sides' values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return where or "settings", a, b


# -- data and model helpers ---------------------------------------------------------------------------
def shard_bounds(n: int, ctx: Dist | None = None) -> tuple[int, int]:
    """This rank's contiguous rows [lo, hi) of n: sizes differ by at most one (some may be empty)."""
    ctx = ctx or context()
    return ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` (already on `device`); rank 0's weights are broadcast.

    Buffers are not re-broadcast at every forward (the model's only buffer is a constant), so ranks
    may run different numbers of forwards in a step (stage 2 re-embeds triplets only where it has some).
    """
    from torch.nn.parallel import DistributedDataParallel

    _active()
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    try:
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    except TypeError:  # torch before forward_sync_buffers
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_exit() -> None:
    """Flush this rank's output, then wait for every rank: torchrun stops all ranks as soon as one exits
    with an error code, so no rank may leave (e.g. with exit code 1) before rank 0 has printed."""
    if not context().enabled or not tdist.is_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    barrier()


def to_cpu(obj: Any) -> Any:
    """Tensors of a (nested) state dict on the CPU: they travel between ranks through pickle."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
