"""What a rerun of `saga demo` reuses, and the one line that says so.

Why: a rerun on a finished work/demo calibrated, evaluated (with the probe), drew the T-Sigs and the t-SNE of
every run again: minutes for nothing changed. Each product of a run is reused only while the stamp it records
(weights_stamp + data_stamp; calibration.json's run_model, cache_id and fit_digest; metrics-test.json through
`stored_evaluation`) names the run's finished weights as they are now and the cache as it is now (its id and
records digest): a retrained run, a re-extracted or grown cache, or a deleted file redoes that product alone.
A file of an older saga that records no digest is never reused. Training runs are reused (or resumed) by their
folders' own machinery (config + done.json, `open_run`); the report is rebuilt each time from these files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.metrics import (CACHE_DIGEST, CACHE_ID, HELDOUT_KEY, RUN_FINISHED, RUN_MODEL, SPLIT, run_weights,
                                  stored_evaluation)
from saga.progress import ProgressEvent
from saga.runs import DONE, cache_digest, evaluation_file, trained_by_other_code
from saga.runs.files import CALIBRATION, DEFAULT_SPLIT, TSIG, TSIG_CSV, TSIG_MAPS, TSIG_PROFILES, tsne_file

TSNE_LEVEL = "GEN-L"  # the demo colours every run's map by generator


@dataclass
class Ledger:
    """What this demo run reused and what it (re)made, product by product, for its closing lines."""

    reused: list[str] = field(default_factory=list)
    made: list[str] = field(default_factory=list)
    other_code: list[str] = field(default_factory=list)  # reused runs that another saga code trained

    def note(self, reused: bool, what: str) -> None:
        (self.reused if reused else self.made).append(what)

    def lines(self) -> list[str]:
        done = [f"{word}: {', '.join(items)}" for word, items in (("reused", self.reused), ("made", self.made))
                if items]
        return done + ([f"reused runs trained by other saga code (an upgrade or an edit since; delete them to "
                        f"retrain with this code): {', '.join(self.other_code)}"] if self.other_code else [])


State = Callable[[], dict[str, str]]  # the cache's id and digest, computed once and only when a file is there


def cache_state(cache: Path) -> State:
    """The cache's id and records digest, as runs, metrics and figures record them (read at the first call)."""
    @functools.cache
    def state() -> dict[str, str]:
        opened = FeatureCache.open(cache)
        return {CACHE_ID: opened.cache_id, CACHE_DIGEST: cache_digest(opened)}

    return state


def trained(train: Callable[..., Path], *args: Any, ledger: Ledger, what: str, **kwargs: Any) -> Path:
    """`train(*args, progress=..., **kwargs)`, noting whether the folder already held this finished run."""
    reused: list[bool] = []

    def progress(event: ProgressEvent) -> None:
        reused.append(event.kind == "reused")

    run = train(*args, progress=progress, **kwargs)
    ledger.note(any(reused), what)
    if any(reused) and trained_by_other_code(run):  # runs are reused by their settings, whatever code trained them
        ledger.other_code.append(str(run))
    return run


def current_stamp(stamp: dict[str, Any], run: Path, state: State, split: str = DEFAULT_SPLIT) -> bool:
    """A figure's stamp names the run's finished weights as they are now, `split` and this very cache."""
    return (str(stamp.get(RUN_FINISHED)).lower() == "true" and (run / DONE).is_file()
            and stamp.get(RUN_MODEL) == run_weights(run) and stamp.get(SPLIT) == split
            and stamp.get(CACHE_ID) == state()[CACHE_ID] and stamp.get(CACHE_DIGEST) == state()[CACHE_DIGEST]
            and HELDOUT_KEY not in stamp)


def tsigs_current(run: Path, state: State) -> bool:
    """tsig.npz and its three figures are there, of these weights on this cache's test split (the .npz is written
    first: a rerun cut short after it leaves figures of the earlier weights, which the PNGs' own stamps tell)."""
    from saga.npzfile import read_npz

    if not all((run / name).is_file() for name in (TSIG, TSIG_CSV, TSIG_MAPS, TSIG_PROFILES)):
        return False
    try:
        stored = read_npz(run / TSIG, (RUN_MODEL, RUN_FINISHED, SPLIT, CACHE_ID, CACHE_DIGEST, HELDOUT_KEY))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False
    figures = [_png_stamp(run / name) for name in (TSIG_MAPS, TSIG_PROFILES)]  # written after the .npz
    return all(current_stamp(stamp, run, state) for stamp in [{k: str(v) for k, v in stored.items()}, *figures])


def _png_stamp(path: Path) -> dict[str, str]:
    """The saga:<key> text metadata of a figure (what the report checks it by)."""
    from saga.explain.report_html import png_text

    try:
        return {k.removeprefix("saga:"): v for k, v in png_text(path.read_bytes()).items() if k.startswith("saga:")}
    except (OSError, ValueError):
        return {}


def tsne_current(run: Path, state: State) -> bool:
    """tsne_GEN-L.png, its .csv and .json are there, of these weights on this cache's test split (the .json is
    written last: the commit point)."""
    png = run / tsne_file(TSNE_LEVEL)
    meta = png.with_suffix(".json")
    if not (png.is_file() and png.with_suffix(".csv").is_file() and meta.is_file()):
        return False
    try:
        stored = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and stored.get("color_by") == TSNE_LEVEL and current_stamp(stored, run, state)


def calibration_current(run: Path, cache: Path, state: State) -> bool:
    """calibration.json is a sound fit of these weights on this cache's val videos as they are now."""
    from saga.openworld.calibration import Calibration
    from saga.openworld.fitcache import fit_digest

    if not (run / CALIBRATION).is_file() or not (run / DONE).is_file():
        return False
    try:
        cal = Calibration.load(run, run_model=run_weights(run))
    except SagaError:
        return False
    return cal.cache_id == state()[CACHE_ID] and cal.fit_digest == fit_digest(FeatureCache.open(cache))


def evaluation(run: Path, cache: Path, state: State, device: str, ledger: Ledger,
               what: str) -> dict[str, Any]:
    """The run's stored test metrics while current (`stored_evaluation`), else `evaluate` (with the probe)."""
    from saga.explain.metrics import evaluate

    stored = stored_evaluation(run, state(), "test") if (run / evaluation_file("test")).is_file() else None
    ledger.note(stored is not None, what)
    return stored or evaluate(run, cache, split="test", device=device)


def report_inputs(folders: list[Path]) -> str:
    """What the report is built from: every file of the run (and ablation) `folders` by name, size and
    mtime, and saga's code (`source_digest`): any product redone, a run retrained or saga upgraded changes it.
    Hidden files (a run's .lock) are left out; names are relative to each folder's parent, so a copy keeps it."""
    from saga.provenance import source_digest

    h = hashlib.blake2b(source_digest().encode(), digest_size=16)
    files = [(f, folder.parent) for folder in folders for f in Path(folder).rglob("*")
             if not any(part.startswith(".") for part in f.relative_to(folder).parts)]
    for path, base in sorted(files):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(base).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def report_current(report: Path, inputs: str) -> bool:
    """The report at `report` records `inputs` (a report of other files, or of an older saga, does not)."""
    from saga.explain.report import INPUTS_META

    try:
        head = report.read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError:
        return False
    return f'<meta name="{INPUTS_META}" content="{inputs}">' in head
