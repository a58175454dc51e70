"""The cheap seal check of every reader of a cache (train, attribute, evaluate, probe, `saga cache info`),
and the checks of a record's `part`, `row` and `windows` on read (saga.cache.sealcheck, saga.cache.store)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_saga
from saga.errors import SagaError

SMALL = 'd_model = 32\ndepth = 2\nheads = 2\nepochs = 1\nmin_steps = 0\nbatch_size = 16\n'


def _cache(tmp_path: Path):
    """A two-part sealed cache that stage 1 can train on (real and fake videos in train)."""
    from test_train import build_cache

    return build_cache(tmp_path / "c", real=12, per_gen=2)


def _edit_first_label(root: Path) -> Path:
    """Change the first record's generator label in the first part's manifest (still a valid line)."""
    manifest = sorted(root.glob("parts/*/manifest.jsonl"))[0]
    lines = manifest.read_text().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["labels"]["BIN-L"] = "fake" if record["labels"]["BIN-L"] == "real" else "real"
    lines[0] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    manifest.write_text("".join(lines))
    return manifest


def test_train_refuses_a_cache_whose_sealed_manifest_was_edited(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    manifest = _edit_first_label(cache.root)
    (tmp_path / "small.toml").write_text(SMALL)
    out = tmp_path / "run"
    proc = run_saga("train", "--stage", "1", "--cache", str(cache.root), "--out", str(out),
                    "--config", str(tmp_path / "small.toml"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    part = manifest.parent.name
    assert f"{cache.root}: part {part}'s manifest.jsonl changed since it was sealed" in errors[0]
    assert f"saga cache verify {cache.root}" in errors[0] and "Traceback" not in proc.stderr
    assert not (out / "model.safetensors").exists()


def test_training_refuses_a_cache_that_lost_a_sealed_part(tmp_path: Path) -> None:
    from saga.train.stage1 import train_stage1
    from test_train import s1_config

    cache = _cache(tmp_path)
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    with pytest.raises(SagaError, match=r"part p000002-r000 is missing \(sealed with \d+ records\), so its videos "
                                        r"would be silently left out; run `saga cache verify "):
        train_stage1(cache.root, tmp_path / "run", s1_config(epochs=1))
    assert not (tmp_path / "run").exists()


def test_evaluate_and_attribute_share_the_check(tmp_path: Path) -> None:
    """`check_cache` (evaluate, tsig, t-SNE, a stage-1 base) and `make_provenance` (train, attribute) refuse."""
    from saga.runs import check_cache_seals, make_provenance
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path)
    make_provenance(cache, 0)  # a clean cache: no error
    _edit_first_label(cache.root)
    edited = FeatureCache.open(cache.root)
    for check in (lambda: make_provenance(edited, 0), lambda: check_cache_seals(edited)):
        with pytest.raises(SagaError, match="changed since it was sealed"):
            check()


def test_probe_refuses_an_edited_cache_before_fitting(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from saga.cli import app

    cache = _cache(tmp_path)
    _edit_first_label(cache.root)
    out = tmp_path / "probe"
    result = CliRunner().invoke(app, ["probe", "--cache", str(cache.root), "--out", str(out), "--level", "BIN-L",
                                      "--fraction", "1.0"])
    assert isinstance(result.exception, SagaError), result.output
    assert "changed since it was sealed" in str(result.exception) and not out.exists()


def test_an_unchanged_cache_is_checked_without_hashing_its_manifests(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests come from the record index's sidecar: a training run on a big cache hashes nothing."""
    import saga.cache.columns
    import saga.cache.sealcheck
    from saga.cache.sealcheck import check_seals
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path)
    FeatureCache.open(cache.root).records()  # the sidecars are written
    called: list[Path] = []

    def counting(path: Path) -> tuple[int, str]:
        called.append(path)
        return (0, "")

    monkeypatch.setattr(saga.cache.columns, "manifest_digest", counting)
    monkeypatch.setattr(saga.cache.sealcheck, "manifest_digest", counting)
    state = check_seals(FeatureCache.open(cache.root))
    assert called == [] and state.sealed == state.parts == 2


def test_a_sidecar_of_an_older_saga_is_parsed_once_and_then_knows_its_digest(tmp_path: Path) -> None:
    from saga.cache import columns
    from saga.cache.manifest import manifest_digest
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path)
    FeatureCache.open(cache.root).records()
    sidecar = sorted(cache.root.glob(f"parts/*/{columns.SIDECAR}"))[0]
    manifest = sidecar.with_name("manifest.jsonl")
    key = columns._manifest_key(manifest)
    older = columns.PartColumns.parse(manifest)
    older.manifest = None  # what an older saga wrote: no digest in its meta
    columns._write_sidecar(sidecar, key, older)
    assert columns._read_sidecar(sidecar, key) is None  # rebuilt, not used without a digest
    FeatureCache.open(cache.root).records()
    assert columns._read_sidecar(sidecar, key).manifest == manifest_digest(manifest)


def test_cache_info_shows_the_seal_state(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from saga.cli import app

    cache = _cache(tmp_path)
    runner = CliRunner()
    clean = runner.invoke(app, ["cache", "info", str(cache.root)])
    assert clean.exit_code == 0 and "seals: 2 of 2 part(s) sealed and unchanged" in clean.output, clean.output
    manifest = _edit_first_label(cache.root)
    part = manifest.parent.name
    edited = runner.invoke(app, ["cache", "info", str(cache.root)])
    assert edited.exit_code == 0, edited.output
    assert f"seals: 1 of 2 part(s) sealed and unchanged; 1 CHANGED since sealing ({part})" in edited.output
    assert f"warning: {cache.root}: part {part}'s manifest.jsonl changed since it was sealed" in edited.output
    data = json.loads(runner.invoke(app, ["cache", "info", str(cache.root), "--format", "json"]).stdout)
    assert data["seal"]["changed"] == [part] and data["seal"]["sealed"] == 1


def test_cache_info_counts_unsealed_and_missing_parts(tmp_path: Path) -> None:
    from saga.cache.sealcheck import seal_state
    from saga.cache.store import SEAL, FeatureCache

    cache = _cache(tmp_path)
    (cache.root / "parts.jsonl").write_text("".join(
        line + "\n" for line in (cache.root / "parts.jsonl").read_text().splitlines() if "p000001-r000" not in line))
    (cache.root / "parts" / "p000001-r000" / SEAL).unlink()  # a part an extraction killed before sealing
    state = seal_state(FeatureCache.open(cache.root))
    assert state.unsealed == ("p000001-r000",) and state.sealed == 1
    from typer.testing import CliRunner

    from saga.cli import app

    shown = " ".join(CliRunner().invoke(app, ["cache", "info", str(cache.root)]).output.split())
    assert "seals: 1 of 2 part(s) sealed and unchanged; 1 never sealed (p000001-r000)" in shown
    assert (f"warning: {cache.root}: 1 of 2 part(s) are not sealed (made by an older saga, or an extraction killed or "
            f"still running), so edits to them cannot be detected; check and seal them with `saga cache verify --seal "
            f"{cache.root}`") in shown
    shutil.rmtree(cache.root / "parts" / "p000002-r000")
    state = seal_state(FeatureCache.open(cache.root))
    assert state.missing == ("p000002-r000",) and "1 sealed but MISSING (p000002-r000)" in state.text()


def test_an_interrupted_prune_warns_instead_of_refusing(tmp_path: Path) -> None:
    from saga.cache import prune, seal
    from saga.cache.manifest import manifest_digest
    from saga.cache.sealcheck import check_seals, seal_warnings
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path)
    part = cache.root / "parts" / "p000001-r000"
    lines = (part / "manifest.jsonl").read_text().splitlines(keepends=True)
    (part / prune.PRUNED).write_text("".join(lines[1:]))  # step 1 of a prune
    lines_n, digest = manifest_digest(part / prune.PRUNED)
    seal.log_part(cache.root, {"part": part.name, "lines": lines_n, "digest": digest, "rows": 99})  # step 2
    opened = FeatureCache.open(cache.root)
    state = check_seals(opened)  # no error
    assert state.pruning == (part.name,)
    assert "a `saga cache prune` was interrupted" in seal_warnings(opened, state)[0]


# --- a record's part, row and windows are checked on read -------------------------------------------------------

def _unsealed_with_first_line(tmp_path: Path, edit) -> Path:
    """A one-part cache (W = 2, 4 videos), unsealed as a killed extraction leaves it (no seal can catch an
    edit), its first record's line changed by `edit`; the manifest's path."""
    from test_cache import fill, provenance

    from saga.cache.store import FeatureCache

    cache = FeatureCache.create_or_open(tmp_path / "c", provenance())
    fill(cache, 4, shard_rows=4)
    (cache.root / "parts.jsonl").unlink()
    part = cache.root / "parts" / "p000001-r000"
    (part / "seal.json").unlink()
    manifest = part / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    edit(records)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


def _no_sums(record: dict) -> dict:
    """A record without checksums (an older cache's): nothing else would notice rows read from elsewhere."""
    record.pop("checksum")
    record.pop("crc32c")
    return record


@pytest.mark.parametrize("edit, says", [
    (lambda rs: rs[0].update(windows=3), "says row 0 and 3 window(s), but every video of this cache holds 2"),
    (lambda rs: _no_sums(rs[0]).update(windows=3), "says row 0 and 3 window(s)"),
    (lambda rs: _no_sums(rs[0]).update(row=-1), "says row -1 and 2 window(s)"),
    (lambda rs: _no_sums(rs[0]).update(row=3), "says row 3 and 2 window(s), but every video of this cache holds 2 "
                                               "window(s) (sampling.windows) from a row >= 0 that is a multiple of 2"),
    (lambda rs: _no_sums(rs[1]).update(row=0), "the record of real/v1.mp4 says row 0, but the record of real/v0.mp4 "
                                               "holds that row"),
])
def test_a_record_whose_windows_or_row_the_arrays_do_not_hold_is_refused(tmp_path: Path, edit, says: str) -> None:
    """Reading took the cache's W rows from `row` whatever the line said: other videos' frames, in silence."""
    from saga.cache.store import FeatureCache

    manifest = _unsealed_with_first_line(tmp_path, edit)
    with pytest.raises(SagaError) as caught:
        cache = FeatureCache.open(manifest.parents[2])
        cache.read(cache.ok_records())
    message = str(caught.value)
    assert message.startswith(f"{manifest}: the record of ") and says in message and "\n" not in message
    assert "restore the file, or delete the part, rerun `saga extract`" in message


def test_a_record_past_the_end_of_its_part_is_refused_not_read_as_zeros(tmp_path: Path) -> None:
    from saga.cache.store import FeatureCache

    manifest = _unsealed_with_first_line(tmp_path, lambda rs: _no_sums(rs[0]).update(row=100))
    cache = FeatureCache.open(manifest.parents[2])
    for read in (lambda: cache.read(cache.ok_records()), lambda: cache.shards(cache.ok_records())):
        with pytest.raises(SagaError, match=rf"^{manifest}: the record of real/v0.mp4 says row 100, but part "
                                            r"p000001-r000 holds 8 rows and every video 2 of them; "):
            read()


def test_a_record_naming_another_part_or_without_a_row_is_a_corrupt_line(tmp_path: Path) -> None:
    from saga.cache.store import FeatureCache

    manifest = _unsealed_with_first_line(tmp_path, lambda rs: rs[0].update(part="p000009-r000"))
    with pytest.raises(SagaError, match=rf"^{manifest}:1: corrupt manifest line \(an ok record of part p000001-r000 "
                                        r'says part "p000009-r000"\)'):
        FeatureCache.open(manifest.parents[2]).records()
    shutil.rmtree(manifest.parents[2])
    manifest = _unsealed_with_first_line(tmp_path, lambda rs: rs[0].pop("row"))
    with pytest.raises(SagaError, match=rf"^{manifest}:1: corrupt manifest line \(an ok record without 'row'\)"):
        FeatureCache.open(manifest.parents[2]).records()


def test_verify_reports_a_misplaced_record_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from saga.cli import app

    manifest = _unsealed_with_first_line(tmp_path, lambda rs: rs[0].update(windows=1))
    result = CliRunner().invoke(app, ["cache", "verify", str(manifest.parents[2])])
    assert result.exit_code == 1 and f"{manifest}: the record of real/v0.mp4 says row 0 and 1 window(s)" in (
        " ".join(result.output.split())), result.output


# --- `saga cache import` checks every field of the pruned videos' split lines ----------------------------------

@pytest.mark.parametrize("line", [
    {"path": "real/b.mp4", "split": "test", "size": "5", "mtime_ns": 6},
    {"path": "real/b.mp4", "split": "test", "size": 10 ** 30, "mtime_ns": 6},
    {"path": "real/b.mp4", "split": "test", "size": -2, "mtime_ns": 6},
    {"path": "real/b.mp4", "split": "test", "size": 5, "mtime_ns": True},
    {"path": "real/b.mp4", "split": "test", "size": 5, "mtime_ns": 6.5},
])
def test_import_refuses_a_pruned_split_line_the_next_prune_would_refuse(tmp_path: Path, line: dict) -> None:
    """Only path and split were checked: a line with a size or mtime no file has (its digest recomputed, as a
    tool rewriting the file would) was imported, and every later `saga extract` / `cache prune` of the new cache
    then failed on its splits-pruned.jsonl."""
    import h5py
    import numpy as np
    from test_cache_fixes import pruned_export_cache

    from saga.cache.export import digest, export_h5, import_h5

    export_h5(pruned_export_cache(tmp_path), tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "a") as h5:
        del h5["pruned_splits"]
        lines = [json.dumps(line)]
        h5.create_dataset("pruned_splits", data=np.array(lines, dtype=object), dtype=h5py.string_dtype())
        h5.attrs["digest"] = digest(h5.attrs["saga"], list(h5["manifest"].asstr()[:]),
                                    list(h5["splits"].asstr()[:]), lines)
    with pytest.raises(SagaError, match=r"c\.h5: damaged saga cache export \(ValueError: pruned split line "):
        import_h5(tmp_path / "c.h5", tmp_path / "imp")
    assert not (tmp_path / "imp").exists()


@pytest.mark.parametrize("text", ["[1]\n", "\"real/x.mp4\"\n", "7\n"])
def test_a_pruned_splits_line_that_is_not_an_object_is_one_line(tmp_path: Path, text: str) -> None:
    """It was an AttributeError traceback (`.get` of a list) in every `saga extract`, prune and export."""
    from saga.cache.manifest import PRUNED_PLAN, read_pruned_plan

    path = tmp_path / PRUNED_PLAN
    path.write_text(text)
    with pytest.raises(SagaError, match=rf"{PRUNED_PLAN}:1: corrupt line .*; restore it, or delete the line"):
        read_pruned_plan(path)
