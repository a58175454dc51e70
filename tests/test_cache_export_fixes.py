"""Cache export/import and structure fixes: a deleted part is retired, export under the lock with its
warnings and split plan, a digest over the export's text, checked zarr.json attributes, no overwrite of
the cache or of foreign files, one-line import errors, a rewritten seal.json reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import lock_held_by_another_thread, run_saga
from saga.cache import prune, seal
from saga.cache.export import export_h5, import_h5
from saga.cache.manifest import append_split_plan, read_split_plan
from saga.cache.store import PARTS_LOG, SEAL, FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from test_cache import D, T, W
from test_cache_fixes import new_cache, rec, write_part


def two_parts(tmp_path: Path) -> FeatureCache:
    cache = new_cache(tmp_path)
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/b.mp4"), 2)])
    write_part(cache, [(rec("syn-svd/c.mp4", "syn-svd"), 3)])
    return cache


def exported(tmp_path: Path) -> Path:
    path = tmp_path / "c.h5"
    export_h5(two_parts(tmp_path), path)
    return path


# --- 1. a part deleted as verify advises is retired once its videos are re-extracted ------------------------------

def test_a_deleted_part_is_retired_by_verify_seal_once_every_video_has_a_record_again(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    shutil.rmtree(cache.root / "parts" / "p000001-r000")
    errors, _ = FeatureCache.open(cache.root).check_structure()
    assert any("p000001-r000 is missing" in e and "2 video(s) it held have no record newer than it" in e for e in errors)
    proc = run_saga("cache", "verify", "--seal", str(cache.root))
    assert proc.returncode == 1 and "retired" not in proc.stdout
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/b.mp4"), 2)])  # re-extracted into a new part
    proc = run_saga("cache", "verify", "--seal", str(cache.root))
    assert proc.returncode == 0, proc.stderr
    assert "retired part p000001-r000" in proc.stdout
    assert FeatureCache.open(cache.root).check_structure()[0] == []
    lines = [json.loads(line) for line in (cache.root / PARTS_LOG).read_text().splitlines()]
    assert lines[-1]["retired"] is True and all("part" in e and "lines" in e for e in lines)  # older sagas read it
    assert "p000001-r000" not in seal.log_entries(cache.root)


def test_a_retired_part_that_is_restored_is_checked_against_its_own_seal(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    keep = tmp_path / "kept"
    shutil.copytree(cache.root / "parts" / "p000001-r000", keep)
    shutil.rmtree(cache.root / "parts" / "p000001-r000")
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/b.mp4"), 2)])
    assert seal.retire_missing(FeatureCache.open(cache.root)) == ["p000001-r000"]
    shutil.copytree(keep, cache.root / "parts" / "p000001-r000")
    errors, warnings = FeatureCache.open(cache.root).check_structure()
    assert errors == [] and any("sealed (seal.json) but not logged" in w for w in warnings)


# --- 2. export under the cache lock, its warnings printed, the split plan carried --------------------------------

def test_export_is_refused_while_an_extraction_holds_the_cache(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    with lock_held_by_another_thread(cache.root):
        with pytest.raises(SagaError, match="another saga extract is writing this cache right now"):
            export_h5(cache, tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()


def test_export_warns_about_an_unfinished_cache_and_carries_the_split_plan(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    append_split_plan(cache.split_plan_path, {"real/never.mp4": ("real", "test")})
    writer = PartWriter(cache, next_part_name(cache), capacity=W, shard_rows=1)  # a killed pass: never closed
    writer.add(rec("real/d.mp4"), np.zeros((W, T, D), np.float16), np.ones((W, T), bool), np.zeros((W, T), np.float32))
    warned: list[str] = []
    export_h5(cache, tmp_path / "c.h5", warn=warned.append)
    assert any("never sealed" in w for w in warned) and any("planned video(s) have no record" in w for w in warned)
    out = import_h5(tmp_path / "c.h5", tmp_path / "imp")
    assert read_split_plan(out.split_plan_path) == read_split_plan(cache.split_plan_path)


def test_an_export_without_digest_or_split_plan_still_imports_with_a_note(tmp_path: Path) -> None:
    path = exported(tmp_path)
    with h5py.File(path, "a") as h5:
        del h5["splits"]
        del h5.attrs["digest"]
    notes: list[str] = []
    out = import_h5(path, tmp_path / "imp", warn=notes.append)
    assert len(out.records()) == 3 and not out.split_plan_path.exists()
    assert len(notes) == 1 and "cannot be checked" in notes[0]


# --- 3. an edited label or split inside an export is refused ----------------------------------------------------

@pytest.mark.parametrize("field", ["labels", "split", "attrs"])
def test_an_edited_export_is_refused_as_damaged(tmp_path: Path, field: str) -> None:
    path = exported(tmp_path)
    with h5py.File(path, "a") as h5:
        if field == "attrs":
            attrs = json.loads(h5.attrs["saga"])
            attrs["taxonomy"]["generators"]["syn-svd"]["task"] = "T2V"
            h5.attrs["saga"] = json.dumps(attrs)
        else:
            lines = list(h5["manifest"].asstr()[:])
            entry = json.loads(lines[0])
            if field == "labels":
                entry["labels"]["BIN-L"] = "fake"
            else:
                entry["split"] = "test"
            lines[0] = json.dumps(entry)
            del h5["manifest"]
            h5.create_dataset("manifest", data=np.array(lines, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(SagaError, match="the file is damaged"):
        import_h5(path, tmp_path / "imp")
    assert not (tmp_path / "imp").exists()


# --- 4. zarr.json with a missing or mistyped key, or no parts folder --------------------------------------------

@pytest.mark.parametrize("edit", ["no_cache_id", "dim_str", "sampling_null", "frames_str", "windows_zero",
                                  "taxonomy_bad", "no_taxonomy", "saga_list"])
def test_an_edited_zarr_json_is_one_line(tmp_path: Path, edit: str) -> None:
    cache = two_parts(tmp_path)
    meta = json.loads((cache.root / "zarr.json").read_text())
    saga = meta["attributes"]["saga"]
    {"no_cache_id": lambda: saga.pop("cache_id"), "dim_str": lambda: saga.update(dim="16"),
     "sampling_null": lambda: saga.update(sampling=None), "frames_str": lambda: saga["sampling"].update(frames="x"),
     "windows_zero": lambda: saga["sampling"].update(windows=0), "taxonomy_bad": lambda: saga.update(taxonomy={"x": 1}),
     "no_taxonomy": lambda: saga.pop("taxonomy"), "saga_list": lambda: meta["attributes"].update(saga=[1])}[edit]()
    (cache.root / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SagaError, match="zarr.json was edited"):
        FeatureCache.open(cache.root)
    proc = run_saga("cache", "verify", str(cache.root))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "zarr.json was edited" in proc.stderr


def test_a_cache_without_windows_still_opens(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    meta = json.loads((cache.root / "zarr.json").read_text())
    del meta["attributes"]["saga"]["sampling"]["windows"]  # optional: windows default to 1
    (cache.root / "zarr.json").write_text(json.dumps(meta))
    assert FeatureCache.open(cache.root).windows == 1


def test_a_missing_parts_folder_is_one_line(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    shutil.rmtree(cache.root / "parts")
    with pytest.raises(SagaError, match="parts: missing"):
        FeatureCache.open(cache.root).part_names()
    for command in ("info", "verify"):
        proc = run_saga("cache", command, str(cache.root))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and "parts: missing" in proc.stderr


# --- 5. export never writes into the cache, nor over a file that is not an export -------------------------------

def test_export_refuses_a_path_inside_the_cache(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    before = (cache.root / "zarr.json").read_bytes()
    with pytest.raises(SagaError, match="inside the cache"):
        export_h5(cache, cache.root / "zarr.json", force=True)
    assert (cache.root / "zarr.json").read_bytes() == before


def test_export_overwrites_a_foreign_file_only_with_force_and_replaces_an_export(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(SagaError, match="not a saga cache export; pass another --h5, or --force"):
        export_h5(cache, notes)
    assert notes.read_text() == "my notes"
    assert export_h5(cache, notes, force=True) == 3
    assert export_h5(cache, notes) == 3  # now an export: replaced without --force
    proc = run_saga("cache", "export", str(cache.root), "--h5", str(tmp_path / "x.txt"), "--force")
    assert proc.returncode == 0, proc.stderr


# --- 6. one-line import errors; a rewritten seal.json is reported -------------------------------------------------

def test_import_of_a_folder_or_a_missing_file_is_one_line(tmp_path: Path) -> None:
    for path, said in ((tmp_path, "is a folder"), (tmp_path / "missing.h5", "no such file")):
        proc = run_saga("cache", "import", str(path), "--out", str(tmp_path / "imp"))
        assert proc.returncode != 0 and said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_verify_seal_reports_a_rewritten_seal_json(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    (cache.root / "parts" / "p000001-r000" / SEAL).unlink()
    proc = run_saga("cache", "verify", "--seal", str(cache.root))
    assert proc.returncode == 0, proc.stderr
    assert "rewrote the missing or stale seal.json of 1 part(s)" in proc.stdout
    assert "already sealed" not in proc.stdout


# --- 7. a deleted part is retired only once a later pass re-recorded its videos; its name is never reused ---------

def test_an_older_record_does_not_retire_a_deleted_part(tmp_path: Path) -> None:
    cache = new_cache(tmp_path)
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/b.mp4"), 2)])
    write_part(cache, [(rec("real/a.mp4", size=2), 9)])  # a changed file re-extracted
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    errors, _ = FeatureCache.open(cache.root).check_structure()
    assert any("p000002-r000 is missing" in e and "no record newer than it, e.g. real/a.mp4" in e for e in errors)
    assert seal.retire_missing(FeatureCache.open(cache.root)) == []  # the stale p000001 record must not stand in
    write_part(cache, [(rec("real/a.mp4", size=2), 9), (rec("real/b.mp4"), 2)])  # a later pass records both
    assert seal.retire_missing(FeatureCache.open(cache.root)) == ["p000002-r000"]


def test_a_deleted_parts_name_is_never_reused(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    assert next_part_name(FeatureCache.open(cache.root)) == "p000003-r000"  # its parts.jsonl line would seal it


def test_a_deleted_augment_part_advises_extract_augment(tmp_path: Path) -> None:
    cache = new_cache(tmp_path)
    write_part(cache, [(rec("real/a.mp4"), 1)])
    write_part(cache, [(rec(".augment/crf28/real/a.mp4"), 2)])
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    errors, warnings = FeatureCache.open(cache.root).check_structure()
    assert any("p000002-r000 is missing" in e and "`saga extract --augment …`" in e for e in errors)
    assert any("`saga extract --augment …`" in w for w in warnings)


def test_export_refuses_a_link_inside_the_cache_pointing_out(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (cache.root / "out").symlink_to(tmp_path / "elsewhere")
    (cache.root / "x.h5").symlink_to(tmp_path / "elsewhere" / "x.h5")
    for path in (cache.root / "out" / "x.h5", cache.root / "x.h5"):
        with pytest.raises(SagaError, match="inside the cache"):
            export_h5(cache, path)
    assert not (tmp_path / "elsewhere" / "x.h5").exists() and (cache.root / "x.h5").is_symlink()


# --- 8. a deleted part is retired once the videos IT held are re-recorded: its seal lists them ---------------------

def test_a_deleted_part_is_retired_once_its_own_videos_have_a_later_record(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)  # real/a, real/b only ever in p000001: no later record of them will come
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    errors, _ = FeatureCache.open(cache.root).check_structure()
    assert any("1 video(s) it held have no record newer than it, e.g. syn-svd/c.mp4" in e for e in errors)
    assert seal.retire_missing(FeatureCache.open(cache.root)) == []
    write_part(cache, [(rec("syn-svd/c.mp4", "syn-svd"), 3)])  # its one video re-extracted
    assert seal.retire_missing(FeatureCache.open(cache.root)) == ["p000002-r000"]
    assert FeatureCache.open(cache.root).check_structure()[0] == []
    assert "videos" not in json.loads((cache.root / PARTS_LOG).read_text().splitlines()[-1])  # kept compact


def _as_older_saga(cache: FeatureCache) -> None:
    """Drop the video lists from every seal, as an older saga wrote them."""
    lines = [json.loads(line) for line in (cache.root / PARTS_LOG).read_text().splitlines()]
    (cache.root / PARTS_LOG).write_text("".join(json.dumps({k: v for k, v in e.items() if k != "videos"}) + "\n"
                                                for e in lines))
    for path in (cache.root / "parts").glob(f"*/{SEAL}"):
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "videos"}))


def test_an_older_sagas_seal_line_keeps_the_every_planned_video_rule_and_gets_its_list(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    _as_older_saga(cache)
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    write_part(cache, [(rec("syn-svd/c.mp4", "syn-svd"), 3)])
    assert seal.retire_missing(FeatureCache.open(cache.root)) == []  # which videos it held is unknown
    errors, _ = FeatureCache.open(cache.root).check_structure()
    assert any("2 planned video(s) have no record newer than it" in e and "does not list the videos it held" in e
               for e in errors)
    seal.seal_leftover_parts(FeatureCache.open(cache.root))  # the next extract or `verify --seal`
    assert seal.log_entries(cache.root)["p000001-r000"]["videos"] == ["real/a.mp4", "real/b.mp4"]
    assert seal.seal_entry(cache.root, "p000001-r000") == seal.log_entries(cache.root)["p000001-r000"]
    assert [e for e in FeatureCache.open(cache.root).check_structure()[0] if "p000001" in e] == []


def test_a_pruned_video_of_a_deleted_part_does_not_keep_it(tmp_path: Path) -> None:
    cache = new_cache(tmp_path)
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/b.mp4"), 2)])
    shutil.rmtree(cache.root / "parts" / "p000001-r000")
    write_part(cache, [(rec("real/a.mp4"), 1)])  # real/b.mp4 is gone from the videos folder
    assert seal.retire_missing(FeatureCache.open(cache.root)) == []
    videos = tmp_path / "videos"
    (videos / "real").mkdir(parents=True)
    (videos / "real" / "a.mp4").write_bytes(b"x")
    assert prune.prune_gone(FeatureCache.open(cache.root), videos, all_folders=True) == ["real/b.mp4"]
    assert seal.retire_missing(FeatureCache.open(cache.root)) == ["p000001-r000"]


def test_a_prune_seals_the_videos_it_kept(tmp_path: Path) -> None:
    cache = two_parts(tmp_path)
    assert prune.prune_part(cache.root, "p000001-r000", {"real/b.mp4"}) == 1
    assert seal.log_entries(cache.root)["p000001-r000"]["videos"] == ["real/a.mp4"]
    assert seal.seal_entry(cache.root, "p000001-r000") == seal.log_entries(cache.root)["p000001-r000"]


# --- 9. the missing-part error says what is known of the part's videos, whatever else is damaged ------------------

LISTED = "its seal lists 1 video(s) it held, e.g. syn-svd/c.mp4"
PLANNED = "3 planned video(s), e.g. real/a.mp4; its parts.jsonl line, written by an older saga, does not list"
UNKNOWN = "does not list the videos it held, and no split plan (splits.jsonl) stands in"


@pytest.mark.parametrize("older, plan, corrupt, said", [
    (False, True, True, LISTED), (False, False, True, LISTED), (True, True, True, PLANNED),
    (True, False, True, UNKNOWN), (True, False, False, UNKNOWN),
    (False, False, False, "1 video(s) it held have no record newer than it, e.g. syn-svd/c.mp4")],
    ids=["listed-corrupt", "listed-noplan-corrupt", "older-corrupt", "older-noplan-corrupt", "older-noplan",
         "listed-noplan"])
def test_a_missing_parts_message_says_what_is_known_of_its_videos(tmp_path: Path, older: bool, plan: bool,
                                                                   corrupt: bool, said: str) -> None:
    cache = two_parts(tmp_path)
    if older:
        _as_older_saga(cache)
    if not plan:
        cache.split_plan_path.unlink()
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    if corrupt:  # another part's manifest: which videos have a later record cannot be read
        manifest = cache.root / "parts" / "p000001-r000" / "manifest.jsonl"
        manifest.write_text(manifest.read_text().replace('"path"', '"pa th"', 1))
    errors, _ = FeatureCache.open(cache.root).check_structure()
    missing = [e for e in errors if "p000002-r000 is missing" in e]
    assert len(missing) == 1 and said in missing[0], errors
    if said == UNKNOWN:
        assert "restore it or re-extract into a new cache" in missing[0]
    else:
        assert "no split plan" not in missing[0] and missing[0].endswith("`saga cache verify --seal` retires it")
    assert any("corrupt manifest line" in e for e in errors) == corrupt
