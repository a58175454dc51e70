"""One rule for "is this one process?" (saga.torchrun_env): the CLI's torchrun refusal, `is_main` and
`saga.distributed.context` read WORLD_SIZE the same way, so no value makes one of them see one process and
another a torchrun job (before: "-1", "+1" and "1_0" split them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from saga import cli, distributed, torchrun_env
from saga.commands.common import is_main
from saga.errors import SagaError

ONE = [None, "", "  ", "0", "1", " 1 ", "+1", "\t1\n"]
BAD = ["abc", "1_0", "1.0", "٢", "-1", "2x"]


def _env(monkeypatch: pytest.MonkeyPatch, world: str | None, rank: str | None) -> dict[str, str | None]:
    for name, value in (("WORLD_SIZE", world), ("RANK", rank), ("LOCAL_RANK", None)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return {"WORLD_SIZE": world, "RANK": rank, "LOCAL_RANK": None}


def _cli_verdict(env: dict[str, str | None]) -> BaseException | None:
    """What the CLI's callback made of the environment: None (one process: the subcommand then rejects the
    unknown option itself) or the SagaError it raised."""
    result = CliRunner().invoke(cli.app, ["evaluate", "--no-such-option"], env=env)
    if isinstance(result.exception, SagaError):
        return result.exception
    assert result.exit_code == 2 and "No such option" in result.output, result.output
    return None


@pytest.mark.parametrize("world", ONE, ids=repr)
def test_one_process_values_agree(monkeypatch: pytest.MonkeyPatch, world: str | None) -> None:
    env = _env(monkeypatch, world, None)
    assert torchrun_env.single_process() and is_main()
    assert distributed.context() == distributed.Dist()
    assert _cli_verdict(env) is None


@pytest.mark.parametrize("world", BAD, ids=repr)
def test_a_world_size_that_is_no_count_is_one_line_everywhere(monkeypatch: pytest.MonkeyPatch, world: str) -> None:
    env = _env(monkeypatch, world, "0")
    said = []
    for ask in (torchrun_env.single_process, is_main, distributed.context):
        with pytest.raises(SagaError) as caught:
            ask()
        said.append(str(caught.value))
    said.append(str(_cli_verdict(env)))
    assert len(set(said)) == 1, said
    assert said[0].startswith(f"environment variable WORLD_SIZE={world!r} is ") and "\n" not in said[0]


def test_a_torchrun_world_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(monkeypatch, " 2 ", None)  # no RANK: the library refuses, the CLI refuses a one-process command
    assert not torchrun_env.single_process()
    for ask in (is_main, distributed.context):
        with pytest.raises(SagaError, match="WORLD_SIZE=2 but RANK is not set"):
            ask()
    assert str(_cli_verdict(env)).startswith("saga evaluate runs in one process")
    env = _env(monkeypatch, "2", "1")
    assert not is_main() and distributed.context() == distributed.Dist(1, 2, 0, False)
    assert str(_cli_verdict(env)).startswith("saga evaluate runs in one process")


def test_the_rule_and_is_main_import_no_torch() -> None:
    code = ("import os, sys; os.environ['WORLD_SIZE'] = ' 1 '; from saga.commands.common import is_main; "
            "assert is_main(); print(sorted(m for m in ('torch', 'saga.distributed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
