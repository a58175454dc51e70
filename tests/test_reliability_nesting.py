"""Files someone else may hand over, nested deeper than Python's stack (`[[[[...]]]]`): each is one line naming
the file, never a RecursionError traceback (json and tomllib both recurse)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from saga.errors import SagaError

DEEP = "[" * 100_000 + "]" * 100_000


def _cache(tmp_path: Path):
    from test_reliability_cache import make_cache

    return make_cache(tmp_path, parts=1)


@pytest.mark.parametrize("name", ["manifest.jsonl", "splits.jsonl", "parts.jsonl", "seal.json"])
def test_a_cache_file_nested_too_deeply_is_one_line(tmp_path: Path, name: str) -> None:
    from saga.cache.store import FeatureCache

    cache = _cache(tmp_path)
    part = cache.root / "parts" / cache.part_names()[0]
    target = {"manifest.jsonl": part / name, "seal.json": part / name}.get(name, cache.root / name)
    if name == "seal.json":
        target.write_text(DEEP)
    else:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(DEEP + "\n")
    try:  # seal.json: a damaged seal is the parts.jsonl line's business, so nothing may be said at all
        opened = FeatureCache.open(cache.root)
        errors, _ = opened.check_structure()
        opened.records()
    except SagaError as exc:
        errors = [str(exc)]
    assert all("\n" not in e for e in errors)
    if name != "seal.json":
        assert any(str(target) in e for e in errors), errors


def test_an_export_whose_manifest_line_is_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    from saga.cache.export import digest, import_h5
    from test_cache_export_fixes import exported

    path = exported(tmp_path)
    with h5py.File(path, "a") as h5:  # the digest recomputed, as anyone can (it is not a MAC)
        manifest = list(h5["manifest"].asstr()[:]) + [DEEP]
        del h5["manifest"]
        h5.create_dataset("manifest", data=np.array(manifest, dtype=object), dtype=h5py.string_dtype())
        h5.attrs["digest"] = digest(h5.attrs["saga"], manifest, list(h5["splits"].asstr()[:]))
    with pytest.raises(SagaError, match="nested too deeply") as err:
        import_h5(path, tmp_path / "imp")
    assert str(path) in str(err.value) and not (tmp_path / "imp").exists()


def test_a_taxonomy_or_config_toml_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    from saga.commands.common import load_options
    from saga.taxonomy import Taxonomy

    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SagaError, match="nested too deeply") as err:
        Taxonomy.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(SagaError, match="nested too deeply"):
        load_options(path)
    path.write_bytes(b'lr = "\xff"\n')  # not UTF-8: a UnicodeDecodeError traceback too
    with pytest.raises(SagaError, match=str(path)):
        load_options(path)


def test_a_sealed_openworld_header_or_probe_nested_too_deeply_is_not_a_traceback(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from saga.explain.probe import Probe
    from saga.openworld.store import SEAL, sealed_values

    header = json.dumps({"__metadata__": {SEAL: DEEP}}).encode()
    assert sealed_values(len(header).to_bytes(8, "little") + header) is None
    path = tmp_path / "probe.safetensors"
    save_file({"coef": np.zeros((2, 2))}, str(path), metadata={"classes": DEEP, "spec": "{}", "C": "1"})
    with pytest.raises(SagaError, match="not a saga probe file"):
        Probe.load(path)


def test_the_shared_toml_and_stamp_readers_turn_deep_nesting_into_a_decode_error(tmp_path: Path) -> None:
    """`fileio.loads_toml` is the one place a TOML RecursionError becomes a decode error (each reader caught it by
    hand); a synth folder's stamp nested too deeply is unreadable, so nothing in the folder is trusted."""
    import tomllib

    from saga.benchmark.synth_folder import read_stamp
    from saga.fileio import loads_toml

    with pytest.raises(tomllib.TOMLDecodeError, match="nested too deeply"):
        loads_toml("x = " + "[" * 5_000 + "]" * 5_000)
    assert loads_toml("x = [[1]]") == {"x": [[1]]}
    (tmp_path / "stamp.json").write_text(DEEP)
    assert read_stamp(tmp_path / "stamp.json") is None
