"""The `saga` command line: a thin typer layer over the Python API.

Commands live in `saga/commands/` (one module per group); this module builds the
app and turns known errors into one line (SAGA_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from saga.commands import cache_cmds, explain_cmds, openworld_cmds, phase1, phase2, robustness_cmds

app = typer.Typer(
    name="saga",
    help="Source attribution of AI-generated videos (SAGA): extract once, train and attribute from the cache.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
phase1.register(app)
phase2.register(app)
explain_cmds.register(app)
openworld_cmds.register(app)
robustness_cmds.register(app)
app.add_typer(cache_cmds.app, name="cache")

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
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # outside typer's own handling
        _interrupted()
    except SystemExit as exc:
        if exc.code == 130:  # typer turned the KeyboardInterrupt into Exit(130) without a word
            _interrupted()
        raise


def _interrupted() -> None:
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(128 + signal.SIGTERM if _TERMINATED else 130)


if __name__ == "__main__":
    main()
