"""The `saga` command line: a thin typer layer over the Python API.

Commands live in `saga/commands/` (one module per group); this module builds the
app and turns known errors into one line (SAGA_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import os
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

def main() -> None:
    from saga.errors import SagaError

    try:
        app()
    except SagaError as exc:
        if os.environ.get("SAGA_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: committed work is kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
