"""One-file HDF5 export of a cache for sharing, and the import that rebuilds the cache.

Besides the arrays and the manifest, an export holds the split plan (dataset `splits`, one JSON line
per planned video) and a blake2b `digest` attribute over the attributes, manifest and split plan
strings, so an edited label or split inside the file is refused at import. Exports of an older saga
have neither: they still import (without the plan; the import says they cannot be checked). A cache that
was pruned also exports the splits of its pruned videos (dataset `pruned_splits`, one `splits-pruned.jsonl`
line each, in the digest), so an extraction into the imported cache returns such a video to its split.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from saga.cache.integrity import attrs_problem
from saga.cache.manifest import (PRUNED_PLAN, VideoRecord, check_fields, feature_checksum, pruned_entry,
                                 read_pruned_plan, read_split_plan)
from saga.cache.sealcheck import check_seals
from saga.cache.store import ATTR_KEY, SPLIT_PLAN, FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.fileio import (atomic_path, check_writable, host_tag, live_siblings, loads, make_dir, sweep_siblings,
                         temp_owner, temp_path, write_text)
from saga.locks import lock_folder, unlock_folder

FORMAT = "saga-cache-h5/1"
CHUNK_VIDEOS = 256
BUSY = "another saga extract is writing this cache right now; rerun `saga cache export` once it has finished"
Warn = Callable[[str], None]


def export_h5(cache: FeatureCache, path: Path, force: bool = False, warn: Warn | None = None) -> int:
    """Write every record (failed ones too, without features) into one HDF5 file; returns #videos with features.

    Under the cache lock, so a running extraction is refused instead of exported half-written; the
    structure warnings (unsealed parts, planned videos without a record) go to `warn`."""
    _check_target(cache, path, force)
    locked = os.access(cache.root, os.W_OK)  # a read-only cache takes no lock, and no extraction either
    if locked:
        lock_folder(cache.root, BUSY)
    try:
        _check_seals(cache)
        errors, warnings = cache.check_structure()
        if errors:
            raise SagaError(f"{cache.root}: refusing to export a damaged cache ({errors[0]}); run "
                            f"`saga cache verify {cache.root}`")
        for line in warnings:
            (warn or (lambda _: None))(line)
        return _write(cache, path)
    finally:
        if locked:
            unlock_folder(cache.root)


def _check_seals(cache: FeatureCache) -> None:
    """The seal check of every reader (`check_seals`), in its one line: an edited or lost sealed part must not
    travel to another machine, where the import would seal the edit as the truth."""
    try:
        check_seals(cache)
    except SagaError as exc:
        raise SagaError(f"refusing to export a damaged cache: {exc}") from None


def _check_target(cache: FeatureCache, path: Path, force: bool) -> None:
    """Never write into the cache itself, nor over a file that is not an export unless --force."""
    if path.is_dir():
        raise SagaError(f"{path}: is a folder; pass --h5 with a file name, e.g. {path / 'cache.h5'}")
    if not path.parent.is_dir():
        raise SagaError(f"{path.parent}: no such folder; create it or pass another --h5")
    if _inside(path, cache.root):
        raise SagaError(f"{path}: inside the cache {cache.root}; pass an --h5 path outside it")
    if path.exists() and not force and not is_export(path):
        raise SagaError(f"{path}: exists and is not a saga cache export; pass another --h5, or --force to "
                        "overwrite it")


def _inside(path: Path, root: Path) -> bool:
    """Whether writing `path` lands in the cache: the file it names, or the folder it is in (the atomic write
    replaces a link there, so a link inside the cache pointing out still writes into the cache)."""
    return (path.resolve().is_relative_to(root.resolve()) or path.parent.resolve().is_relative_to(root.resolve())
            or path.absolute().is_relative_to(root.absolute()))


def is_export(path: Path) -> bool:
    """Whether `path` is an HDF5 file written by `saga cache export` (replaced without --force)."""
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("format") == FORMAT
    except (OSError, ValueError):
        return False


def digest(attrs: str, manifest: list[str], splits: list[str], pruned: list[str] | None = None) -> str:
    """blake2b over the attributes JSON, the manifest, the split plan lines and, when there are any, the pruned
    videos' split lines (each length-prefixed; without them the digest is an older saga's)."""
    h = hashlib.blake2b(digest_size=16)
    for group in ([attrs], manifest, splits, *([pruned] if pruned else [])):
        h.update(f"{len(group)}\n".encode())
        for text in group:
            data = text.encode("utf-8")
            h.update(f"{len(data)}:".encode() + data)
    return h.hexdigest()


def _write(cache: FeatureCache, path: Path) -> int:
    records = cache.records()
    ok = [r for r in records if r.ok]
    w, t, d = cache.windows, cache.frames, cache.dim
    plan = read_split_plan(cache.split_plan_path) if cache.split_plan_path.is_file() else {}
    splits = [json.dumps({"path": p, "generator": g, "split": s}) for p, (g, s) in plan.items()]
    pruned = [json.dumps({"path": p, **e}) for p, e in read_pruned_plan(cache.root / PRUNED_PLAN).items()]
    attrs = json.dumps(cache.attrs)
    sweep_siblings(path)  # the temporary files of exports killed mid-write: full-size, one per kill
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["format"] = FORMAT
        h5.attrs[ATTR_KEY] = attrs
        feats = h5.create_dataset("features", (len(ok), w, t, d), np.float16, chunks=(1, w, t, d) if ok else None)
        mask = h5.create_dataset("mask", (len(ok), w, t), bool)
        stamps = h5.create_dataset("timestamps", (len(ok), w, t), np.float32)
        for start in range(0, len(ok), CHUNK_VIDEOS):
            part = ok[start:start + CHUNK_VIDEOS]
            data = cache.read(part)
            feats[start:start + len(part)] = data["features"]
            mask[start:start + len(part)] = data["mask"]
            stamps[start:start + len(part)] = data["timestamps"]
        manifest = [r.to_json() for r in ok] + [r.to_json() for r in records if not r.ok]
        h5.create_dataset("manifest", data=np.array(manifest, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("splits", data=np.array(splits, dtype=object), dtype=h5py.string_dtype())
        if pruned:
            h5.create_dataset("pruned_splits", data=np.array(pruned, dtype=object), dtype=h5py.string_dtype())
        h5.attrs["digest"] = digest(attrs, manifest, splits, pruned)
    return len(ok)


def import_h5(path: Path, out: Path, warn: Warn | None = None) -> FeatureCache:
    """Rebuild a cache (same provenance, cache id and split plan) from an exported HDF5 file.

    Built in a hidden folder beside `out` (`.OUT.tmp-PID@HOST`), checked as `FeatureCache.open` and `saga cache
    verify` check a cache, then renamed onto `out` in one step: a failed, killed or concurrent import never
    leaves a half cache at `out`, nor removes anything but its own hidden folder (a killed one's goes at
    the next import)."""
    h5 = _open_export(path)
    check_writable(out)  # a bad --out is not a damaged export
    with h5:
        if h5.attrs.get("format") != FORMAT:
            raise SagaError(f"{path}: not a saga cache export (format {h5.attrs.get('format')!r})")
        target = _check_out(out)
        attrs, records, splits, n_ok, pruned = _read_checked(path, h5, warn)
        tmp = temp_path(target)
        try:
            _import_into(path, h5, tmp, attrs, records, n_ok, splits)
            if pruned:
                write_text(tmp / PRUNED_PLAN, "".join(line + "\n" for line in pruned))
            _check_imported(path, tmp, out, warn)
            _publish(tmp, target, out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # this import's own folder, never `out`
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, SIGTERM: what the CLI says instead of "resume"
                exc.args = (f"interrupted: nothing was imported into {out}; rerun the same command",)
            if isinstance(exc, (SagaError, KeyboardInterrupt)) or not isinstance(exc, Exception):
                raise
            raise SagaError(f"{path}: damaged saga cache export ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was imported") from None
    return FeatureCache.open(out)


def _open_export(path: Path) -> h5py.File:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "no such file"
        raise SagaError(f"{path}: {what}; pass the .h5 file written by `saga cache export`")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SagaError(f"{path}: not an HDF5 file ({first}); pass a file written by `saga cache export`") from None


def _check_out(out: Path) -> Path:
    """The resolved --out, refused up front when it holds anything, is the current folder or a mount point
    (the imported cache is renamed onto it), or another import into it is running. Stale hidden folders of
    killed imports into it are removed."""
    if (out / "zarr.json").exists():
        raise SagaError(f"{out}: already a cache; import into a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SagaError(f"{out}: exists and is not empty; import into a new folder")
    target = out.resolve()
    if out.exists() and (target == Path.cwd().resolve() or os.path.ismount(target)):
        raise SagaError(f"{out}: the current folder or a mount point cannot be replaced by the imported cache; "
                        f"import into a new folder inside it, e.g. {out / 'cache'}")
    make_dir(target.parent)
    sweep_siblings(target)
    running = live_siblings(target)
    if running:
        raise SagaError(f"{out}: another `saga cache import` into it is running ({_owner(running[0])}); wait "
                        "for it to finish, or import into another folder")
    return target


def _owner(tmp: Path) -> str:
    """Who holds a hidden import folder: a process here, or one on another host, which cannot be checked
    from here (its folder may be a killed import's)."""
    pid, host = temp_owner(tmp) or (0, None)
    if host is None or host == host_tag():
        return f"process {pid}"
    return f"process {pid} on host {host}; if that import is no longer running, delete {tmp}"


def _check_imported(path: Path, tmp: Path, out: Path, warn: Warn | None) -> None:
    """The new cache must open and pass `saga cache verify` (structure and every checksum): an import never
    reports success for a cache that the next command would refuse or call corrupt."""
    try:
        cache = FeatureCache.open(tmp)
        errors, warnings = cache.check_structure()
        errors += [f"{rec.path}: {why}" for rec, why in ([] if errors else cache.verify())]
    except SagaError as exc:
        errors, warnings = [str(exc)], []
    if errors:
        raise SagaError(f"{path}: would import as a damaged cache ({errors[0].replace(str(tmp), str(out))}); "
                        "nothing was imported; export it again")
    for line in warnings:
        (warn or (lambda _: None))(line.replace(str(tmp), str(out)))


def _publish(tmp: Path, target: Path, out: Path) -> None:
    """Rename the checked cache onto `target` (replacing an empty folder), never over anything written
    there meanwhile."""
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise SagaError(f"{out}: something was written there while this import ran (another import?); "
                            "nothing was imported; import into a new folder") from None
        raise


def _read_checked(path: Path, h5: h5py.File, warn: Warn | None
                  ) -> tuple[dict, list[VideoRecord], list[str], int, list[str]]:
    """The attributes, records, split plan lines and pruned videos' split lines, checked against the export's
    digest: an edited label or split inside the file is refused, not imported as a cache that verifies clean."""
    try:
        raw_attrs = h5.attrs[ATTR_KEY]
        _check_held(path, h5, [name for name in ("manifest", "splits", "pruned_splits") if name in h5] or ["manifest"])
        manifest = list(h5["manifest"].asstr()[:])
        splits = list(h5["splits"].asstr()[:]) if "splits" in h5 else []
        pruned = list(h5["pruned_splits"].asstr()[:]) if "pruned_splits" in h5 else []
        stored = h5.attrs.get("digest")
        if stored is not None and stored != digest(raw_attrs, manifest, splits, pruned):
            raise SagaError(f"{path}: the file is damaged (its attributes, manifest or split plan changed since "
                            "it was exported); export it again")
        attrs = loads(raw_attrs)
        problem = attrs_problem(attrs)
        if problem is not None:
            raise ValueError(f"its cache attributes: {problem}")
        records = [VideoRecord.from_dict(_checked_record(loads(s))) for s in manifest]
        for line in splits:
            entry = loads(line)
            if not all(isinstance(entry.get(k), str) for k in ("path", "generator", "split")):
                raise ValueError(f"split plan line {line[:60]!r}")
        for line in pruned:  # every field as `saga cache prune` writes it (`read_pruned_plan` refuses others)
            pruned_entry(loads(line))
        n_ok = _check_arrays(path, h5, attrs)
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise SagaError(f"{path}: damaged saga cache export ({type(exc).__name__}: {exc})") from None
    if stored is None and warn is not None:
        warn(f"{path}: written by an older saga (no digest, no split plan): its labels and splits cannot be "
             "checked")
    return attrs, records, splits, n_ok, pruned


def _checked_record(data: Any) -> dict[str, Any]:
    """A manifest line of an export, of the types and ranges a cache's manifest must hold (`check_fields`):
    unchecked, a crafted 10**30 was imported and then broke every read of the new cache."""
    check_fields(data)
    return data


def _check_held(path: Path, h5: h5py.File, names: list[str]) -> None:
    """Each dataset must hold the bytes its shape claims, uncompressed, within the file: a few-KB file claiming
    a 10^9-line manifest or 2 GB rows (stored nowhere: HDF5 returns its fill value) made the import allocate
    all of it before any check. saga writes its exports uncompressed, so a legitimate file always holds them."""
    size = os.path.getsize(path)
    for name in names:
        ds = h5[name]
        if not isinstance(ds, h5py.Dataset):
            raise SagaError(f"{path}: damaged saga cache export ('{name}' is not a dataset); export it again")
        vlen = h5py.check_string_dtype(ds.dtype) is not None and ds.dtype.kind == "O"
        claimed = ds.size * (16 if vlen else ds.dtype.itemsize)  # 16 B: a variable-length string's stored reference
        if claimed > min(ds.id.get_storage_size(), size):
            raise SagaError(f"{path}: damaged or hostile saga cache export ('{name}' claims {ds.shape} = {claimed} "
                            f"bytes but the file holds {ds.id.get_storage_size()} of them); nothing was imported; "
                            "export it again")


def _check_arrays(path: Path, h5: h5py.File, attrs: dict) -> int:
    """The number of feature rows, once the arrays' shapes and types are the cache attributes' and their bytes
    are in the file: each row is read whole, so a row claiming other sizes must be refused before any read."""
    w, t, d = attrs["sampling"].get("windows", 1), attrs["sampling"]["frames"], attrs["dim"]
    n = h5["features"].shape[0] if isinstance(h5.get("features"), h5py.Dataset) and h5["features"].shape else 0
    for name, shape in (("features", (n, w, t, d)), ("mask", (n, w, t)), ("timestamps", (n, w, t))):
        ds = h5[name]
        if not isinstance(ds, h5py.Dataset) or ds.shape != shape or ds.dtype.kind not in "biuf":
            found = (ds.shape, str(ds.dtype)) if isinstance(ds, h5py.Dataset) else "a group"
            raise SagaError(f"{path}: damaged saga cache export ('{name}' is {found}, the cache attributes "
                            f"say shape {shape} of numbers); nothing was imported; export it again")
    _check_held(path, h5, ["features", "mask", "timestamps"])
    return n


def _import_into(path: Path, h5: h5py.File, out: Path, attrs: dict, records: list[VideoRecord], n_ok: int,
                 splits: list[str]) -> None:
    """Every row is checked against its record's checksum before it is written: a damaged export
    (cut rows, flipped bytes, NaN) is refused instead of becoming a cache that looks whole."""
    damaged = f"{path}: the file is damaged"
    if n_ok > len(records) or not all(r.ok and r.checksum for r in records[:n_ok]) or any(
            r.ok for r in records[n_ok:]):
        raise SagaError(f"{damaged} ({n_ok} feature rows for {sum(r.ok for r in records)} ok records); "
                        "export it again")
    cache = FeatureCache.create_or_open(out, attrs)
    if splits:  # before any record, as `saga extract` plans before it extracts
        write_text(out / SPLIT_PLAN, "".join(line + "\n" for line in splits))
    writer = PartWriter(cache, next_part_name(cache), capacity=max(n_ok, 1) * cache.windows)
    for i, rec in enumerate(records):
        if i < n_ok:
            rows = (np.ascontiguousarray(h5["features"][i], np.float16), np.ascontiguousarray(h5["mask"][i], bool),
                    np.ascontiguousarray(h5["timestamps"][i], np.float32))
            if feature_checksum(*rows) != rec.checksum:
                raise SagaError(f"{damaged}: {rec.path}'s features do not match their checksum; export it again")
            writer.add(rec, *rows)
        else:
            writer.add_failure(rec)
    writer.close()
