"""torchrun: distributed extraction and training (2 CPU processes, gloo) equal a single-process run.

Each torchrun launch costs a few seconds of start-up (two interpreters importing torch), so the
single-process references run in this process and only the distributed runs are launched.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_video_tree, write_clip
from saga import distributed
from saga.cache.store import MANIFEST, FeatureCache
from saga.pipeline.extract import ExtractConfig, extract
from saga.progress import ProgressEvent
from saga.train.attribute import AttributeConfig, train_attribution
from saga.train.data import Batch
from saga.train.loop import local_rows
from saga.train.stage1 import Stage1Config, train_stage1
from test_train import build_cache

WORLD = 2
# dropout 0: dropout masks are drawn per rank, so only a dropout-free run can match one process numerically
MODEL = "d_model = 32\ndepth = 2\nheads = 2\ndropout = 0.0\npatience = 0\nstream = false\n"
# 138 train videos, balanced: batches of 25 split 12/13 across the ranks, the last (13) 6/7;
# a slow learner, so that the best epoch (model.safetensors) is the last (without the window statistics
# and content basis, which with 2 frames make it peak at epoch 1; the stage-2 tests keep them, buffers included)
STAGE1 = MODEL + ("epochs = 3\nbatch_size = 25\nlr = 3e-4\nframes = 2\nwarmup_epochs = 0.5\neval_batch_size = 64\n"
                  "video_stats = 0\ncontent_basis = 0\n")
# a labelled pool of 69: the last batch holds one video, so rank 0's slice is empty (weight 0);
# mining refreshes every 2 steps, on embeddings gathered from both ranks
STAGE2 = MODEL + ("epochs = 3\nmin_steps = 0\neval_every_steps = 0\nbatch_size = 17\nlr = 1e-3\nwarmup_epochs = 0.0\neval_batch_size = 16\n"
                  "level = \"TASK-L\"\nfraction = 0.5\nloss = \"ce+hnm\"\nmine_every = 2\n")




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m saga ARGS` on the CPU."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "saga", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# -- helpers in one process ------------------------------------------------------------------------
def test_context_and_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.context() == distributed.Dist(0, 1, 0, True)
    assert distributed.all_gather_object(3) == [3] and distributed.broadcast_object("x") == "x"
    assert distributed.run_on_main(lambda: 5) == 5 and distributed.all_reduce_sum({"a": 1.5}) == {"a": 1.5}
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ctx = distributed.context()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (2, 3, 0, False)
    assert [distributed.shard_bounds(7, distributed.Dist(r, 3, r, r == 0)) for r in range(3)] == [(0, 2), (2, 4),
                                                                                                   (4, 7)]
    batch = Batch(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, dtype=torch.long),
                  torch.zeros(1, dtype=torch.long))
    local, n = local_rows(batch, distributed.Dist(0, 2, 0, True))  # a 1-video batch: rank 0 has nothing
    assert n == 0 and len(local) == 1  # ... but still runs a row (weight 0) for DDP's all-reduce
    assert local_rows(batch, distributed.Dist(1, 2, 1, False))[1] == 1


# -- extraction ------------------------------------------------------------------------------------
def extract_args(videos: Path, out: Path, weights: Path) -> list[str]:
    return ["extract", "--videos", str(videos), "--out", str(out), "--encoder", "saga-tiny-vit", "--pretrained",
            str(weights), "--frames", "8", "--workers", "0", "--device", "cpu", "--taxonomy", "synth",
            "--shard-rows", "2", "--batch-size", "8", "--format", "json"]


def single(videos: Path, out: Path, weights: Path) -> None:
    extract(ExtractConfig(videos=videos, out=out, taxonomy="synth", encoder="saga-tiny-vit", pretrained=str(weights),
                          frames=8, workers=0, device="cpu", batch_size=8, shard_rows=2))


def assert_same_cache(a_dir: Path, b_dir: Path) -> None:
    a, b = FeatureCache.open(a_dir), FeatureCache.open(b_dir)
    assert [(r.path, r.status, r.split, r.error) for r in a.records()] == \
           [(r.path, r.status, r.split, r.error) for r in b.records()]
    da, db = a.read(a.ok_records()), b.read(b.ok_records())
    for key in ("features", "mask", "timestamps"):
        np.testing.assert_array_equal(da[key], db[key])  # bit-equal on the CPU
    assert [r.checksum for r in a.ok_records()] == [r.checksum for r in b.ok_records()]
    assert a.verify() == [] and b.verify() == []


def one_json_line(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout + proc.stderr  # rank 0 alone prints, the totals of both ranks
    return json.loads(lines[0])


def test_extraction_equals_single_process_resumes_and_refuses(tmp_path: Path, tiny_weights: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=4)
    (videos / "real" / "empty.mp4").write_bytes(b"")  # a failure: every rank exits 1, rank 0 lists it
    one, two = tmp_path / "one", tmp_path / "two"
    single(videos, one, tiny_weights)
    proc = torchrun(*extract_args(videos, two, tiny_weights))
    assert proc.returncode == 1, proc.stderr
    summary = one_json_line(proc)
    assert (summary["found"], summary["skipped"], summary["ok"], summary["failed"]) == (13, 0, 12, 1)
    assert [path for path, _ in summary["failures"]] == ["real/empty.mp4"]
    assert "error:" not in proc.stderr
    assert FeatureCache.open(two).part_names() == ["p000001-r000", "p000001-r001"]  # one part per rank
    assert_same_cache(one, two)

    # rank 1 "killed" after committing one record; meanwhile a video changed and one was added
    manifest = two / "parts" / "p000001-r001" / MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    assert len(lines) == 6  # rank 1's shard: todo[1::2] of 13
    manifest.write_text(lines[0])
    write_clip(videos / "real" / "real_0.mp4", n_frames=12, seed=999)
    write_clip(videos / "syn-svd" / "new.mp4", n_frames=9, seed=7)
    redo = {json.loads(line)["path"] for line in lines[1:]} | {"real/real_0.mp4", "syn-svd/new.mp4"}
    single(videos, one, tiny_weights)
    proc = torchrun(*extract_args(videos, two, tiny_weights))
    assert proc.returncode == 1, proc.stderr
    summary = one_json_line(proc)
    assert (summary["found"], summary["skipped"], summary["ok"] + summary["failed"]) == (14, 14 - len(redo),
                                                                                         len(redo))
    parts = ["p000001-r000", "p000001-r001", "p000002-r000", "p000002-r001"]
    assert FeatureCache.open(two).part_names() == parts
    assert_same_cache(one, two)

    args = extract_args(videos, two, tiny_weights)
    args[args.index("--frames") + 1] = "4"
    proc = torchrun(*args)  # rank 0 refuses; rank 1 gets its message and stops too (none waits forever)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("refusing to append" in e for e in errors)
    assert FeatureCache.open(two).part_names() == parts


# -- training ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    torch.set_num_threads(1)
    cache = build_cache(root / "cache").root
    (root / "s1.toml").write_text(STAGE1)
    (root / "s2.toml").write_text(STAGE2)
    s1 = train_stage1(cache, root / "one-s1", Stage1Config.from_dict(tomllib.loads(STAGE1)))
    return {"root": root, "cache": cache, "s1": s1}


EXACT = ("epoch", "step", "samples", "train_accuracy", "val_accuracy", "val_macro_accuracy", "val_per_class", "best",
         "active_triplets", "triplets", "mined_triplets", "refreshes", "approx_refreshes")
CLOSE = ("loss", "ce", "hnm", "lr")


def assert_same_run(a: Path, b: Path, atol: float = 1e-3) -> None:
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert {k: x.get(k) for k in EXACT} == {k: y.get(k) for k in EXACT}
        for k in CLOSE:
            assert (x[k] is None) == (y[k] is None) and (x[k] is None or math.isclose(x[k], y[k], rel_tol=1e-5,
                                                                                         abs_tol=1e-7)), (k, x, y)
    done_a, done_b = (json.loads((p / "done.json").read_text()) for p in (a, b))
    assert {k: done_a[k] for k in ("best_epoch", "best_metric", "epochs_run", "step")} == \
           {k: done_b[k] for k in ("best_epoch", "best_metric", "epochs_run", "step")}
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:  # the head is the discriminant solved from the embeddings: their 1e-5 rounding is amplified
        scale = 10 if key.startswith("head.") and done_a.get("readout") == "lda" else 1
        torch.testing.assert_close(wa[key], wb[key], atol=scale * atol, rtol=scale * 1e-3)
    assert not (b / "state.json").exists() and (b / "done.json").is_file()


class Killed(Exception):
    pass


def test_stage1_killed_then_resumed_under_ddp_equals_single_process(setup: dict[str, Path]) -> None:
    def kill_after_1(event: ProgressEvent) -> None:
        if event.kind == "epoch" and event.done == 1:
            raise Killed

    out = setup["root"] / "two-s1"
    with pytest.raises(Killed):  # epoch 1 in one process, then 2 and 3 on two ranks from rank 0's resume state
        train_stage1(setup["cache"], out, Stage1Config.from_dict(tomllib.loads(STAGE1)), progress=kill_after_1)
    proc = torchrun("train", "--stage", "1", "--cache", str(setup["cache"]), "--out", str(out), "--config",
                    str(setup["root"] / "s1.toml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("resuming") == 1 and proc.stderr.count("epoch 3/3") == 1  # rank 0 reports
    assert proc.stdout.count("stage-1 run:") == 1
    assert json.loads((out / "done.json").read_text())["best_epoch"] == 3  # weights trained with DDP
    assert json.loads((out / "provenance.json").read_text())["world_sizes"] == [1, WORLD]  # started alone, resumed
    assert_same_run(setup["s1"], out)


def test_stage2_hnm_ddp_equals_single_process(setup: dict[str, Path]) -> None:
    root = setup["root"]
    one = train_attribution(setup["cache"], root / "one-s2", AttributeConfig.from_dict(tomllib.loads(STAGE2)),
                            from_run=setup["s1"])
    two = root / "two-s2"
    proc = torchrun("attribute", "--level", "TASK-L", "--cache", str(setup["cache"]), "--from", str(setup["s1"]), "--out", str(two),
                    "--config", str(root / "s2.toml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(one, two)
    lines = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert all(line["mined_triplets"] > 0 and line["refreshes"] == 3 for line in lines)
    assert json.loads((two / "labelled.json").read_text()) == json.loads((one / "labelled.json").read_text())
