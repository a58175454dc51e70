"""Reliability (issue #9), run folders: crash-consistent checkpoints, hostile weights and configs, a full disk
(changed caches: test_reliability_resume.py).

Each case of docs/reliability.md is proven in one of the tests/test_reliability_*.py files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.errors import SagaError


# --- crash-consistent run folders ----------------------------------------------------------------------------

_SAVE = r"""
import json, os, signal, sys
import torch
from saga.model import ModelConfig, VideoTransformer
from saga.runs import RunFolder

run = RunFolder(sys.argv[1]); kill_at = int(sys.argv[2])
COUNTERS = {"bad_epochs": 0, "best_epoch": None, "best_metric": None}
torch.manual_seed(0)
model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
opt = torch.optim.AdamW(model.parameters())
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
model(torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.bool)).logits.sum().backward(); opt.step()
run.save_state(model, opt, sched, {"epoch": 1, "step": 1, **COUNTERS})
calls = 0
real_replace = os.replace
def replace(a, b):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(a, b)
os.replace = replace
import saga.fileio; saga.fileio.os.replace = replace
with torch.no_grad():
    for p in model.parameters(): p.add_(1.0)
run.save_state(model, opt, sched, {"epoch": 2, "step": 2, **COUNTERS})
"""
# The counters the training loop saves beside epoch and step (load_state checks them).
COUNTERS = {"bad_epochs": 0, "best_epoch": None, "best_metric": None}


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 6, 7])
def test_sigkill_at_any_point_of_a_checkpoint_leaves_a_consistent_state(tmp_path: Path, kill_at: int) -> None:
    """Real SIGKILL at each os.replace of save_state: resume finds epoch 1 or 2 whole, no temp files."""
    import subprocess
    import sys

    import torch

    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import RunFolder

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", _SAVE, str(run_dir), str(kill_at)], capture_output=True, text=True,
                          timeout=120)
    killed = proc.returncode == -9
    assert killed or proc.returncode == 0, proc.stderr
    model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = RunFolder(run_dir).load_state(model, opt, sched)  # never "resume files from different epochs"
    assert state["epoch"] in (1, 2) and (killed or state["epoch"] == 2)
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


_LIVE_WRITER = """
import sys, time
from saga.fileio import temp_path
print(temp_path(sys.argv[1]), flush=True)
time.sleep(60)
"""


def test_a_checkpoint_keeps_the_temporary_files_of_live_writers_and_of_other_hosts(tmp_path: Path) -> None:
    """Every checkpoint (each epoch) deleted every temporary file in the run folder: a `saga evaluate` or `tsig`
    writing its file beside the trainer, here or on another host sharing the disk, lost it mid-write. Only this
    host's temporaries of ended processes go."""
    import subprocess
    import sys

    from conftest import ended_writers_temp
    from saga.runs.checkpoint import recover

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    live = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(run_dir / "metrics.json")],
                            stdout=subprocess.PIPE, text=True)
    try:
        writing = Path(live.stdout.readline().strip())  # `saga evaluate` writing metrics.json right now
        theirs = ended_writers_temp(run_dir / "tsig_maps.png", host="node-7.cluster")
        ours = ended_writers_temp(run_dir / "model.safetensors")  # a trainer killed here
        for path in (writing, theirs, ours):
            path.write_bytes(b"half a file")
        recover(run_dir)
        assert writing.exists() and theirs.exists() and not ours.exists()
    finally:
        live.kill()
        live.communicate()


def test_hostile_weights_metadata_is_refused_before_allocation(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    from saga.runs import read_model_config

    path = tmp_path / "model.safetensors"
    for bad, match in [({"depth": 10000}, "depth=10000 is out of range"),
                       ({"depth": 100, "d_model": 8192}, "asks for ~"),
                       ({"heads": "x"}, "out of range")]:
        cfg = {"in_dim": 8, "d_model": 16, "depth": 1, "heads": 2, "n_classes": 2, **bad}
        save_file({"w": torch.zeros(4)}, str(path), metadata={"config": json.dumps(cfg)})
        with pytest.raises(SagaError, match=match) as info:
            read_model_config(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("edit,match", [({"frames": -5}, "'frames' must be an integer"),
                                        ({"frames": "8"}, "'frames'"),
                                        ({"classes": ["a"]}, "'classes'"),
                                        ({"level": 3}, "'level'"),
                                        ({"level": "XYZ-L"}, "'level' must be one of BIN-L")])
def test_hostile_run_config_is_refused(tmp_path: Path, edit: dict, match: str) -> None:
    import torch

    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import CONFIG, MODEL, load_model, save_weights

    run = tmp_path / "run"
    run.mkdir()
    save_weights(run / MODEL, VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2)),
                 epoch=1)
    (run / CONFIG).write_text(json.dumps({"classes": ["real", "fake"], "level": "BIN-L", "frames": 8, **edit}))
    with pytest.raises(SagaError, match=match):
        load_model(run)
    (run / CONFIG).write_text(json.dumps({"classes": ["real", "fake"], "level": "BIN-L", "frames": 8}))
    assert load_model(run)[1].frames == 8
    del torch


# --- a full disk during training ----------------------------------------------------------------------------

def _tiny_stage1(**kw):
    from saga.train.stage1 import Stage1Config

    return Stage1Config(**{"d_model": 16, "depth": 1, "heads": 2, "eval_batch_size": 64, "epochs": 3,
                           "batch_size": 32, "lr": 3e-3, "warmup_epochs": 0.5, "patience": 0, "stream": False,
                           "min_steps": 0, **kw})


@pytest.fixture(scope="module")
def train_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_train import build_cache

    return build_cache(tmp_path_factory.mktemp("enospc") / "cache", real=12, per_gen=2).root


def _hidden(folder: Path) -> list[str]:
    from saga.runs.folder import LOCK

    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != LOCK)


def test_a_full_disk_during_training_is_one_line_keeps_the_checkpoint_and_resumes(
        train_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC injected in the epoch-2 checkpoint (after its weights were written): one line naming the run
    folder, epoch 1's checkpoint intact, no temporary files, and the rerun resumes to the end."""
    import errno

    import saga.runs.checkpoint as checkpoint
    from saga.errors import WriteError
    from saga.fileio import temp_path
    from saga.runs import RunFolder
    from saga.train.stage1 import train_stage1

    real = checkpoint.save_tensors

    def full_disk(path: Path, tensors: dict, metadata: dict) -> None:
        if metadata.get("epoch") == "2" and path.name == "optimizer.safetensors":
            temp_path(path).write_bytes(b"half a file")  # what a write cut short leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, tensors, metadata)

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save_tensors", full_disk)
    with pytest.raises(WriteError, match=rf"^{out}: the disk is full \(no space left on device\) .*free space "
                                         r"on that disk.*rerun the same command") as info:
        train_stage1(train_cache, out, _tiny_stage1())
    assert "\n" not in str(info.value)
    assert _hidden(out) == []  # .checkpoint.new and the half-written file are gone
    assert json.loads((out / "state.json").read_text())["epoch"] == 1  # the last committed checkpoint
    monkeypatch.undo()
    events: list = []
    train_stage1(train_cache, out, _tiny_stage1(), progress=events.append)
    events = [e for e in events if e.kind != "status"]  # setup steps (kind status) come first
    assert "resuming" in events[0].message and "after epoch 1" in events[0].message
    assert [m["epoch"] for m in RunFolder(out).read_metrics()] == [1, 2, 3]
    assert json.loads((out / "done.json").read_text())["epochs_run"] == 3


def test_a_real_full_tmpfs_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """A real ENOSPC on a small tmpfs (skipped where mounting is not permitted)."""
    import torch

    from saga.errors import WriteError
    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import RunFolder
    from test_reliability_outputs import mounted_tmpfs

    model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.bool)).logits.sum().backward()
    opt.step()
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        run = RunFolder(disk / "run")
        run.path.mkdir()
        run.save_state(model, opt, sched, {"epoch": 1, "step": 1, **COUNTERS})
        run.append_metrics({"epoch": 1})
        filler = disk / "filler"
        try:  # fill the disk to the last byte
            with open(filler, "wb", buffering=0) as fh:
                while True:
                    fh.write(b"\0" * 4096)
        except OSError:
            pass
        with pytest.raises(WriteError, match=rf"^{run.path}: the disk is full"):
            run.save_state(model, opt, sched, {"epoch": 2, "step": 2, **COUNTERS})
        with pytest.raises(WriteError, match="the disk is full"):
            run.append_metrics({"epoch": 2, "padding": "x" * 8192})
        assert _hidden(run.path) == []
        assert [m["epoch"] for m in run.read_metrics()] == [1]  # no torn line
        filler.unlink()  # space freed: the rerun goes on from epoch 1
        assert run.load_state(model, opt, sched)["epoch"] == 1
        run.save_state(model, opt, sched, {"epoch": 2, "step": 2, **COUNTERS})
        assert run.load_state(model, opt, sched)["epoch"] == 2


# --- the NaN loss message ----------------------------------------------------------------------------------

def test_a_nan_loss_points_at_cache_verify_first(train_cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.train import loop
    from saga.train.stage1 import train_stage1

    real = loop.CEObjective.loss

    def nan_loss(self, model, batch):  # type: ignore[no-untyped-def]
        loss, stats = real(self, model, batch)
        return loss * float("nan"), {**stats, "loss": float("nan")}

    monkeypatch.setattr(loop.CEObjective, "loss", nan_loss)
    with pytest.raises(SagaError, match=r"the loss is nan; most likely a data error .*check the cache with "
                                        rf"`saga cache verify {train_cache.resolve()}`; if it verifies, lower the "
                                        r"learning rate \(--lr\)") as info:
        train_stage1(train_cache, tmp_path / "run", _tiny_stage1())
    assert "\n" not in str(info.value)


# --- every weights-metadata error names the file -------------------------------------------------------------

def _hostile_weights() -> dict:
    """name -> (tensors, metadata) of weights files that must be refused, each naming the file."""
    import struct

    import torch

    from saga.model import ModelConfig, VideoTransformer

    good = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
    cfg = good.config.to_dict()
    sd = {k: v.contiguous() for k, v in good.state_dict().items()}
    meta = lambda **kw: {"config": json.dumps({**cfg, **kw})}  # noqa: E731
    return {
        "no metadata": (sd, None), "no config": (sd, {"epoch": "1"}), "not JSON": (sd, {"config": "{nope"}),
        "a list": (sd, {"config": "[1]"}), "empty config (defaults far larger than the file)": (sd, {"config": "{}"}),
        "an unknown key": (sd, meta(banana=1)), "heads not dividing d_model": (sd, meta(heads=3)),
        "a float depth": (sd, meta(depth=1.5)), "zero heads": (sd, meta(heads=0)), "NaN": (sd, meta(mlp_ratio=None)),
        "a string dropout": (sd, meta(dropout="x")), "oversized depth": (sd, meta(depth=10_000)),
        "wrong tensor shapes": (sd, meta(d_model=32)), "more classes than the head": (sd, meta(n_classes=3)),
        "a missing tensor": (dict(list(sd.items())[1:]), meta()), "an extra tensor": ({**sd, "x": torch.zeros(2)}, meta()),
        "a header length of 1 TB": struct.pack("<Q", 10**12) + b"{}", "a truncated file": b"\x08\x00",
        "an empty file": b"",
    }


@pytest.mark.parametrize("name", list(_hostile_weights()))
def test_every_weights_metadata_error_names_the_file(tmp_path: Path, name: str) -> None:
    from safetensors.torch import save_file

    from saga.runs import CONFIG, MODEL, load_model

    bad = _hostile_weights()[name]
    path = tmp_path / MODEL
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        tensors, metadata = bad
        if metadata and '"mlp_ratio": null' in metadata.get("config", ""):
            metadata = {"config": metadata["config"].replace('"mlp_ratio": null', '"mlp_ratio": NaN')}
        save_file(tensors, str(path), metadata=metadata)
    (tmp_path / CONFIG).write_text(json.dumps({"classes": ["real", "fake"], "level": "BIN-L", "frames": 8}))
    with pytest.raises(SagaError) as info:
        load_model(tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value), str(info.value)
