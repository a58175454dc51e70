"""torchrun's edges: a rank that dies mid-job, and the commands that must not run under torchrun.

The lost-peer test starts two bare processes (the torchrun environment set by hand, no torchrun, no
training: ~5 s); the refusals need no process group at all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import typer
from typer.testing import CliRunner

from saga import cli, distributed
from saga.errors import SagaError

LOST = "lost contact with another rank (it died or was killed); committed work is kept; rerun the same command to resume"

# Rank 1 dies the way the OOM killer kills (SIGKILL) once both ranks hold a DDP model; rank 0 then meets
# the loss in a saga collective (its SagaError is printed to stdout) and in DDP's gradient all-reduce
# (a raw RuntimeError from torch, which cli.main must turn into the same one line).
PEER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from saga import cli, distributed
    from saga.errors import SagaError

    def work():
        distributed.init("cpu")
        net = distributed.wrap_ddp(torch.nn.Linear(3, 1), torch.device("cpu"))
        distributed.barrier()
        if distributed.context().rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            distributed.barrier()
        except SagaError as exc:
            print(exc, flush=True)
        net(torch.ones(2, 3)).sum().backward()

    cli.app = work
    sys.argv = ["saga"]
    cli.main()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def keep_sigterm() -> Iterator[None]:
    """cli.main installs its SIGTERM and SIGINT handlers (and, on its way out, ones that end the process at
    once): not in pytest's process."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    hook = sys.unraisablehook  # cli.main installs its own (a Ctrl-C dropped in a destructor)
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)
    sys.unraisablehook = hook


def test_a_dead_rank_leaves_the_survivor_one_line_and_exit_2(tmp_path: Path) -> None:
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    env.pop("SAGA_DEBUG", None)
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        (out, errs), _ = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == -signal.SIGKILL
    assert out.strip() == f"rank 0 {LOST}"  # the collective's own error
    assert procs[0].returncode == 2, errs
    assert "Traceback" not in errs and errs.strip().splitlines()[-1] == f"error: rank 0 {LOST}"


def test_lost_peer_is_recognised_only_under_torchrun(keep_sigterm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:33155: "
                        "Connection reset by peer.")
    assert distributed.is_lost_peer(gloo) and not distributed.is_lost_peer(RuntimeError("shape mismatch"))
    assert not distributed.is_lost_peer(OSError("Connection reset by peer"))
    assert distributed.lost_peer_error(gloo) is None  # one process: no process group, nothing reworded

    def boom() -> None:
        raise gloo

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(RuntimeError, match="Read error"):  # a single process keeps its traceback
        cli.main()


# A process-group teardown at exit that never returns, blocked in C while holding the GIL (a stuck gloo or nccl
# destroy): every rank of a job printed its error and then hung there, and torchrun, which acts only once a rank
# exits, waited for ever.
STUCK = textwrap.dedent("""
    import atexit, ctypes, sys
    import torch.distributed as tdist
    from saga import cli, distributed
    from saga.errors import SagaError

    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    atexit.register(distributed._shutdown)  # as distributed.init registers it under torchrun
    distributed.SHUTDOWN_LIMIT = 1.0
    tdist.destroy_process_group = lambda: ctypes.PyDLL(None).sleep(600)

    def work():
        raise SagaError("the ranks were launched with different training settings")

    cli.app = work
    sys.argv = ["saga"]
    cli.main()
""")


def test_a_teardown_that_hangs_at_exit_is_bounded(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("SAGA_DEBUG", None)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _, errs = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert errs == "error: the ranks were launched with different training settings\n"  # no traceback dump
    assert proc.returncode == 1  # faulthandler's watchdog ended it


class _Writes:
    """A stderr that records each write call (line-buffered stderr makes each one write(2))."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_the_error_and_interrupted_lines_are_one_write_each(keep_sigterm: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """print() wrote the text and its newline apart: torchrun's ranks, sharing stderr, glued their lines
    ("...one path)error: the ranks were ...": 12 of 67 runs of two disagreeing ranks)."""
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    with pytest.raises(SystemExit):
        cli._error(SagaError("refused"))
    with pytest.raises(SystemExit):
        cli._interrupted(None)
    assert stderr.calls == ["error: refused\n", cli.INTERRUPTED + "\n"]


# every top-level command or group besides the three that split their work
OTHERS = sorted(set(typer.main.get_command(cli.app).commands) - set(cli.TORCHRUN_COMMANDS))


def test_every_other_command_is_named_for_the_refusal() -> None:
    assert {"evaluate", "ablate", "report", "predict", "probe", "calibrate", "enroll", "robustness",
            "tsig", "tsne", "demo", "synth", "cache", "openset"} <= set(OTHERS)


@pytest.mark.parametrize("command", OTHERS)
def test_other_commands_refuse_torchrun(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an unknown option: were the refusal gone, nothing would run (--help is shown)
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    result = CliRunner().invoke(cli.app, [command, "--no-such-option"], env=env)
    assert isinstance(result.exception, SagaError), result.output
    assert str(result.exception) == (f"saga {command} runs in one process; launch it without torchrun "
                                     "(only extract, train, attribute run under torchrun)")


def test_refusal_is_one_line_exit_2(keep_sigterm: None, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SAGA_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["saga", "evaluate", "runs/x", "--format", "json"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""  # no JSON object per rank
    assert captured.err == ("error: saga evaluate runs in one process; launch it without torchrun "
                            "(only extract, train, attribute run under torchrun)\n")


@pytest.mark.parametrize("command", cli.TORCHRUN_COMMANDS)
def test_the_three_torchrun_commands_still_run(command: str) -> None:
    result = CliRunner().invoke(cli.app, [command, "--help"], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 0 and "Usage" in result.output


def test_a_group_alone_shows_its_help_under_torchrun() -> None:
    """`saga cache` with nothing after it prints its help (it used to be refused); anything more is refused."""
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    shown = CliRunner().invoke(cli.app, ["cache"], env=env)
    assert not isinstance(shown.exception, SagaError) and "verify" in shown.output
    refused = CliRunner().invoke(cli.app, ["cache", "info"], env=env)
    assert isinstance(refused.exception, SagaError) and str(refused.exception).startswith("saga cache info runs")


# -- ranks launched with different settings (another command line or config file on another node) ------
# Each rank opens a stage-1 run with its own epoch count (rank 1 one more: DDP used to hang at the end,
# after rank 1's weights had followed its own schedule) and its own device (each rank's own: allowed).
DISAGREE = textwrap.dedent("""
    import sys
    from saga import distributed
    from saga.errors import SagaError
    from saga.train.loop import open_run

    distributed.init("cpu")
    rank = distributed.context().rank
    try:
        open_run(sys.argv[1], {"stage": 1, "train": {"epochs": 3 + rank, "device": f"cuda:{rank}"}},
                 {"cache_id": "c", "cache_digest": "d", "from_run": None})
    except SagaError as exc:
        print(exc, flush=True)
        sys.exit(2)
""")


def test_ranks_with_other_training_settings_are_refused_before_training(tmp_path: Path) -> None:
    script = tmp_path / "disagree.py"
    script.write_text(DISAGREE)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    line = ("the ranks were launched with different training settings (config.train.epochs: rank 0 3, rank 1 4); "
            "run the same command, with the same files at the same paths, on every node (mount shared folders at "
            "one path)")
    assert [p.returncode for p in procs] == [2, 2] and [o.strip() for o in outs] == [line, line]
    assert not (tmp_path / "run").exists()  # refused before rank 0 created the run folder


def test_extraction_refuses_a_rank_given_other_videos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 with another --videos used to extract its share of rank 0's plan from other files: wrong
    features under rank 0's paths, exit 0, `cache verify` clean. Rank 1 is simulated by the gather."""
    from saga.pipeline.extract import ExtractConfig, extract

    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, "init", lambda device=None: distributed.context())
    monkeypatch.setattr(distributed, "_active", lambda: True)
    monkeypatch.setattr(distributed, "all_gather_object",
                        lambda obj: [obj, {**obj, "videos": "/elsewhere"} if isinstance(obj, dict) else obj])
    (tmp_path / "v").mkdir()
    cfg = ExtractConfig(videos=tmp_path / "v", out=tmp_path / "cache", taxonomy="synth", encoder="saga-tiny-vit",
                        pretrained="none", device="cpu", workers=0)
    with pytest.raises(SagaError, match=r"different extract settings \(videos: rank 0 '.*/v', rank 1 '/elsewhere'\)"):
        extract(cfg)
    assert not (tmp_path / "cache").exists()
    from saga.pipeline.extract import _shared_settings

    per_rank = replace(cfg, device="cuda:1", workers=3, batch_size=7)
    assert _shared_settings(per_rank) == _shared_settings(cfg)  # how a rank works may differ


def test_the_run_records_the_world_size_of_each_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With dropout each rank draws its own masks, so a run is reproducible only for a given world size: the
    run folder records it for the start and for each resume (it recorded neither)."""
    from test_train import build_cache

    from saga.runs import RunFolder, make_provenance

    cache = build_cache(tmp_path / "cache", real=6, per_gen=1)
    config, run = {"stage": 1, "train": {"epochs": 1}}, tmp_path / "run"
    prov_file = run / "provenance.json"
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    RunFolder.open_for(run, config, make_provenance(cache, 0)).release()  # started by 2 torchrun processes
    monkeypatch.setenv("WORLD_SIZE", "1")
    RunFolder.open_for(run, config, make_provenance(cache, 0)).release()  # resumed by one process
    prov = json.loads(prov_file.read_text())
    assert prov["world_sizes"] == [2, 1] and len(prov["resumed"]) == 1
    del prov["world_sizes"]  # a run from before they were recorded, resumed by 4 processes
    prov_file.write_text(json.dumps(prov))
    monkeypatch.setenv("WORLD_SIZE", "4")
    RunFolder.open_for(run, config, make_provenance(cache, 0)).release()
    assert json.loads(prov_file.read_text())["world_sizes"] == [None, None, 4]


def test_extract_augment_is_refused_under_torchrun(tmp_path: Path) -> None:
    """docs/distributed.md said every option keeps its meaning under torchrun; --augment is refused (as the
    docs now say), before the cache is created."""
    (tmp_path / "v").mkdir()
    args = ["extract", "--videos", str(tmp_path / "v"), "--out", str(tmp_path / "c"), "--augment", "crf28"]
    result = CliRunner().invoke(cli.app, args, env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert str(result.exception) == "--augment: run it without torchrun (one process re-encodes the copies)"
    assert not (tmp_path / "c").exists()
