"""Strings read from someone else's cache or run folder reach the terminal with their control characters escaped:
a crafted video path or error text must not send escape sequences (retitle the window, hide or fake output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import run_saga

from saga.cache.manifest import FAILED, OK, VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter
from saga.taxonomy import Taxonomy

D, T = 4, 3
TITLE = "\x1b]0;pwned\x07"  # OSC 0: sets the terminal window's title


def _crafted_cache(root: Path) -> FeatureCache:
    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(root, cache_provenance(EncoderSpec.simulated(D, T), tax))
    gen = next(iter(tax.generators))
    writer = PartWriter(cache, "p000001-r000", capacity=1, shard_rows=2)
    rec = VideoRecord(f"{gen}/vidéo 01{TITLE}.mp4", 10, 1, OK, gen, tax.labels(gen), "train")
    writer.add(rec, np.ones((1, T, D), np.float16), np.ones((1, T), bool), np.zeros((1, T), np.float32))
    writer.add_failure(VideoRecord(f"{gen}/bad{TITLE}.mp4", 1, 1, FAILED, gen, tax.labels(gen), "test",
                                   error=f"boom{TITLE}\x1b[2J\x9b31m"))
    writer.close()
    return FeatureCache.open(root)


def _no_control_bytes(text: str) -> None:
    assert not any(c in text for c in "\x1b\x07\x9b"), repr(text)


def test_cache_info_escapes_control_characters_of_stored_paths_and_errors(tmp_path: Path) -> None:
    cache = _crafted_cache(tmp_path / "c")
    proc = run_saga("cache", "info", str(cache.root))
    assert proc.returncode == 0, proc.stderr
    _no_control_bytes(proc.stdout + proc.stderr)
    assert "failed syn-zeroscope/bad\\x1b]0;pwned\\x07.mp4: boom\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m" in proc.stdout


def test_cache_verify_escapes_the_path_of_a_corrupt_record(tmp_path: Path) -> None:
    cache = _crafted_cache(tmp_path / "c")
    for chunk in (cache.root / "parts").glob("*/features/**/*"):
        if chunk.is_file() and not chunk.name.startswith(".") and chunk.name != "zarr.json":
            chunk.write_bytes(bytes(b ^ 0xFF for b in chunk.read_bytes()))
    proc = run_saga("cache", "verify", str(cache.root))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _no_control_bytes(proc.stdout + proc.stderr)
    assert "vidéo 01\\x1b]0;pwned\\x07.mp4" in proc.stderr  # readable Unicode, visible escapes


def test_console_escapes_table_cells_and_keeps_line_breaks() -> None:
    from rich.table import Table

    from saga.commands.common import console

    table = Table(title=f"level{TITLE}")
    table.add_column("class")
    table.add_row(f"a{TITLE}")
    with console.capture() as captured:
        console.print(table)
        console.print(f"one\ntwo{TITLE}", markup=False)
    text = captured.get()
    _no_control_bytes(text)
    assert "a\\x1b]0;pwned\\x07" in text and "level\\x1b]0;pwned\\x07" in text and "one\ntwo\\x1b" in text
