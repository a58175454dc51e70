"""Shared CLI helpers: the console, option types, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(stderr=False, highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    """One JSON object on stdout (machine-readable; nothing else is printed to stdout)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
