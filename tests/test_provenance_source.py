"""Which saga code made a cache, a run or an ablation cell: `versions()` records `saga_source` (a digest of the
package's files) and, from a git checkout, `saga_commit`.

saga's version number stayed 0.1.0 across hundreds of commits, so two runs' provenance could not tell their code
apart, and `saga ablate` reused a finished cell from an older saga (runs are reused by their settings) without a
word: its table could mix cells from different code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import saga.ablate as ablate
from saga.explain.ablation_table import to_markdown
from saga.provenance import PACKAGE_DIR, source_digest, versions
from saga.train.attribute import AttributeConfig


def test_versions_name_the_code_and_its_digest_follows_every_package_file(tmp_path: Path) -> None:
    assert versions()["saga_source"] == source_digest() and len(source_digest()) == 16
    copy = tmp_path / "saga"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    digest = source_digest.__wrapped__
    assert digest(copy) == source_digest()  # where it lies does not matter
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    assert digest(copy) == source_digest()  # bytecode is no code change
    taxonomy = next((copy / "data").glob("*.toml"))
    taxonomy.write_text(taxonomy.read_text() + "\n")
    assert digest(copy) != source_digest()  # a data file (a taxonomy) changes what saga computes too


def _grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: dict[str, str | None]) -> dict:
    """A one-seed grid whose cells are stubbed: each run folder holds the provenance `sources` gives it."""
    def cell(_cache: Path, run: Path, *args: object, **kwargs: object) -> dict:
        run.mkdir(parents=True, exist_ok=True)
        versions = {} if sources.get(run.name) is None else {"saga_source": sources[run.name]}
        (run / "provenance.json").write_text(json.dumps({"versions": versions}))
        return {"accuracy": 0.5, "macro_accuracy": 0.5, "per_class": {"a": 0.5}, "n": 4, "per_class_n": {"a": 4},
                "probe": {"skipped": "stub"}}

    monkeypatch.setattr(ablate, "check_before_cells", lambda _cache, stage1, base, _given: (base, _Stage1()))
    monkeypatch.setattr(ablate, "_current_cache", lambda _cache: None)
    monkeypatch.setattr(ablate, "_kept_on_changed_cache", lambda _run, _current: False)
    monkeypatch.setattr(ablate, "_run_cell", cell)
    return ablate.run_ablation(tmp_path / "cache", tmp_path / "stage1", tmp_path / "grid", AttributeConfig(),
                               seeds=(0,), ceiling=False)


class _Stage1:
    path, origin = "stage1", {}


def test_ablate_names_the_cells_other_code_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = source_digest()
    sources = {"1-stage_labelled-only_ce_seed0": now,
               "1-stage_ce_seed0": now, "1-stage_ce+semihnm_seed0": now, "1-stage_ce+hnm_seed0": "0123456789abcdef",
               "2-stage_ce_seed0": None, "2-stage_ce+semihnm_seed0": now, "2-stage_ce+hnm_seed0": now}
    summary = _grid(tmp_path, monkeypatch, sources)
    assert summary["saga_source"] == now
    assert sorted(summary["cells_by_other_code"]) == ["1-stage_ce+hnm_seed0", "2-stage_ce_seed0"]
    text = (tmp_path / "grid" / "ablation.md").read_text()
    assert "2 run(s) were reused from folders that other saga code trained" in text
    assert "(1-stage_ce+hnm_seed0, 2-stage_ce_seed0): delete those folders and rerun" in text


def test_a_grid_from_this_code_says_nothing_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["1-stage_labelled-only_ce_seed0"] + [
        f"{s}_{loss}_seed0" for s in ("1-stage", "2-stage") for loss in ("ce", "ce+semihnm", "ce+hnm")]
    summary = _grid(tmp_path, monkeypatch, dict.fromkeys(names, source_digest()))
    assert summary["cells_by_other_code"] == []
    assert "other saga code" not in to_markdown(summary)
