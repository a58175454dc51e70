"""Whole-cache checks: every record's bytes against its blake2b (`saga cache verify`), and the
structure (sealed parts present and unchanged, attributes matching the arrays, splits as planned).

Split from store.py so that the store holds the format and the read/write paths only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saga.cache import prune, reader, seal, store  # store is mid-import here: its names are read at call time
from saga.cache.duplicates import duplicate_warnings
from saga.cache.manifest import AUGMENTED, VideoRecord, feature_checksum, manifest_digest, read_split_plan
from saga.errors import SagaError, shown
from saga.fileio import loads
from saga.progress import ProgressFn, StepCount

if TYPE_CHECKING:
    from saga.cache.store import FeatureCache

def check_attrs(root: Path, saga: Any) -> None:
    """The saga attributes every reader relies on, with their types: a one-line SagaError instead of a
    traceback deep in verify/info/export. Only keys that every saga version wrote are required."""
    problem = attrs_problem(saga)
    if problem is not None:
        raise SagaError(f"{root}: zarr.json was edited ({problem}); restore it or re-extract")


def attrs_problem(saga: Any) -> str | None:
    """What is wrong with a cache's saga attributes (None: nothing); `saga cache import` checks an
    export's attributes with it before writing anything."""
    if not isinstance(saga, dict):
        return f"its '{store.ATTR_KEY}' attributes are not a table"
    sampling = saga.get("sampling")
    taxonomy = saga.get("taxonomy")
    checks = {
        "cache_id": isinstance(saga.get("cache_id"), str) and bool(saga.get("cache_id")),
        "dim": _positive(saga.get("dim")),
        "sampling": isinstance(sampling, dict),
        "sampling.frames": isinstance(sampling, dict) and _positive(sampling.get("frames")),
        "sampling.windows": isinstance(sampling, dict) and _positive(sampling.get("windows", 1)),
        "taxonomy": isinstance(taxonomy, dict) and isinstance(taxonomy.get("generators"), dict)
        and bool(taxonomy.get("generators")),
    }
    bad = next((key for key, ok in checks.items() if not ok), None)
    if bad is None:
        return None
    return f"{bad} is missing or not valid: {json.dumps(_lookup(saga, bad), default=str)[:40]}"


def _positive(value: Any) -> bool:
    return type(value) is int and value > 0


def _lookup(saga: dict[str, Any], dotted: str) -> Any:
    value: Any = saga
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def verify(cache: "FeatureCache", progress: ProgressFn | None = None) -> list[tuple[VideoRecord, str]]:
    """Records whose stored bytes no longer match their checksum (or cannot be read). `progress` gets the count of
    records checked (`StepCount`): every feature is read, an hour on a 59 GB cache."""
    bad: list[tuple[VideoRecord, str]] = []
    by_part: dict[str, list[VideoRecord]] = {}
    records_ok = cache.ok_records()
    for rec in records_ok:
        by_part.setdefault(rec.part, []).append(rec)
    count = StepCount(progress, f"verifying {shown(cache.root)}", "records", len(records_ok))
    refs = []
    for records in by_part.values():  # one unreadable part must not hide the others' damage
        try:
            refs.extend(cache.shards(records))
        except SagaError as exc:  # a missing or unreadable part: every record of it is lost
            bad.extend((rec, str(exc)) for rec in records)
    for ref in refs:
        count.add(len(ref.records))
        try:
            data = cache.read_shard(ref, check=False)
        except Exception as exc:  # a damaged shard fails in the codec pipeline
            bad.extend((rec, f"unreadable shard ({type(exc).__name__}: {exc})") for rec in ref.records)
            continue
        nonfinite = reader.nonfinite(data["features"])
        for i, rec in enumerate(ref.records):
            if feature_checksum(data["features"][i], data["mask"][i], data["timestamps"][i]) != rec.checksum:
                bad.append((rec, "checksum mismatch"))
            elif nonfinite[i]:
                bad.append((rec, "features contain NaN/inf"))
    count.end()
    return bad


def check_structure(cache: "FeatureCache") -> tuple[list[str], list[str]]:
    """(errors, warnings) about the cache as a whole, each one line.

    Errors: a sealed part missing or its manifest changed since it was sealed (truncated,
    edited: labels and splits are covered), attributes that do not match the arrays, records
    whose split differs from the split plan. Warnings: parts never sealed (an older saga, an extraction
    killed or still running) or sealed but not logged, planned videos without a record (rerun extract
    to finish), and records holding the same video under two paths (`saga.cache.duplicates`).
    """
    errors: list[str] = []
    warnings: list[str] = []
    log = cache.root / store.PARTS_LOG
    sealed: dict[str, dict[str, Any]] = {}
    if log.exists():
        for number, line in enumerate(log.read_text(encoding="utf-8").split("\n")[:-1], 1):
            try:
                entry = loads(line)
                sealed[str(entry["part"])] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                errors.append(f"{log}:{number}: corrupt line")
    sealed = {name: entry for name, entry in sealed.items() if not seal.retired(entry)}  # a retired part is gone
    names = set(cache.part_names())
    gone = {name: sealed[name] for name in sorted(set(sealed) - names)}
    for name in sorted(names):
        _check_part(cache, name, sealed.get(name), errors, warnings)
    try:
        records = cache.records()
    except SagaError as exc:  # a corrupt manifest line: no record can be listed, the seals above say which part
        errors.extend(_missing_part(cache, name, entry, readable=False) for name, entry in gone.items())
        errors.append(str(exc))
        return errors, warnings
    plan = read_split_plan(cache.split_plan_path) if cache.split_plan_path.exists() else {}
    missing = sorted(set(plan) - {r.path for r in records})
    errors.extend(_missing_part(cache, name, entry) for name, entry in gone.items())
    for rec in records:
        planned = plan.get(rec.path)
        if planned is not None and planned[1] != rec.split:
            errors.append(f"{rec.path}: manifest split {rec.split!r} differs from the split plan "
                          f"{planned[1]!r} (edited manifest); restore it or re-extract")
    if missing:
        warnings.append(f"{len(missing)} planned video(s) have no record (e.g. {missing[0]}): an unfinished "
                        f"extraction or a lost part; rerun `{_rerun(missing)}` with the same videos (or, for videos "
                        f"that are gone, `saga cache prune {cache.root} --videos DIR`)")
    warnings.extend(duplicate_warnings(cache.index(), cache.root))
    return errors, warnings


def _missing_part(cache: "FeatureCache", name: str, entry: dict[str, Any], readable: bool = True) -> str:
    """The error for a logged part that is gone, with what retires it (`saga cache verify --seal`): every
    video it held (its seal lists them; an older saga's seal does not, then every planned video) recorded
    again by a later pass (an older record may be what the part superseded). `readable`: False while a
    corrupt manifest hides which videos have a later record (and `--seal` retires nothing)."""
    head = f"part {name} is missing (sealed with {entry.get('lines')} records)"
    held = seal.held_videos(cache, entry)
    listed = seal.listed_videos(entry) is not None
    if held is None:
        return (f"{head}; restore it or re-extract into a new cache (its {store.PARTS_LOG} line, written by an "
                f"older saga, does not list the videos it held, and no split plan ({store.SPLIT_PLAN}) stands in)")
    older = "" if listed else (f"; its {store.PARTS_LOG} line, written by an older saga, does not list the videos it "
                               "held, so every planned video counts")
    if not readable:
        which = f"its seal lists {len(held)} video(s) it held" if listed else f"{len(held)} planned video(s)"
        return (f"{head}; restore it, or re-extract its videos ({which}{_example(held)}{older}; which of them "
                f"have a later record is unknown until the corrupt manifest reported here is restored or its part "
                f"re-extracted): rerun `{_rerun(held)}` with the same videos, then `saga cache verify --seal` "
                "retires it")
    unrecorded = seal.unrecorded(cache, name, entry) or []
    if not unrecorded:
        every = "every video it held" if listed else "every planned video"
        return f"{head}; {every} has a record from a later pass: `saga cache verify --seal` retires it"
    which = "video(s) it held" if listed else "planned video(s)"
    return (f"{head}; restore it, or re-extract its videos ({len(unrecorded)} {which} have no record newer than "
            f"it, e.g. {unrecorded[0]}{older}: rerun `{_rerun(unrecorded)}` with the same videos; a video whose "
            "older record is still current is not re-extracted, so then re-extract into a new cache), then "
            "`saga cache verify --seal` retires it")


def _example(paths: list[str]) -> str:
    return f", e.g. {paths[0]}" if paths else ""


def _rerun(paths: list[str]) -> str:
    """The command that records `paths` again: augmented copies come only from `saga extract --augment`."""
    return "saga extract --augment …" if any(p.startswith(AUGMENTED) for p in paths) else "saga extract"


def _check_part(cache: "FeatureCache", name: str, entry: dict[str, Any] | None, errors: list[str],
                warnings: list[str]) -> None:
    """One part against its seal: the parts.jsonl line, else its seal.json (reported: a loss of the part
    would go unnoticed), else a warning that it was never sealed."""
    folder = cache.root / "parts" / name
    if entry is None and (folder / store.SEAL).exists():
        entry = seal.seal_entry(cache.root, name)
        if entry is None:
            errors.append(f"part {name}: corrupt {store.SEAL}; restore it or re-extract into a new cache")
            return
        warnings.append(f"part {name} is sealed ({store.SEAL}) but not logged in {store.PARTS_LOG} (an extraction "
                        "killed, or a full disk, while sealing it), so losing it would go unnoticed; "
                        "`saga cache verify --seal` logs it, and the next `saga extract` does too")
    if entry is None:
        warnings.append(f"part {name} was never sealed (made by an older saga, or an extraction killed or "
                        "still running); `saga cache verify --seal` seals it once every check passes, and the "
                        "next `saga extract` does too")
        return
    lines, digest = manifest_digest(folder / store.MANIFEST)
    if prune.interrupted(cache.root, name, entry):
        warnings.append(f"part {name}: a `saga cache prune` was interrupted; rerun it (or `saga cache verify "
                        "--seal`, or the next `saga extract`) to finish it")
    elif (lines, digest) != (entry.get("lines"), entry.get("digest")):
        errors.append(f"part {name}: {store.MANIFEST} changed since it was sealed ({lines} complete lines, "
                      f"sealed with {entry.get('lines')}): truncated or edited; restore it or re-extract")
    try:
        cache.part(name)
    except SagaError as exc:
        errors.append(str(exc))
