"""User-facing errors: one line that names the file and the fix, never a traceback."""

from __future__ import annotations


class SagaError(Exception):
    """An error the user can fix; the CLI prints it as one line (SAGA_DEBUG=1 shows the traceback)."""


class DecodeError(SagaError):
    """A video that cannot be decoded; extraction records the reason and goes on."""
