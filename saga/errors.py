"""User-facing errors: one line that names the file and the fix, never a traceback."""

from __future__ import annotations


class SagaError(Exception):
    """An error the user can fix; the CLI prints it as one line (SAGA_DEBUG=1 shows the traceback)."""


class DecodeError(SagaError):
    """A video that cannot be decoded; extraction records the reason and goes on."""


class WriteError(SagaError, OSError):
    """A file could not be written: the disk is full, or the folder is not writable.

    Also an OSError (with the original errno), so code that already handles OSError
    around a write keeps working; the CLI prints it as one line like any SagaError.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def disk_full(self) -> bool:
        import errno as codes

        return self.errno in (codes.ENOSPC, codes.EDQUOT)


def shown(name: object) -> str:
    """A path or name for a one-line message: as written when printable, else its escaped `repr`, so a
    newline (or a byte that is not UTF-8) in a file name cannot split the line or cut off what follows."""
    text = str(name)
    return text if text.isprintable() else repr(text)


REASON_LIMIT = 300  # characters of a one-line reason (a decoder's message can run to pages)
ELLIPSIS = " … "


def clipped(text: str, limit: int = REASON_LIMIT) -> str:
    """`text` on one line (whitespace runs as one space) of at most `limit` characters, cut in the middle (`cut`)."""
    return cut(" ".join(str(text).split()), limit)


def cut(text: str, limit: int) -> str:
    """`text` of at most `limit` characters, cut in the middle.

    Why the middle: a reason starts with what went wrong and ends with the fix ("... chmod a+r PATH and
    rerun"); a long path sits between them, so cutting the end lost the advice."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(ELLIPSIS))
    head = keep // 2
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head):]


LINE_LIMIT = 2000  # characters of an error or warning line as the CLI prints it
BRIEF_LIMIT = 80  # characters of a value quoted from someone else's file


def one_line(text: str, limit: int = LINE_LIMIT) -> str:
    """`text` as one printable line of at most `limit` characters, line breaks and other unprintable characters
    escaped (as `repr` does), the middle cut. The CLI's last word on every error and warning line: a message
    quoting someone else's file (a file name, a TOML value) can neither split the line, send the terminal escape
    codes, nor run to megabytes."""
    return cut(printable(text), limit)


def printable(text: str, keep: str = "") -> str:
    """`text` with every unprintable character but those in `keep` escaped as `repr` does (ESC as `\\x1b`), the
    rest as written (`vidéo 01.mp4` stays readable). Why: a terminal obeys the control characters in a string
    read from someone else's file (a cache's video path, a decoder's error): it retitles the window, hides or
    rewrites what was printed; escaped, they are shown instead."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def brief(value: object, limit: int = BRIEF_LIMIT) -> str:
    """A value read from someone else's file, for a message: its `repr` (escaped, quoted), cut to `limit`."""
    return cut(repr(value), limit)


def reason(exc: BaseException, limit: int = REASON_LIMIT) -> str:
    """An exception's text as one bounded line for a message: its non-blank lines joined with "; " (torch's
    "Error(s) in loading state_dict for M:" header left out: the details name the keys), else its type name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return clipped("; ".join(lines), limit) if lines else type(exc).__name__
