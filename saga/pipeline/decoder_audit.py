"""Records that an older saga decoded with decord from a format decord misreads: found once, re-extracted.

Before decoder rule 2, `auto` sent every file to decord first, which returned other frames than the
ones asked for (no error) from H.264 in AVI or MPEG-TS, MPEG-2, MPEG-4 Part 2 with B-frames and
HEVC, and other pixels from 10-bit video. Such a record keeps its file's fingerprint, so a plain
rerun would keep its wrong features for ever. The first `saga extract` under the current rule probes
the cache's decord records (~2 ms a video, once), extracts the misread ones again, and writes
`decoder-rule.json` once the pass has committed them (or found none), so later passes do not probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from saga.cache.manifest import VideoRecord, file_fingerprint
from saga.errors import SagaError
from saga.fileio import read_json, write_json
from saga.pipeline.decode import DECODER_RULE, decord_reads_right
from saga.pipeline.inputs import VideoInput

AUDIT_FILE = "decoder-rule.json"


def audited_rule(cache_root: Path) -> int:
    """The decoder rule the cache's records were last checked against (1: never checked)."""
    path = Path(cache_root) / AUDIT_FILE
    try:
        rule = read_json(path).get("rule", 1)
    except SagaError:  # missing or damaged: check again, which rewrites it
        return 1
    return rule if isinstance(rule, int) else 1


def misdecoded(cache_root: Path, videos: Path, existing: dict[str, VideoRecord],
               items: Iterable[VideoInput]) -> set[str]:
    """Paths of unchanged videos whose record decord decoded although the current rule sends them to PyAV.

    Marks the cache as checked when none is found; else the pass marks it once it has extracted
    them (`mark_audited`), so a killed pass is checked again. Videos no longer in the videos folder
    cannot be decoded again and are left as they are.
    """
    if audited_rule(cache_root) >= DECODER_RULE:
        return set()
    found = set()
    for item in items:
        old = existing.get(item.rel)
        if old is None or not old.ok or old.backend != "decord":
            continue
        path = item.absolute(videos)
        if old.fingerprint() == file_fingerprint(path) and not decord_reads_right(path):
            found.add(item.rel)
    if not found:
        mark_audited(cache_root)
    return found


def mark_audited(cache_root: Path) -> None:
    write_json(Path(cache_root) / AUDIT_FILE, {"rule": DECODER_RULE})
