"""A class of the run's level with no val video (one that failed to decode was its only one) is named in one
warning at training start: the checkpoint is chosen, and the val metrics averaged, without it."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from saga.cache.manifest import OK, VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter
from saga.runs import DONE
from saga.taxonomy import Taxonomy
from saga.train.stage1 import train_stage1
from test_train import D, T, s1_config, sequence

GENS = ("syn-svd", "syn-pika", "syn-sora")


def tiny_cache(root: Path, real_in_val: bool) -> FeatureCache:
    """12 real and 4 videos of each of three generators; without `real_in_val` the real val videos are in test."""
    tax = Taxonomy.load("synth")
    prov = cache_provenance(EncoderSpec.simulated(D, T, name="test-encoder"), tax,
                            fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    cache = FeatureCache.create_or_open(root, prov)
    rng, bases = np.random.default_rng(0), np.random.default_rng(123).normal(size=(9, D)).astype(np.float32)
    items = [("real", -1)] * 12 + [(g, k) for k, g in enumerate(GENS) for _ in range(4)]
    writer = PartWriter(cache, "p000001-r000", capacity=len(items), shard_rows=8)
    for i, (gen, cls) in enumerate(items):
        split = ("train", "train", "val", "test")[i % 4]
        if gen == "real" and split == "val" and not real_in_val:
            split = "test"
        rec = VideoRecord(f"{gen}/{i:04d}.mp4", 1000 + i, i, OK, gen, tax.labels(gen), split)
        writer.add(rec, sequence(cls, rng, bases, T)[None], np.ones((1, T), bool),
                   np.arange(T, dtype=np.float32)[None] / 8)
    writer.close()
    return FeatureCache.open(root)


def coverage_warnings(tmp_path: Path, real_in_val: bool) -> tuple[list[str], dict]:
    torch.set_num_threads(1)
    cache = tiny_cache(tmp_path / "c", real_in_val)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_stage1(cache.root, tmp_path / "run", s1_config(epochs=1, batch_size=8))
    done = json.loads((tmp_path / "run" / DONE).read_text())
    return [str(w.message) for w in caught if "no val video" in str(w.message)], done


def test_a_class_without_val_videos_is_named_once(tmp_path: Path) -> None:
    found, done = coverage_warnings(tmp_path, real_in_val=False)
    assert done["val_missing"] == ["real"]
    assert len(found) == 1, found
    assert "BIN-L class real:" in found[0] and "--split-seed" in found[0] and "\n" not in found[0]


def test_every_class_in_val_warns_nothing(tmp_path: Path) -> None:
    found, done = coverage_warnings(tmp_path, real_in_val=True)
    assert found == [] and "val_missing" not in done


def test_a_class_whose_val_videos_a_fold_withheld_is_not_warned_about(tmp_path: Path) -> None:
    """A leave-one-generator-out fold (or `openset holdout`) withholds its generator's val videos by design: the
    warning said "re-extract with another --split-seed" for it, in every fold."""
    from saga.train.loop import make_validator
    from saga.train.withhold import Withheld

    cache = tiny_cache(tmp_path / "c", real_in_val=True)
    val = cache.ok_records("val")
    withheld = Withheld("GEN-L", ("syn-pika",), ())
    classes = ["real", *GENS]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate = make_validator(cache, withheld.apply(val), "GEN-L", classes, T, 8, torch.device("cpu"),
                                  unwithheld=val)
        bare = make_validator(cache, withheld.apply(val), "GEN-L", classes, T, 8, torch.device("cpu"))
    said = [str(w.message) for w in caught if "no val video" in str(w.message)]
    assert validate.missing == [] and bare.missing == ["syn-pika"]  # without the whole split it cannot tell
    assert len(said) == 1 and "class syn-pika:" in said[0]
