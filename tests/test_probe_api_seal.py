"""`run_probe`, the API behind `saga probe`, checks the cache's seals itself: an API caller is refused an edited or
incomplete sealed cache as the CLI is (the check was the CLI's, which opened the cache a second time for it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.explain.probe_runs import run_probe
from test_cache_seal_checks import _edit_first_label
from test_train import build_cache


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-part sealed cache (as test_cache_seal_checks builds it), copied by each test before it edits it."""
    return build_cache(tmp_path_factory.mktemp("sealed") / "c", real=12, per_gen=2).root


def _copy(sealed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(sealed, copy)
    return copy


def test_the_api_refuses_an_edited_sealed_manifest(sealed: Path, tmp_path: Path) -> None:
    copy = _copy(sealed, tmp_path)
    manifest = _edit_first_label(copy)
    out = tmp_path / "probe"
    with pytest.raises(SagaError) as caught:
        run_probe(copy, out, level="BIN-L", fraction=1.0)
    said = str(caught.value)
    assert f"{FeatureCache.open(copy).root}: part {manifest.parent.name}'s manifest.jsonl changed since it was sealed" \
        in said and "\n" not in said
    assert not out.exists()


def test_the_api_refuses_a_cache_that_lost_a_sealed_part(sealed: Path, tmp_path: Path) -> None:
    copy = _copy(sealed, tmp_path)
    part = sorted((copy / "parts").iterdir())[-1]
    shutil.rmtree(part)
    out = tmp_path / "probe"
    with pytest.raises(SagaError, match=rf"part {part.name} is missing \(sealed with \d+ records\)"):
        run_probe(copy, out, level="BIN-L", fraction=1.0)
    assert not out.exists()
