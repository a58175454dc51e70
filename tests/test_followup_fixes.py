"""Follow-up fixes: prune and a cache appended from two videos folders, a prune killed before seal.json,
LOGO folds measured on a cache changed in place, and `--help` under torchrun's environment."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_saga
from expected_warnings import unreliable_fold
from saga.cache import prune, seal
from saga.cache.manifest import manifest_digest
from saga.cache.store import PARTS_LOG, SEAL, FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from test_cache import D, T, W
from test_cache_fixes import new_cache, rec, write_part


def _part(cache: FeatureCache, videos: Path | None, paths: list[str]) -> None:
    """One sealed part written by a pass over `videos` (None: an older saga's part, no folder recorded)."""
    writer = PartWriter(cache, next_part_name(cache), capacity=len(paths) * W, shard_rows=4, videos=videos)
    for i, path in enumerate(paths):
        feats = np.random.default_rng(i).standard_normal((W, T, D)).astype(np.float16)
        writer.add(rec(path), feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    if videos is not None:
        for path in paths:
            (videos / path).parent.mkdir(parents=True, exist_ok=True)
            (videos / path).write_bytes(b"v")


def _two_folders(tmp_path: Path) -> tuple[FeatureCache, Path, Path]:
    cache = new_cache(tmp_path)
    vids_p, vids_q = tmp_path / "vidsP", tmp_path / "vidsQ"
    _part(cache, vids_p, ["real/a.mp4", "real/b.mp4"])
    _part(cache, vids_q, ["real/c.mp4"])
    return FeatureCache.open(cache.root), vids_p, vids_q


# --- 1. prune and a cache appended from two videos folders ------------------------------------------------------

def test_prune_refuses_a_cache_holding_passes_over_another_folder(tmp_path: Path) -> None:
    cache, vids_p, vids_q = _two_folders(tmp_path)
    assert seal.part_videos(cache.root, "p000002-r000") == str(vids_q.resolve())
    for fn in (prune.gone_paths, prune.prune_gone):  # the dry run and --yes
        with pytest.raises(SagaError, match=f"extracted from {vids_q.resolve()}, not from .*--all-folders"):
            fn(cache, vids_p)
    assert len(FeatureCache.open(cache.root).records()) == 3
    proc = run_saga("cache", "prune", str(cache.root), "--videos", str(vids_p), "--yes")
    assert proc.returncode == 2 and str(vids_q.resolve()) in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert len(FeatureCache.open(cache.root).records()) == 3
    assert prune.gone_paths(cache, vids_p, all_folders=True) == ["real/c.mp4"]  # the explicit choice


def test_prune_of_a_one_folder_cache_drops_only_the_gone_video(tmp_path: Path) -> None:
    cache = new_cache(tmp_path)
    videos = tmp_path / "vids"
    _part(cache, videos, ["real/a.mp4", "real/b.mp4"])
    _part(cache, videos, ["real/c.mp4"])
    (videos / "real/b.mp4").unlink()
    assert prune.prune_gone(FeatureCache.open(cache.root), videos) == ["real/b.mp4"]
    assert sorted(r.path for r in FeatureCache.open(cache.root).records()) == ["real/a.mp4", "real/c.mp4"]


def test_prune_refuses_a_pass_that_recorded_no_folder(tmp_path: Path) -> None:
    cache = new_cache(tmp_path)
    videos = tmp_path / "vids"
    _part(cache, None, ["real/a.mp4"])  # an older saga's pass
    _part(cache, videos, ["real/b.mp4"])
    with pytest.raises(SagaError, match="a pass that recorded no folder"):
        prune.gone_paths(FeatureCache.open(cache.root), videos)


# --- 2. a prune killed after its manifest replace, before seal.json ---------------------------------------------

def _pruned_cache(tmp_path: Path) -> tuple[FeatureCache, Path]:
    cache = new_cache(tmp_path)
    write_part(cache, [(rec("real/a.mp4"), 1), (rec("real/b.mp4"), 2)])
    videos = tmp_path / "vids"
    (videos / "real").mkdir(parents=True)
    (videos / "real/a.mp4").write_bytes(b"v")
    return FeatureCache.open(cache.root), videos


def test_an_old_seal_left_by_a_killed_prune_is_rewritten_from_the_log(tmp_path: Path) -> None:
    cache, videos = _pruned_cache(tmp_path)
    part = cache.root / "parts" / "p000001-r000"
    old = (part / SEAL).read_bytes()
    assert prune.prune_part(cache.root, "p000001-r000", {"real/b.mp4"}) == 1
    (part / SEAL).write_bytes(old)  # what a kill between the manifest replace and seal.json left (older saga)
    seal.seal_leftover_parts(FeatureCache.open(cache.root))
    last = [json.loads(line) for line in (cache.root / PARTS_LOG).read_text().splitlines()][-1]
    assert json.loads((part / SEAL).read_text()) == last
    assert (last["lines"], last["digest"]) == manifest_digest(part / "manifest.jsonl")


def test_a_seal_is_not_rewritten_over_an_edited_manifest(tmp_path: Path) -> None:
    cache, _ = _pruned_cache(tmp_path)
    part = cache.root / "parts" / "p000001-r000"
    before = (part / SEAL).read_bytes()
    log = json.loads((cache.root / PARTS_LOG).read_text().splitlines()[-1])
    seal.log_part(cache.root, {**log, "digest": "0" * 32})  # the log says otherwise; the manifest does not match
    seal.seal_leftover_parts(FeatureCache.open(cache.root))
    assert (part / SEAL).read_bytes() == before


def test_a_prune_killed_at_its_manifest_replace_already_wrote_the_seal(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache, videos = _pruned_cache(tmp_path)
    real_replace = os.replace

    def replace_then_die(a: Path, b: Path) -> None:
        real_replace(a, b)
        if str(a).endswith(prune.PRUNED):
            raise KeyboardInterrupt

    monkeypatch.setattr(prune.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        prune.prune_part(cache.root, "p000001-r000", {"real/b.mp4"})
    monkeypatch.undo()
    part = cache.root / "parts" / "p000001-r000"
    entry = json.loads((part / SEAL).read_text())
    assert (entry["lines"], entry["digest"]) == manifest_digest(part / "manifest.jsonl") and entry["lines"] == 1


# --- 3. LOGO folds measured on a cache changed in place ---------------------------------------------------------

def test_logo_fold_is_measured_again_after_the_cache_changed_in_place(tmp_path: Path) -> None:
    from saga.openworld.logo import evaluate_folds
    from test_openworld import make_cache, make_run

    cache = make_cache(tmp_path / "cache")
    shutil.copytree(make_run(tmp_path / "run", cache), tmp_path / "logo" / "syn-hotshot")
    quiet = lambda _: None  # noqa: E731
    with unreliable_fold():
        evaluate_folds(cache, tmp_path, tmp_path / "out", ["syn-hotshot"], 3, 0, log=quiet)
    gone = {r.path for r in cache.ok_records("test") if r.generator != "syn-hotshot"}
    for name in cache.part_names():
        prune.prune_part(cache.root, name, gone)
    cache = FeatureCache.open(tmp_path / "cache")
    with unreliable_fold():  # measured again: the same 12 known val videos
        rerun = evaluate_folds(cache, tmp_path, tmp_path / "out", ["syn-hotshot"], 3, 0, log=quiet)
    with unreliable_fold():
        fresh = evaluate_folds(cache, tmp_path, tmp_path / "fresh", ["syn-hotshot"], 3, 0, log=quiet)
    measured = lambda r: r["openset"]["syn-hotshot"]["GEN-L"]["prototype"]["n_known"]  # noqa: E731
    assert measured(rerun) == measured(fresh) == 0


# --- 4. `--help` under torchrun's environment -------------------------------------------------------------------

@pytest.mark.parametrize("args", [("cache", "--help"), ("synth", "--help"), ("cache", "verify", "--help")])
def test_help_is_shown_under_torchrun(monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    proc = run_saga(*args)
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_torchrun_refusal_names_the_full_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    proc = run_saga("cache", "verify", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: saga cache verify runs in one process")
    monkeypatch.setenv("WORLD_SIZE", "abc")
    proc = run_saga("synth", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "WORLD_SIZE='abc' is not an integer" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
