"""Shared fixtures: tiny videos made on the fly, a tiny saved encoder, offline hubs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GENERATORS = ("real", "syn-svd", "syn-latte")


def write_clip(path: Path, n_frames: int, seed: int, size: tuple[int, int] = (48, 64), fps: float = 12,
               codec: str = "h264") -> Path:
    from saga.benchmark.videoio import write_video

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, *size, 3), dtype=np.uint8).astype(np.int16)
    drift = np.arange(n_frames, dtype=np.int16)[:, None, None, None] * 3
    frames = np.clip(base + drift, 0, 255).astype(np.uint8)
    return write_video(path, frames, fps, codec=codec)


def make_video_tree(root: Path, per_class: int = 3, generators: tuple[str, ...] = GENERATORS) -> Path:
    """A videos folder with one sub-folder per generator; lengths vary (some < 8 frames)."""
    for g, gen in enumerate(generators):
        (root / gen).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_clip(root / gen / f"{gen}_{i}.mp4", n_frames=5 + 4 * i + g, seed=100 * g + i)
    return root


def add_bad_inputs(root: Path) -> dict[str, str]:
    """Every bad-input kind the issue names; returns rel path -> expected reason fragment."""
    good = next(root.glob("real/*.mp4")).read_bytes()
    (root / "real" / "empty.mp4").write_bytes(b"")
    (root / "real" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "real" / "notavideo.mp4").write_text("this is text, not a video\n")
    (root / "real" / "folder.mp4").mkdir()
    os.symlink(root / "nowhere.mp4", root / "real" / "broken.mp4")
    zeroed = bytearray(good)
    mdat = zeroed.find(b"mdat")
    zeroed[mdat + 4:] = bytes(len(zeroed) - mdat - 4)
    (root / "real" / "noframes.mp4").write_bytes(bytes(zeroed))
    return {"real/empty.mp4": "empty", "real/truncated.mp4": "", "real/notavideo.mp4": "not a video",
            "real/folder.mp4": "directory", "real/broken.mp4": "broken link", "real/noframes.mp4": ""}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """Tiny models run ~10x faster on one intra-op thread on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test encoder's weights saved to a file: extraction is then deterministic."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from saga.pipeline import encoders

    encoders._register_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(encoders.TEST_ENCODER)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def tiny_args(tiny_weights: Path) -> list[str]:
    return ["--encoder", "saga-tiny-vit", "--pretrained", str(tiny_weights), "--frames", "8", "--workers", "0",
            "--device", "cpu", "--taxonomy", "synth"]


def run_saga(*args: str, check: bool = False, timeout: float = 300,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (what a user runs); one intra-op thread unless the environment sets another
    count, as `one_thread` does in-process (tiny models on a busy 2-core machine run much slower on two)."""
    proc = subprocess.run([sys.executable, "-m", "saga", *args], capture_output=True, text=True, timeout=timeout,
                          env={"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1"}, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"saga {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def lock_held_by_another_thread(root: Path, message: str = "busy") -> Iterator[None]:
    """The cache's lock held by another thread, as `saga extract` holds it, until the block ends."""
    from saga.locks import lock_folder, unlock_folder

    held, done = threading.Event(), threading.Event()

    def extraction() -> None:
        lock_folder(root, message)
        held.set()
        done.wait(30)
        unlock_folder(root)

    thread = threading.Thread(target=extraction)
    thread.start()
    try:
        assert held.wait(30)
        yield
    finally:
        done.set()
        thread.join()


_ENDED_WRITER = """
import socket, sys
if sys.argv[2]:
    socket.gethostname = lambda: sys.argv[2]
from saga.fileio import temp_path
print(temp_path(sys.argv[1]))
"""


def ended_writers_temp(target: Path, host: str = "") -> Path:
    """The temporary name (`saga.fileio.temp_path`) a writer of `target` that has since ended wrote; with `host`,
    as if it ran on that machine (one sharing the disk: its PID says nothing about this machine's processes)."""
    proc = subprocess.run([sys.executable, "-c", _ENDED_WRITER, str(target), host], capture_output=True, text=True,
                          check=True)
    return Path(proc.stdout.strip())


class Hung(BaseException):
    """Not an Exception: no `except` of the code under test swallows it."""


@contextmanager
def alarm_guard(seconds: int, what: str) -> Iterator[None]:
    """Ends a test whose code would wait for ever (the old code did): after `seconds` SIGALRM kills the child
    processes and raises `Hung(what)`, so the test fails instead of stalling the suite."""
    import multiprocessing
    import signal

    def stop(*_: object) -> None:
        for child in multiprocessing.active_children():
            child.kill()
        raise Hung(what)

    before = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


# The slowest files (seconds each on a busy 2-core machine, --durations of a full run), started first: xdist's
# loadfile hands files out in collection order, and one of these collected last ran alone at the end of the suite
# while the other worker sat idle (test_cli_phase2 took the last ~8 of 30 minutes that way).
SLOW_FIRST = ("test_cli_phase2.py", "test_extract.py", "test_distributed.py", "test_extract_limits.py",
              "test_reliability_runs.py", "test_local_dir.py", "test_robustness_progress.py", "test_readout.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in SLOW_FIRST first, in that order; the rest, and the tests inside each file, in their own order."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
