"""The `saga` command line: a thin typer layer over the Python API.

Commands live in `saga/commands/` (one module per group); this module builds the
app and turns known errors into one line (SAGA_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

import typer

from saga.commands import cache_cmds, explain_cmds, openworld_cmds, phase1, phase2, predict_cmds, robustness_cmds


class _Group(typer.core.TyperGroup):
    """Keeps the command line's words for `_one_process` (click has consumed them by the time it runs)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["saga_args"] = list(args)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_Group,
    name="saga",
    help="Source attribution of AI-generated videos (SAGA): extract once, train and attribute from the cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
phase1.register(app)
phase2.register(app)
predict_cmds.register(app)
explain_cmds.register(app)
openworld_cmds.register(app)
robustness_cmds.register(app)
app.add_typer(cache_cmds.app, name="cache")

TORCHRUN_COMMANDS = ("extract", "train", "attribute")  # the ones that split their work (docs/distributed.md)


@app.callback()
def _one_process(ctx: typer.Context) -> None:
    # Any other command under torchrun would run whole on every rank, each printing and writing the same files.
    from saga.errors import SagaError

    command, world = ctx.invoked_subcommand, os.environ.get("WORLD_SIZE", "").strip()
    args = ctx.meta.get("saga_args", [])
    if command in TORCHRUN_COMMANDS or world in ("", "0", "1") or "--help" in args:
        return
    words, resolved = _command_path(ctx, args)
    if _is_group(resolved) and len(words.split()) == len(args) + 1:  # `saga cache` alone: its help, harmless
        return
    if not world.lstrip("-").isdigit():
        raise SagaError(f"environment variable WORLD_SIZE={world!r} is not an integer (set by torchrun); unset it")
    raise SagaError(f"{words} runs in one process; launch it without torchrun "
                    f"(only {', '.join(TORCHRUN_COMMANDS)} run under torchrun)")


def _is_group(command: object) -> bool:
    return getattr(command, "get_command", None) is not None  # typer's own click, not necessarily `click`


def _command_path(ctx: typer.Context, args: list[str]) -> tuple[str, object]:
    """`saga cache verify`, not just `saga cache`: the subcommand words at the head of the arguments, and the
    command they name."""
    words, command = ["saga"], ctx.command
    for word in args:
        sub = command.get_command(ctx, word) if _is_group(command) and not word.startswith("-") else None
        if sub is None:
            break
        words.append(word)
        command = sub
    return " ".join(words), command

INTERRUPTED = "interrupted: committed work is kept; rerun the same command to resume"


class _Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, docker stop, a scheduler, torchrun closing its ranks), handled like Ctrl-C:
    the writers' `finally` blocks commit and seal what is done instead of the process dying mid-shard."""


_TERMINATED = False  # set by the SIGTERM handler: the exit code is then 143, not 130


def _on_sigterm(signum: int, frame: object) -> None:
    global _TERMINATED
    _TERMINATED = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the commit short (SIGKILL still can)
    raise _Terminated()


def main() -> None:
    from saga.errors import SagaError

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except SagaError as exc:
        if os.environ.get("SAGA_DEBUG"):
            raise
        _error(exc)
    except RuntimeError as exc:  # under torchrun: DDP's gradient all-reduce after another rank died
        lost = _lost_peer(exc)
        if lost is None or os.environ.get("SAGA_DEBUG"):
            raise
        _error(lost)
    except KeyboardInterrupt as exc:  # outside typer's own handling
        _interrupted(exc)
    except SystemExit as exc:
        if exc.code == 130:  # typer turned the KeyboardInterrupt into Exit(130) without a word
            _interrupted(exc)
        raise


def _lost_peer(exc: RuntimeError) -> Exception | None:
    """saga.distributed's one-line error when `exc` is a collective losing another rank, else None
    (always None in a single process: its RuntimeErrors keep their traceback)."""
    distributed = sys.modules.get("saga.distributed")  # not imported: no process group, nothing to lose
    return None if distributed is None else distributed.lost_peer_error(exc)


def _error(exc: Exception) -> NoReturn:
    # torchrun's SIGTERM to the surviving ranks must not cut the line or the exit short with a traceback
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)


def _interrupted(exc: BaseException | None) -> None:
    """INTERRUPTED, or the line a command put on the interrupt (an import keeps nothing to resume)."""
    while exc is not None and not isinstance(exc, KeyboardInterrupt):  # typer's Exit(130), then SystemExit
        exc = exc.__cause__ or exc.__context__
    said = exc.args[0] if exc is not None and exc.args else None
    print(said if isinstance(said, str) else INTERRUPTED, file=sys.stderr)
    sys.exit(128 + signal.SIGTERM if _TERMINATED else 130)


if __name__ == "__main__":
    main()
