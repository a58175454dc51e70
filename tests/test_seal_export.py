"""`saga cache export` runs the seal check of every reader (saga.cache.sealcheck.check_seals): a cache whose
sealed manifest was edited, or that lost a sealed part, is refused in the readers' one line instead of being
exported (and sealed again, edit included, by the import on another machine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_saga
from saga.cache.manifest import append_split_plan
from saga.cache.store import FeatureCache
from saga.errors import SagaError


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    """A two-part sealed cache (copied by each test before it is damaged)."""
    from test_train import build_cache

    return build_cache(tmp_path_factory.mktemp("sealed") / "c", real=4, per_gen=1)


def _copy(cache: FeatureCache, tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(cache.root, root)
    return root


def _relabel_first(root: Path) -> Path:
    """Swap the first record's BIN-L label for the other one of the same length (a valid line still)."""
    manifest = sorted(root.glob("parts/*/manifest.jsonl"))[0]
    text = manifest.read_text()
    first, rest = text.split("\n", 1)
    swapped = first.replace('"BIN-L":"real"', '"BIN-L":"fake"')
    assert swapped != first
    manifest.write_text(swapped + "\n" + rest)
    return manifest


def _refused(root: Path, h5: Path) -> str:
    proc = run_saga("cache", "export", str(root), "--h5", str(h5))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not h5.exists()
    return " ".join(proc.stderr.split())


def test_export_refuses_a_cache_whose_sealed_manifest_was_edited(sealed: FeatureCache, tmp_path: Path) -> None:
    root = _copy(sealed, tmp_path)
    part = _relabel_first(root).parent.name
    said = _refused(root, tmp_path / "x.h5")
    assert (f"refusing to export a damaged cache: {root}: part {part}'s manifest.jsonl changed since it was "
            "sealed") in said
    assert f"run `saga cache verify {root}`, then restore the file or re-extract into a new cache" in said


def test_export_refuses_a_cache_that_lost_a_sealed_part(sealed: FeatureCache, tmp_path: Path) -> None:
    root = _copy(sealed, tmp_path)
    part = sorted(p.name for p in (root / "parts").iterdir())[-1]
    shutil.rmtree(root / "parts" / part)
    said = _refused(root, tmp_path / "x.h5")
    assert f"{root}: part {part} is missing (sealed with " in said
    assert f"run `saga cache verify {root}`" in said


def test_export_of_a_whole_cache_still_works(sealed: FeatureCache, tmp_path: Path) -> None:
    from saga.cache.export import export_h5

    assert export_h5(FeatureCache.open(sealed.root), tmp_path / "x.h5") == len(sealed.ok_records())


def test_an_older_sagas_export_of_a_resplit_cache_is_refused_at_import(sealed: FeatureCache, tmp_path: Path) -> None:
    """An export written without the check (an older saga) from a cache whose split was edited: the split plan
    it carries disagrees, so the import refuses it. (An edited label alone cannot be told at import: the export
    holds no seal of the original parts.)"""
    from saga.cache.export import _write, import_h5

    root = _copy(sealed, tmp_path)
    append_split_plan(root / "splits.jsonl", {r.path: (r.generator, r.split) for r in sealed.records()})
    manifest = sorted(root.glob("parts/*/manifest.jsonl"))[0]
    lines = manifest.read_text().splitlines()
    record = json.loads(lines[0])
    record["split"] = "test" if record["split"] != "test" else "train"
    manifest.write_text("\n".join([json.dumps(record, sort_keys=True, separators=(",", ":")), *lines[1:]]) + "\n")
    _write(FeatureCache.open(root), tmp_path / "old.h5")  # no seal check: what an older saga wrote
    with pytest.raises(SagaError, match="differs from the split plan"):
        import_h5(tmp_path / "old.h5", tmp_path / "imported")
    assert not (tmp_path / "imported").exists()
