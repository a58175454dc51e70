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
    """`text` on one line (whitespace runs as one space) of at most `limit` characters, cut in the middle.

    Why the middle: a reason starts with what went wrong and ends with the fix ("... chmod a+r PATH and
    rerun"); a long path sits between them, so cutting the end lost the advice."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(ELLIPSIS))
    head = keep // 2
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head):]
