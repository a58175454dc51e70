"""The `saga` command line: a thin typer layer over the Python API.

Commands live in `saga/commands/` (one module per group); this module builds the
app and turns known errors into one line (SAGA_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from typing import NoReturn

import typer

from saga.commands import cache_cmds, explain_cmds, openworld_cmds, phase1, phase2, predict_cmds, robustness_cmds
from saga.commands.streams import ReaderGone, guard_streams


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
    from saga.torchrun_env import single_process

    command, args = ctx.invoked_subcommand, ctx.meta.get("saga_args", [])
    if command in TORCHRUN_COMMANDS or "--help" in args:
        return
    words, resolved = _command_path(ctx, args)
    if _is_group(resolved) and len(words.split()) == len(args) + 1:  # `saga cache` alone: its help, harmless
        return
    if single_process():  # the one rule (a WORLD_SIZE that is not an integer: its one-line error)
        return
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
_SIGNALLED = False  # a Ctrl-C or SIGTERM came: the command ends interrupted, whatever became of its exception
_SAID = False  # the interrupted line is printed
_EXITING = False  # the command has ended: its line, then the interpreter's exit (threads, atexit, destructors)


def _on_sigint(signum: int, frame: object) -> None:
    global _SIGNALLED
    _SIGNALLED = True
    raise KeyboardInterrupt()


def _on_sigterm(signum: int, frame: object) -> None:
    global _TERMINATED, _SIGNALLED
    _TERMINATED = _SIGNALLED = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the commit short (SIGKILL still can)
    raise _Terminated()


def _unraisable(info: "sys.UnraisableHookArgs") -> None:
    """A Ctrl-C raised inside a destructor (decord's VideoReader, a DataLoader's iterator), an atexit callback or
    the interpreter's wait for threads: Python printed "Exception ignored in ..." and dropped it, so the command
    ran on and exited 0. It is now silent there, and raised again in the command (or, once the command has
    ended, the process ends at once)."""
    global _SIGNALLED
    if not isinstance(info.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(info)
        return
    _SIGNALLED = True
    if _EXITING:
        _exit_now()
    timer = threading.Timer(0.05, _interrupt_again)  # raised from here it would be dropped again
    timer.daemon = True
    timer.start()


def _interrupt_again() -> None:
    """The main thread gets a KeyboardInterrupt where the command can act on it (unless the command has ended:
    it ends interrupted anyway)."""
    if not _EXITING:
        _thread.interrupt_main()


def _exit_now(signum: int = signal.SIGINT, frame: object = None) -> NoReturn:
    """Ctrl-C or SIGTERM once the command has ended: the process ends at once with the interrupted line (unless
    said already) and 130 / 143; raised there, Python dropped it ("Exception ignored ...") and the process exited 0."""
    global _TERMINATED
    _TERMINATED = _TERMINATED or (signum == signal.SIGTERM and not _SIGNALLED)
    try:
        if not _SAID:
            _say(INTERRUPTED)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more to show
                pass
        os._exit(128 + signal.SIGTERM if _TERMINATED else 130)


def main() -> None:
    global _TERMINATED, _SIGNALLED, _SAID, _EXITING
    _TERMINATED = _SIGNALLED = _SAID = _EXITING = False
    guard_streams()  # a reader that goes away (`| head`, a pager quit) no longer stops the command
    signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where it is ignored (nohup, `&`)
        signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _unraisable
    try:
        app()
    except BaseException as exc:
        _exiting()
        _finish(exc)
    _exiting()
    if _SIGNALLED:  # an app that returns (typer's always exits)
        _interrupted(None)


def _exiting() -> None:
    """From here a Ctrl-C or SIGTERM ends the process at once (`_exit_now`): raised while the line is printed, or
    while the interpreter exits, it was a traceback or dropped with "Exception ignored ..." and exit status 0."""
    global _EXITING
    _EXITING = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _exit_now)


def _finish(exc: BaseException) -> NoReturn:
    """How the command ended, as one line where saga knows it (SAGA_DEBUG=1: errors keep their traceback); once a
    Ctrl-C or SIGTERM came, the interrupted line, whatever the command then ended with (success after the
    interrupt was dropped in a destructor, an error the interrupt caused)."""
    from saga.errors import SagaError

    debug = bool(os.environ.get("SAGA_DEBUG")) and isinstance(exc, Exception)
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 130):
        _interrupted(exc)  # typer turns the KeyboardInterrupt into Exit(130) without a word
    if _SIGNALLED and not debug:
        _interrupted(exc)
    if isinstance(exc, SagaError) and not debug:
        _error(exc)
    if isinstance(exc, ReaderGone):  # `saga predict ... | head`: stop quietly, as any tool cut off by its reader
        sys.exit(128 + signal.SIGPIPE)
    lost = _lost_peer(exc) if isinstance(exc, RuntimeError) and not debug else None
    if lost is not None:  # under torchrun: DDP's gradient all-reduce after another rank died
        _error(lost)
    raise exc


def _lost_peer(exc: RuntimeError) -> Exception | None:
    """saga.distributed's one-line error when `exc` is a collective losing another rank, else None
    (always None in a single process: its RuntimeErrors keep their traceback)."""
    distributed = sys.modules.get("saga.distributed")  # not imported: no process group, nothing to lose
    return None if distributed is None else distributed.lost_peer_error(exc)


def _error(exc: Exception) -> NoReturn:
    # torchrun's SIGTERM to the surviving ranks must not cut the line or the exit short with a traceback (it
    # SIGKILLs a rank 30 s later; a process-group teardown that hangs is bounded by saga.distributed._shutdown)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from saga.errors import one_line

    _say(f"error: {one_line(str(exc))}")  # a message quoting someone else's file stays one bounded line
    sys.exit(2)


def _say(line: str) -> None:
    """The line on stderr in one write: print() writes the text and its newline apart, so torchrun's ranks, which
    share stderr, glued their lines ("... one path)error: the ranks were ...")."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _interrupted(exc: BaseException | None) -> NoReturn:
    """INTERRUPTED, or the line a command put on the interrupt (an import keeps nothing to resume)."""
    global _SAID
    while exc is not None and not isinstance(exc, KeyboardInterrupt):  # typer's Exit(130), then SystemExit
        exc = exc.__cause__ or exc.__context__
    said = exc.args[0] if exc is not None and exc.args else None
    _say(said if isinstance(said, str) else INTERRUPTED)
    _SAID = True
    sys.exit(128 + signal.SIGTERM if _TERMINATED else 130)


if __name__ == "__main__":
    main()
