"""torchrun's edges: a rank that dies mid-job, and the commands that must not run under torchrun.

The lost-peer test starts two bare processes (the torchrun environment set by hand, no torchrun, no
training: ~5 s); the refusals need no process group at all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
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
