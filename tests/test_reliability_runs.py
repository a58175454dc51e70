"""Reliability (issue #9), run folders: crash-consistent checkpoints, hostile weights and configs, changed caches.

Each case of docs/reliability.md is proven in one of the tests/test_reliability_*.py files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.errors import SagaError
from test_reliability_cache import make_cache


# --- crash-consistent run folders ----------------------------------------------------------------------------

_SAVE = r"""
import json, os, signal, sys
import torch
from saga.model import ModelConfig, VideoTransformer
from saga.runs import RunFolder

run = RunFolder(sys.argv[1]); kill_at = int(sys.argv[2])
torch.manual_seed(0)
model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
opt = torch.optim.AdamW(model.parameters())
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
model(torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.bool)).logits.sum().backward(); opt.step()
run.save_state(model, opt, sched, {"epoch": 1, "step": 1})
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
run.save_state(model, opt, sched, {"epoch": 2, "step": 2})
"""


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
                                        ({"level": 3}, "'level'")])
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


def test_a_changed_cache_does_not_reuse_a_finished_run(tmp_path: Path) -> None:
    from test_cache import fill

    from saga.runs import RunFolder, make_provenance

    cache = make_cache(tmp_path, parts=1)
    config = {"level": "BIN-L", "train": {"epochs": 1}}
    run = RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))
    run.finish({"epochs": 1})
    assert RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0)).done  # same data: reused
    fill(cache, 6, shard_rows=4, seed=5)  # more videos extracted into the same cache
    cache = type(cache).open(cache.root)
    with pytest.raises(SagaError, match=r"trained on 4 records of this cache, which now holds 6"):
        RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))
