"""Shared CLI helpers: the console, option types, JSON output."""

from __future__ import annotations

import json
import sys
import time
import tomllib
import warnings
from contextlib import AbstractContextManager, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, Collection, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from saga.commands.status import with_status
from saga.errors import SagaError, one_line, printable
from saga.fileio import check_writable, loads_toml
from saga.progress import PASS, Passes, ProgressEvent, ProgressFn, ProgressLog
from saga.torchrun_env import single_process


class SafeConsole(Console):
    """A rich console that shows the control characters of what it prints escaped (`\\x1b`), line breaks and tabs
    kept. Why here: commands print paths, class names and error texts read from caches, run folders and decoder
    processes that someone else made; rich's markup `escape()` leaves ESC and the C1 codes (it drops only a few
    such as BEL), so a crafted name could send the terminal escape sequences. Every string printed, a table's
    cells and titles included, passes through `render_str`."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text, keep="\n\t"), **kwargs)


# Messages are one line each, never hard-wrapped at the console width: a log or a pipe (80
# columns) would otherwise break a long path in two, and grep would miss it. Tables still fit.
# No emoji codes: a name such as "a:cat:b.mp4" is printed as written.
console = SafeConsole(stderr=False, highlight=False, soft_wrap=True, emoji=False)
err = SafeConsole(stderr=True, highlight=False, soft_wrap=True, emoji=False)


Options = TypeVar("Options")  # a stage's options dataclass (imported lazily: it pulls in torch)


class Split(StrEnum):
    """--split: typer checks the value and lists the three (a typo is not "no videos in the splt split")."""

    train = "train"
    val = "val"
    test = "test"


class OutputFormat(StrEnum):
    """--format: rich text for people, JSON for scripts (typer validates it and lists the choices)."""

    text = "text"
    json = "json"


def print_json(obj: Any) -> None:
    """One JSON object on stdout (machine-readable; nothing else is printed to stdout), flushed: a reader sees
    each record as it comes (`saga predict --format json | jq`), and one that has gone is noticed at once."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def progress_bar(rates: bool = False) -> Progress:
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if rates:
        cols += [TextColumn("{task.fields[vps]} videos/s"), TextColumn("{task.fields[fps]} frames/s")]
    return Progress(*cols, console=err, transient=False)


@contextmanager
def log_progress(name: str) -> Iterator[ProgressLog | None]:
    """Plain progress lines on stderr when a bar would draw nothing until the end (stderr not a terminal:
    a log, nohup, a batch job, CI; as rich decides it, so TTY_INTERACTIVE=0 forces them); None on a terminal."""
    if err.is_interactive or err.is_jupyter:
        yield None
        return
    log = ProgressLog(name, lambda line: err.print(line, markup=False, highlight=False))  # rich flushes each
    try:
        yield log
    finally:
        log.close()


@contextmanager
def count_progress(name: str) -> Iterator[ProgressFn]:
    """A bar of items done (`saga synth`), drawn at once; plain lines in a log."""
    with log_progress(name) as log:
        if log is not None:
            yield log
            return
        with progress_bar() as bar:
            task = bar.add_task(name, total=None)
            yield lambda event: bar.update(task, completed=event.done, total=event.total)


@contextmanager
def extract_progress(name: str = "extract") -> Iterator[ProgressFn]:
    """An extraction progress callback drawing videos/s and frames/s (plain lines in a log); the bar appears
    with the first video, so setup errors stay one line. Before it, the setup steps (scanning the videos, loading
    the encoder, checking the cache) are a status line (`saga.commands.status`)."""
    with log_progress(name) as log:
        if log is not None:
            with with_status(name, err, False, log) as update:
                yield update
            return
        with _extract_bar(name) as bar, with_status(name, err, True, bar) as update:
            yield update


@contextmanager
def status_progress(name: str, then: ProgressFn = lambda event: None,
                    ends: Collection[str] | None = None) -> Iterator[ProgressFn]:
    """The setup steps' status line alone (`with_status`, as before extract's bar), for a command whose output after
    them is no counted pass (`saga predict`'s records, training's lines): other events go to `then`; the status ends
    with the first of a kind in `ends` (None: any), or with the block, before the command prints its results."""
    with with_status(name, err, err.is_interactive or err.is_jupyter, then, ends) as update:
        yield update


def pass_progress(command: str = "", steps: ProgressFn | None = None) -> Passes:
    """One display per pass of a multi-pass command (`saga robustness`, `extract --augment`, `saga demo`), as
    `count_progress` or, for an extraction, `extract_progress` draw it, named `COMMAND LABEL`
    (`robustness crf28 re-encode: 40/200 videos`): the user sees which pass is running. `steps`: the command's
    setup status (`status_progress`), ended as the first pass opens (two live displays would garble a terminal)."""

    def open_pass(label: str, frames: bool = False) -> AbstractContextManager[ProgressFn]:
        name = f"{command} {label}".strip()
        if steps is not None:
            steps(ProgressEvent(PASS, message=name))
        return extract_progress(name) if frames else count_progress(name)

    return open_pass


@contextmanager
def _extract_bar(name: str) -> Iterator[ProgressFn]:
    bar = progress_bar(rates=True)
    task = bar.add_task(name, total=None, vps="-", fps="-", start=False)
    start = time.perf_counter()

    finished = False

    def update(event: ProgressEvent) -> None:
        nonlocal finished, start
        done, total, frames_done = event.done, event.total, event.data.get("frames", 0)
        if finished:
            return
        if not bar.live.is_started:  # the clock starts with the pass, not with loading the encoder
            start = time.perf_counter()
            bar.start_task(task)
            bar.start()
        dt = max(time.perf_counter() - start, 1e-9)
        bar.update(task, completed=done, total=total, vps=f"{done / dt:.1f}", fps=f"{frames_done / dt:.0f}")
        if done >= total:
            finished = True
            bar.stop()  # finished: later output (a summary, the next step) prints below it

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


BUILTIN_CONFIGS = ("paper-stage1", "paper-stage2")  # saga/data/configs/NAME.toml: --config NAME


def builtin_config(config: Path) -> Path:
    """`--config paper-stage1` (no such file here): the TOML shipped in saga/data/configs."""
    if config.exists() or str(config) not in BUILTIN_CONFIGS:
        return config
    from importlib import resources

    return Path(str(resources.files("saga.data").joinpath("configs", f"{config}.toml")))


def load_options(config: Path | None, **flags: Any) -> dict[str, Any]:
    """Options from --config (a TOML file, or a built-in name), overridden by the flags the user actually gave."""
    opts: dict[str, Any] = {}
    if config is not None:
        config = builtin_config(config)
        try:
            opts = loads_toml(config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SagaError(f"{config}: cannot read training options ({exc})") from None
    opts.update({k: v for k, v in flags.items() if v is not None})
    return opts


def given_options(config: Path | None, **flags: Any) -> dict[str, str]:
    """Option -> how the user gave it: its flag ("--mine-every"), else its key in --config ("lam in FILE")."""
    given = {key: f"{key} in {config}" for key in load_options(config)} if config is not None else {}
    given.update({key: f"--{key.replace('_', '-')}" for key, value in flags.items() if value is not None})
    return given


def training_options(kind: type[Options], config: Path | None, **flags: Any) -> Options:
    """A stage's options from --config and the flags, checked; an unknown key, a wrong type or a bad value
    names the TOML file (typer has checked the flags' types; a bad value a flag gave is not the file's)."""
    opts = load_options(config, **flags)
    try:
        cfg = kind.from_dict(opts)
    except SagaError as exc:
        raise SagaError(f"{config}: {exc}" if config is not None else str(exc)) from None
    try:
        cfg.check()
    except SagaError as exc:
        raise SagaError(_from_file(kind, config, flags) or str(exc)) from None
    return cfg


def _from_file(kind: type[Options], config: Path | None, flags: dict[str, Any]) -> str | None:
    """The TOML's own error, naming the file, when its values fail without the keys the flags replace; None
    when they pass: then a flag's value is the bad one (or clashes with the file's), and the file is not named.

    Why not the error of the TOML alone compared with the combined one: a flag that fixed one bad value
    in the file changed which error came first, and one that repeated the file's message blamed the file."""
    if config is None:
        return None
    given = {k for k, v in flags.items() if v is not None}
    try:
        kind.from_dict({k: v for k, v in load_options(config).items() if k not in given}).check()
    except SagaError as exc:
        return f"{config}: {exc}"
    return None


def cli_device(name: str) -> str:
    """--device auto | cpu | cuda[:N] as a concrete device name, or a one-line error."""
    from saga.distributed import resolve_device

    return str(resolve_device(name))


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Print each warning at once as one line ("warning: ..."), not Python's two-line source excerpt.

    Under torchrun only rank 0 prints, so a warning shows once, not once per GPU.
    """
    def show(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        if is_main():
            err.print(f"[yellow]warning:[/] {escape(one_line(str(message)))}", soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show  # restored by catch_warnings on exit
        yield


def named_folder(text: str | Path, option: str = "--out") -> Path:
    """An output folder as typed: an empty one (`--out ""`, an unset shell variable) would be the current folder."""
    if not str(text).strip():
        raise SagaError(f'{option} "": name a folder (an empty value would write into the current folder)')
    return Path(text)


def writable_folder(folder: Path) -> Path:
    """Fail at the start, in one line naming the folder, when an output folder cannot take files."""
    if is_main():
        check_writable(folder)
    return folder


def is_main() -> bool:
    """`saga.distributed.context().is_main`, without importing torch (saga.distributed does) outside torchrun:
    a bad option's one-line error comes before the seconds that import takes (docs/performance.md). One
    process or not is `saga.torchrun_env.single_process`, the rule saga.distributed and the CLI use."""
    if single_process():
        return True
    from saga.distributed import context

    return context().is_main
