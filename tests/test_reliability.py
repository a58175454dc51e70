"""Reliability and hostile inputs (issue #9): each case of docs/reliability.md is proven here."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_video_tree, run_saga, write_clip
from saga.cache.manifest import VideoRecord, seeded_hash
from saga.errors import DecodeError, SagaError
from saga.pipeline.decode import probe_path
from saga.pipeline.inputs import discover, parse_labels
from saga.taxonomy import Taxonomy

SYNTH = Taxonomy.load("synth")


# --- escapes -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.mp4", "real/../../x.mp4", "/tmp/x.mp4"])
def test_labels_paths_outside_the_videos_folder_are_refused(tmp_path: Path, path: str) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_text(f"path,generator\nreal/real_0.mp4,real\n{path},real\n")
    with pytest.raises(SagaError, match=r"labels.csv:3: .*inside the videos folder.*--allow-outside-paths"):
        discover(videos, None, SYNTH)


def test_outside_paths_need_the_flag(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    outside = write_clip(tmp_path / "elsewhere.mp4", n_frames=6, seed=3)
    (videos / "labels.csv").write_text(f"path,generator\nreal/real_0.mp4,real\n{outside},real\n")
    items = discover(videos, None, SYNTH, allow_outside=True)
    assert sorted(i.rel for i in items) == sorted(["real/real_0.mp4", str(outside)])
    assert {i.absolute(videos) for i in items} == {videos / "real/real_0.mp4", outside}


# --- hangs ---------------------------------------------------------------------------------------------------

def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(DecodeError, match="not a regular file \\(a FIFO\\)"):
        probe_path(fifo)
    assert time.monotonic() - start < 5


def test_extract_and_predict_survive_a_fifo_and_a_non_utf8_name(tmp_path: Path, tiny_args: list[str]) -> None:
    """A FIFO becomes a failed record (no hang); a non-UTF-8 file name is extracted like any other."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    os.mkfifo(videos / "real" / "x.mp4")
    bad_name = os.fsencode(videos / "real") + b"/caf\xe9.mp4"
    shutil.copyfile(videos / "real" / "real_0.mp4", bad_name)
    proc = run_saga("extract", "--videos", str(videos), "--out", str(tmp_path / "c"), *tiny_args,
                    "--format", "json", timeout=240)
    assert proc.returncode == 1, proc.stderr  # 1: some files failed, all others extracted
    summary = json.loads(proc.stdout)
    assert summary["ok"] == 4 and summary["failed"] == 1
    assert "FIFO" in dict(map(tuple, summary["failures"]))["real/x.mp4"]
    proc = run_saga("extract", "--videos", str(videos), "--out", str(tmp_path / "c"), *tiny_args, timeout=240)
    assert proc.returncode == 1 and "--retry-failed" in proc.stderr and "Traceback" not in proc.stderr


def test_split_hash_accepts_non_utf8_names() -> None:
    name = os.fsdecode(b"caf\xe9.mp4")  # what os.walk gives for a Latin-1 name
    assert seeded_hash(0, name) != seeded_hash(0, "cafe.mp4")


# --- one-line errors -----------------------------------------------------------------------------------------

def test_labels_with_a_bom_are_read(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_bytes(b"\xef\xbb\xbfpath,generator\nreal/real_0.mp4,real\n")
    assert [i.rel for i in discover(videos, None, SYNTH)] == ["real/real_0.mp4"]


def test_labels_that_are_not_utf8_are_one_line(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_bytes(b"path,generator\nreal/caf\xe9.mp4,real\n")
    with pytest.raises(SagaError, match=r"labels.csv: not UTF-8 text .*save it as UTF-8"):
        discover(videos, None, SYNTH)


def test_header_only_labels_blame_the_labels_file(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "labels.csv").write_text("path,generator\n")
    with pytest.raises(SagaError, match=r"labels.csv: no rows below the header"):
        discover(videos, None, SYNTH)


def test_permission_failures_are_retried_once_readable(tmp_path: Path) -> None:
    from saga.pipeline.extract import _fixed_since

    video = write_clip(tmp_path / "a.mp4", n_frames=5, seed=1)
    rec = VideoRecord(path="a.mp4", size=1, mtime_ns=1, status="failed", generator="real", labels={}, split="train",
                      error=f"{video}: permission denied (file is not readable)")
    assert _fixed_since(rec, video)
    assert not _fixed_since(rec, tmp_path / "gone.mp4")
    rec.error = "empty file (0 bytes)"
    assert not _fixed_since(rec, video)


def test_device_names_are_checked_in_one_line() -> None:
    import torch

    from saga.commands.common import cli_device

    assert cli_device("auto") in ("cpu", "cuda", "cuda:0")
    with pytest.raises(SagaError, match="--device banana"):
        cli_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(SagaError, match="CUDA is not available"):
            cli_device("cuda")


def test_predict_on_a_folder_without_videos_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_saga("predict", str(tmp_path / "run"), str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no videos found" in proc.stderr and "Traceback" not in proc.stderr


# --- cache integrity -----------------------------------------------------------------------------------------

def _cache(tmp_path: Path, parts: int = 2):
    from test_cache import fill, provenance

    from saga.cache.store import FeatureCache

    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    for seed in range(parts):
        fill(cache, 4 + seed, shard_rows=4, seed=seed)
    return FeatureCache.open(tmp_path / "c")


def _manifests(root: Path) -> list[Path]:
    from saga.cache.store import MANIFEST

    return sorted((root / "parts").glob("*/" + MANIFEST))


def test_a_clean_cache_has_no_structural_errors(tmp_path: Path) -> None:
    assert _cache(tmp_path).check_structure() == ([], [])


def test_verify_fails_on_a_manifest_truncated_mid_line(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    manifest = _manifests(cache.root)[0]
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2])
    errors, _ = type(cache).open(cache.root).check_structure()
    assert any("changed since it was sealed" in e for e in errors), errors
    proc = run_saga("cache", "verify", str(cache.root))
    assert proc.returncode == 1 and "truncated or edited" in proc.stderr


def test_verify_fails_on_a_deleted_part(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    shutil.rmtree(_manifests(cache.root)[1].parent)
    errors, _ = type(cache).open(cache.root).check_structure()
    assert any("is missing" in e for e in errors), errors


def test_verify_fails_on_an_edited_label_or_split(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    manifest = _manifests(cache.root)[0]
    manifest.write_text(manifest.read_text().replace('"split":"train"', '"split":"test"', 1))
    errors, _ = type(cache).open(cache.root).check_structure()
    assert any("changed since it was sealed" in e for e in errors), errors


@pytest.mark.parametrize("edit", [("dim", 16), ("sampling", {"frames": 9, "mode": "consecutive", "windows": 2})])
def test_edited_cache_attributes_are_named(tmp_path: Path, edit: tuple) -> None:
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path)
    meta = cache.root / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["saga"][edit[0]] = edit[1]
    meta.write_text(json.dumps(doc))
    cache = FeatureCache.open(cache.root)
    assert any("zarr.json was edited" in e for e in cache.check_structure()[0])
    with pytest.raises(SagaError, match="zarr.json was edited"):
        cache.read(cache.ok_records()[:1])


def test_reads_refuse_corrupt_bytes_naming_the_record(tmp_path: Path) -> None:
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path, parts=1)
    shard = sorted(cache.root.glob("parts/*/features/c/1/0/0"))[0]
    raw = bytearray(shard.read_bytes())
    raw[10:20] = bytes(x ^ 0xFF for x in raw[10:20])
    shard.write_bytes(bytes(raw))
    cache = FeatureCache.open(cache.root)
    with pytest.raises(SagaError, match=r"real/v2.mp4 .*do not match their checksum"):
        cache.read(cache.ok_records())
    with pytest.raises(SagaError, match="do not match their checksum"):
        for ref in cache.shards(cache.ok_records()):
            cache.read_shard(ref)


def test_nan_features_are_never_stored(tmp_path: Path) -> None:
    from test_cache import W, T, D, provenance, record

    from saga.cache.store import FeatureCache, PartWriter, next_part_name

    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    writer = PartWriter(cache, next_part_name(cache), capacity=2 * W, shard_rows=2)
    feats = np.ones((W, T, D), np.float16)
    writer.add(record(0), feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    feats[0, 0, 0] = np.nan
    writer.add(record(1), feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    recs = {r.path: r for r in FeatureCache.open(tmp_path / "c").records()}
    assert recs["real/v0.mp4"].ok and not recs["real/v1.mp4"].ok
    assert "NaN" in recs["real/v1.mp4"].error


def test_nan_rows_written_behind_our_back_are_a_data_error(tmp_path: Path) -> None:
    """A NaN row whose checksum matches (e.g. an old cache) is named as a data error, not a learning rate."""
    from saga.cache.manifest import feature_checksum
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path, parts=1)
    recs = cache.ok_records()[:1]
    data = cache.read(recs)
    data["features"][0, 0, 0, 0] = np.nan
    recs[0].checksum = feature_checksum(data["features"][0], data["mask"][0], data["timestamps"][0])
    with pytest.raises(SagaError, match="NaN/inf .*data error"):
        cache.check_rows(recs, data)


def test_export_refuses_a_damaged_cache_and_a_bad_import_leaves_nothing(tmp_path: Path) -> None:
    from saga.cache.export import export_h5, import_h5
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path)
    good = tmp_path / "good.h5"
    export_h5(cache, good)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SagaError):
        import_h5(bad, tmp_path / "imported")
    assert not (tmp_path / "imported" / "zarr.json").exists()
    assert len(import_h5(good, tmp_path / "imported").ok_records()) == len(cache.ok_records())
    shutil.rmtree(_manifests(cache.root)[1].parent)
    with pytest.raises(SagaError, match="refusing to export a damaged cache"):
        export_h5(FeatureCache.open(cache.root), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


# --- crash-consistent run folders ----------------------------------------------------------------------------

_SAVE = r"""
import json, os, signal, sys
import torch
from saga.model import ModelConfig, VideoTransformer
from saga.runs import RunFolder
import saga.runs as runs

run = RunFolder(sys.argv[1]); kill_at = int(sys.argv[2])
torch.manual_seed(0)
model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
opt = torch.optim.AdamW(model.parameters())
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
model(torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.bool)).logits.sum().backward(); opt.step()
run.save_state(model, opt, sched, {"epoch": 1, "step": 1})
calls = 0
real_replace = os.replace
def replace(a, b):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(a, b)
runs.os.replace = replace
import saga.fileio; saga.fileio.os.replace = replace
with torch.no_grad():
    for p in model.parameters(): p.add_(1.0)
run.save_state(model, opt, sched, {"epoch": 2, "step": 2})
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 6, 7])
def test_sigkill_at_any_point_of_a_checkpoint_leaves_a_consistent_state(tmp_path: Path, kill_at: int) -> None:
    """Real SIGKILL at each os.replace of save_state: resume finds epoch 1 or 2 whole, no temp files."""
    import subprocess
    import sys

    import torch

    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import RunFolder

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", _SAVE, str(run_dir), str(kill_at)], capture_output=True, text=True,
                          timeout=120)
    killed = proc.returncode == -9
    assert killed or proc.returncode == 0, proc.stderr
    model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = RunFolder(run_dir).load_state(model, opt, sched)  # never "resume files from different epochs"
    assert state["epoch"] in (1, 2) and (killed or state["epoch"] == 2)
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_hostile_weights_metadata_is_refused_before_allocation(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    import torch

    from saga.runs import read_model_config

    path = tmp_path / "model.safetensors"
    for bad, match in [({"depth": 10000}, "depth=10000 is out of range"),
                       ({"depth": 100, "d_model": 8192}, "asks for ~"),
                       ({"heads": "x"}, "out of range")]:
        cfg = {"in_dim": 8, "d_model": 16, "depth": 1, "heads": 2, "n_classes": 2, **bad}
        save_file({"w": torch.zeros(4)}, str(path), metadata={"config": json.dumps(cfg)})
        with pytest.raises(SagaError, match=match) as info:
            read_model_config(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("edit,match", [({"frames": -5}, "'frames' must be an integer"),
                                        ({"frames": "8"}, "'frames'"),
                                        ({"classes": ["a"]}, "'classes'"),
                                        ({"level": 3}, "'level'")])
def test_hostile_run_config_is_refused(tmp_path: Path, edit: dict, match: str) -> None:
    import torch

    from saga.model import ModelConfig, VideoTransformer
    from saga.runs import CONFIG, MODEL, load_model, save_weights

    run = tmp_path / "run"
    run.mkdir()
    save_weights(run / MODEL, VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2)),
                 epoch=1)
    (run / CONFIG).write_text(json.dumps({"classes": ["real", "fake"], "level": "BIN-L", "frames": 8, **edit}))
    with pytest.raises(SagaError, match=match):
        load_model(run)
    (run / CONFIG).write_text(json.dumps({"classes": ["real", "fake"], "level": "BIN-L", "frames": 8}))
    assert load_model(run)[1].frames == 8
    del torch


def test_a_changed_cache_does_not_reuse_a_finished_run(tmp_path: Path) -> None:
    from test_cache import fill

    from saga.runs import RunFolder, make_provenance

    cache = _cache(tmp_path, parts=1)
    config = {"level": "BIN-L", "train": {"epochs": 1}}
    run = RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))
    run.finish({"epochs": 1})
    assert RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0)).done  # same data: reused
    fill(cache, 6, shard_rows=4, seed=5)  # more videos extracted into the same cache
    cache = type(cache).open(cache.root)
    with pytest.raises(SagaError, match=r"trained on 4 records of this cache, which now holds 6"):
        RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))


# --- parsers under arbitrary input (hypothesis) --------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_CELL = st.one_of(st.text(max_size=12), st.sampled_from(["real", "syn-svd", "/etc/passwd", "..", "../x.mp4",
                                                         "a/../../b.mp4", "~", ".", "", '"', ","]))


@_FAST
@given(st.lists(st.tuples(_CELL, _CELL), max_size=6), st.sampled_from(["path,generator", "Path, Label", "x,y", ""]))
def test_labels_parser_never_escapes_and_never_crashes(rows: list, header: str) -> None:
    text = header + "\n" + "".join(f"{a},{b}\n" for a, b in rows)
    try:
        items = parse_labels(text, SYNTH)
    except SagaError as exc:
        assert "\n" not in str(exc)
        return
    for item in items:
        assert not os.path.isabs(item.rel) and item.rel != ".." and not item.rel.startswith("../")
        assert item.generator in SYNTH.generators or item.generator == "real"


@_FAST
@given(st.text(max_size=300))
def test_labels_parser_on_any_text(text: str) -> None:
    try:
        parse_labels(text, SYNTH)
    except SagaError:
        pass


_TOML_VALUE = st.one_of(st.integers(), st.text(max_size=8), st.lists(st.text(max_size=5), max_size=3),
                        st.booleans(), st.dictionaries(st.sampled_from(["task", "sd", "team", "inferred"]),
                                                       st.one_of(st.text(max_size=6), st.integers(),
                                                                 st.lists(st.text(max_size=5), max_size=2))))


@_FAST
@given(st.dictionaries(st.sampled_from(["name", "real", "generators", "description"]), _TOML_VALUE),
       st.dictionaries(st.text(min_size=1, max_size=6), _TOML_VALUE, max_size=3))
def test_taxonomy_parser_gives_one_line_errors(data: dict, gens: dict) -> None:
    data = {**data, "generators": data.get("generators", gens)}
    try:
        tax = Taxonomy.from_dict(data, origin="t.toml")
    except SagaError as exc:
        assert str(exc).startswith("t.toml")
        return
    assert all(isinstance(a, str) and len(a) > 0 for a in tax.real_aliases)


def test_taxonomy_real_must_be_a_list(tmp_path: Path) -> None:
    base = '[generators.g]\ntask = "T2V"\nsd = "none"\nteam = "x"\n'
    for real in ("5", '"real"'):
        path = tmp_path / "t.toml"
        path.write_text(f"real = {real}\n" + base)
        with pytest.raises(SagaError, match="'real' must be a list of names"):
            Taxonomy.load(path)
    path.write_bytes(b"name = \"caf\xe9\"\n" + base.encode())
    with pytest.raises(SagaError, match="not UTF-8"):
        Taxonomy.load(path)


@_FAST
@given(st.binary(max_size=400))
def test_manifest_reader_on_any_bytes(data: bytes) -> None:
    import tempfile

    from saga.cache.manifest import manifest_digest, read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        path.write_bytes(data)
        try:
            read_manifest(path)
        except SagaError as exc:
            assert "manifest.jsonl" in str(exc)
        lines, digest = manifest_digest(path)
        assert lines >= 0 and (digest or not data)
