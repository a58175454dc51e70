"""`cache_summary`: the counts `saga cache info` prints, per split and per class at every level."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saga.cache.manifest import FAILED, OK, VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter
from saga.cache.summary import cache_summary
from saga.taxonomy import Taxonomy

D, T = 4, 3


def test_summary_counts_splits_classes_and_failures(tmp_path: Path) -> None:
    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(tmp_path / "c", cache_provenance(EncoderSpec.simulated(D, T), tax))
    gen = next(iter(tax.generators))
    rows = [("real", "train"), ("real", "test"), (gen, "train"), (gen, "train"), (gen, "val")]
    writer = PartWriter(cache, "p000001-r000", capacity=len(rows), shard_rows=2)
    for i, (g, split) in enumerate(rows):
        rec = VideoRecord(f"{g}/{i}.mp4", 10 + i, i, OK, g, tax.labels(g), split)
        writer.add(rec, np.zeros((1, T, D), np.float16), np.ones((1, T), bool), np.zeros((1, T), np.float32))
    writer.add_failure(VideoRecord("bad.mp4", 1, 1, FAILED, gen, tax.labels(gen), "test", error="undecodable"))
    writer.close()
    s = cache_summary(FeatureCache.open(tmp_path / "c"))
    assert (s["total"], s["ok"], s["failed"]) == (6, 5, 1)
    assert s["splits"] == {"train": 3, "test": 1, "val": 1}
    assert s["classes"]["BIN-L"] == {"real": {"train": 1, "test": 1}, "fake": {"train": 2, "val": 1}}
    assert s["classes"]["GEN-L"][tax.labels(gen)["GEN-L"]] == {"train": 2, "val": 1}
    assert [v["error"] for v in s["videos"] if v["status"] != "ok"] == ["undecodable"]
    assert s["provenance"]["encoder"] == "simulated" and s["cache_id"] == FeatureCache.open(tmp_path / "c").cache_id


def _cache_of(tmp_path: Path, generators: list[str]) -> FeatureCache:
    tax = Taxonomy.load("genvideo")
    cache = FeatureCache.create_or_open(tmp_path / "c", cache_provenance(EncoderSpec.simulated(D, T), tax))
    writer = PartWriter(cache, "p000001-r000", capacity=len(generators), shard_rows=2)
    for i, g in enumerate(generators):
        rec = VideoRecord(f"{g}/{i}.mp4", 10 + i, i, OK, g, tax.labels(g), "train")
        writer.add(rec, np.zeros((1, T, D), np.float16), np.ones((1, T), bool), np.zeros((1, T), np.float32))
    writer.close()
    return FeatureCache.open(tmp_path / "c")


def test_classes_come_in_the_taxonomys_order_at_every_level(tmp_path: Path) -> None:
    """They came in the order of the records (GEN-L real between I2VGen-XL and Latte, BIN-L fake before real)."""
    cache = _cache_of(tmp_path, ["Sora", "I2VGen-XL", "real", "Latte", "ZeroScope", "HotShot"])
    s = cache_summary(cache)
    for level in ("BIN-L", "TASK-L", "SD-L", "TEAM-L", "GEN-L"):
        assert list(s["classes"][level]) == [c for c in cache.taxonomy.classes(level) if c in s["classes"][level]]
    assert list(s["classes"]["GEN-L"]) == ["real", "ZeroScope", "I2VGen-XL", "Latte", "HotShot", "Sora"]
    assert list(s["classes"]["BIN-L"]) == ["real", "fake"]


def test_cache_info_lists_the_taxonomys_generators_without_videos(tmp_path: Path) -> None:
    from conftest import run_saga

    cache = _cache_of(tmp_path, ["real", *[g for g in Taxonomy.load("genvideo").generators if g not in
                                           ("Sora", "HotShot")]])
    assert cache_summary(cache)["without_videos"] == ["HotShot", "Sora"]
    proc = run_saga("cache", "info", str(cache.root))
    assert proc.returncode == 0, proc.stderr
    assert "no videos of 2 of the taxonomy's 20 GEN-L classes (none extracted, or all failed): HotShot, Sora" in \
        " ".join(proc.stdout.split())
