"""Phase 2 training on a tiny synthetic cache: data readers, stage 1, stage 2, run folders, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saga.cache.manifest import OK, VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.model.inference import record_targets
from saga.taxonomy import Taxonomy
from saga.train.attribute import AttributeConfig, load_base, prepare_model, train_attribution
from saga.train.data import InMemoryFeatures, StreamingFeatures, View, balanced_epoch
from saga.cache.fraction import labelled_subset, resolve_labelled, settings
from saga.runs import load_model
from saga.train.stage1 import Stage1Config, train_stage1
from saga.progress import ProgressEvent

T, D = 8, 16
TINY = dict(d_model=32, depth=2, heads=2, dropout=0.1, eval_batch_size=64)




def sequence(cls: int, rng: np.random.Generator, bases: np.ndarray, n_real: int) -> np.ndarray:
    """Class-dependent (T, D) features: classes k and k + 7 share a base and differ only temporally."""
    base = bases[8] if cls < 0 else bases[cls % 7]
    kind = 3 if cls < 0 else cls // 7
    t = np.arange(T, dtype=np.float32)
    wave = {0: np.zeros(T), 1: (-1.0) ** t, 2: t / T - 0.5, 3: 0.3 * np.sin(t / 2)}[kind]
    x = base[None, :] + 1.5 * wave[:, None] * bases[7][None, :] + 0.3 * rng.normal(size=(T, D))
    x[n_real:] = x[n_real - 1]  # short video: the last frame repeated (masked off)
    return x.astype(np.float16)


def build_cache(root: Path, seed: int = 0, real: int = 40, per_gen: int = 10) -> FeatureCache:
    tax = Taxonomy.load("synth")
    prov = cache_provenance(EncoderSpec.simulated(D, T, name="test-encoder"), tax,
                            fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    cache = FeatureCache.create_or_open(root, prov)
    rng = np.random.default_rng(seed)
    bases = np.random.default_rng(123).normal(size=(9, D)).astype(np.float32)
    items = [("real", -1)] * real + [(g, k) for k, g in enumerate(tax.generators) for _ in range(per_gen)]
    rows = []
    for i, (gen, cls) in enumerate(items):
        n_real = [3, 5][i % 2] if i % 6 == 0 else T
        split = ("train", "train", "train", "val", "test")[(i // 2) % 5]
        rec = VideoRecord(f"{gen}/{i:04d}.mp4", 1000 + i, i, OK, gen, tax.labels(gen), split)
        mask = (np.arange(T) < n_real)[None]
        rows.append((rec, sequence(cls, rng, bases, n_real)[None], mask, np.arange(T, dtype=np.float32)[None] / 8))
    half = len(rows) // 2
    for name, chunk in (("p000001-r000", rows[:half]), ("p000002-r000", rows[half:])):
        writer = PartWriter(cache, name, capacity=len(chunk), shard_rows=8)
        for row in chunk:
            writer.add(*row)
        writer.close()
    return FeatureCache.open(root)


def add_videos(root: Path, n: int, split: str = "train", gen: str = "syn-svd") -> FeatureCache:
    """`n` more videos of `gen` in `split`, as a new part (as a later `saga extract` adds them): same cache id."""
    cache = FeatureCache.open(root)
    rng, bases = np.random.default_rng(7), np.random.default_rng(123).normal(size=(9, D)).astype(np.float32)
    tax = cache.taxonomy
    writer = PartWriter(cache, next_part_name(cache), capacity=n, shard_rows=8)
    for i in range(n):
        rec = VideoRecord(f"{gen}/added-{split}-{i:03d}.mp4", 5000 + i, 9000 + i, OK, gen, tax.labels(gen), split)
        writer.add(rec, sequence(list(tax.generators).index(gen), rng, bases, T)[None], np.ones((1, T), bool),
                   np.arange(T, dtype=np.float32)[None] / 8)
    writer.close()
    return FeatureCache.open(root)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    return build_cache(tmp_path_factory.mktemp("cache") / "c")


def s1_config(**kw) -> Stage1Config:
    return Stage1Config(**{**TINY, "epochs": 4, "batch_size": 32, "lr": 3e-3, "warmup_epochs": 0.5,
                           "patience": 0, "stream": False, **kw})


@pytest.fixture(scope="module")
def stage1(cache: FeatureCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train_stage1(cache.root, tmp_path_factory.mktemp("runs") / "s1", s1_config())


def bin_labels(records) -> np.ndarray:
    return record_targets(records, "BIN-L", ["real", "fake"])


# -- data -------------------------------------------------------------------------------------------
def test_streaming_reads_every_record_once_bounded_and_deterministic(cache: FeatureCache) -> None:
    recs = cache.ok_records("train")
    ds = StreamingFeatures(cache, recs, bin_labels(recs), view=View(T, train=True), batch_size=5,
                           buffer_shards=2, seed=3, epoch=0)
    first = [b.index.tolist() for b in ds]
    flat = sorted(i for b in first for i in b)
    assert flat == list(range(len(recs)))  # every record exactly once
    assert all(len(b) == 5 for b in first[:-1])
    assert ds.stats["shards_read"] == len(ds.shard_refs) > 4  # each shard read once, across two parts
    assert ds.stats["max_rows_buffered"] <= 2 * 8 + 5 - 1  # buffer_shards shards + a batch's carry
    assert [b.index.tolist() for b in ds] == first  # same seed + epoch: same order
    ds.set_epoch(1)
    assert [b.index.tolist() for b in ds] != first
    batch = next(iter(ds))
    assert batch.x.dtype == torch.float32 and batch.x.shape == (5, T, D) and batch.mask.shape == (5, T)


def test_balanced_sampling(cache: FeatureCache) -> None:
    recs = cache.ok_records("train")
    y = bin_labels(recs)
    assert np.bincount(y)[1] > 3 * np.bincount(y)[0]  # the split is unbalanced
    idx = balanced_epoch(y, np.random.default_rng(0))
    assert np.bincount(y[idx]).tolist() == [round(len(y) / 2)] * 2  # exactly balanced in memory
    ds = StreamingFeatures(cache, recs, y, batch_size=16)
    counts = np.zeros(2)
    for epoch in range(6):
        for b in ds.batches(16, View(T, train=True), seed=0, epoch=epoch, shuffle=True, balance=True):
            counts += np.bincount(b.y.numpy(), minlength=2)
    assert abs(counts[0] - counts[1]) / counts.sum() < 0.1
    assert abs(counts.sum() / 6 - len(y)) / len(y) < 0.1  # an epoch holds ~N samples


def test_frame_subsampling_views(cache: FeatureCache) -> None:
    recs = cache.ok_records("train")[:12]
    mem = InMemoryFeatures(cache, recs, bin_labels(recs))
    raw = cache.read(recs)
    short = [i for i in range(len(recs)) if not raw["mask"][i, 0].all()]
    full = [i for i in range(len(recs)) if raw["mask"][i, 0].all()]
    assert short and full
    ev = mem.take(np.arange(len(recs)), View(4))
    assert ev.x.shape == (len(recs), 4, D)
    i = full[0]  # centred in eval: frames 2..5
    assert torch.equal(ev.x[i], torch.from_numpy(raw["features"][i, 0, 2:6].astype(np.float32)))
    j = short[0]  # a padded video keeps its real frames first
    assert ev.mask[j].tolist() == [True] * int(raw["mask"][j, 0].sum()) + [False] * (4 - int(raw["mask"][j, 0].sum()))
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    a = mem.take(np.arange(len(recs)), View(4, train=True, jitter=2, frame_drop=0.5), rng())
    b = mem.take(np.arange(len(recs)), View(4, train=True, jitter=2, frame_drop=0.5), rng())
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask)  # deterministic given the rng
    assert a.mask.any(1).all()  # at least one real frame always kept
    starts = {tuple(mem.take(np.array([i]), View(4, train=True), np.random.default_rng(s)).x[0, 0, :2].tolist())
              for s in range(20)}
    assert len(starts) > 1  # random starts in training
    with pytest.raises(SagaError):
        mem.take(np.arange(2), View(T + 1))
    stream = StreamingFeatures(cache, recs, bin_labels(recs))
    pick = np.array([5, 1, 5, 0])  # random access, unsorted, with a repeat (mined positives/negatives)
    got, want = stream.take(pick, View(6)), mem.take(pick, View(6))
    assert torch.equal(got.x, want.x) and torch.equal(got.mask, want.mask) and got.index.tolist() == pick.tolist()


# -- stage 1 + run folders ------------------------------------------------------------------------
def test_stage1_learns(stage1: Path) -> None:
    lines = [json.loads(l) for l in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3, 4]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert max(l["val_macro_accuracy"] for l in lines) > 0.7  # chance is 0.5
    assert (stage1 / "done.json").is_file() and not (stage1 / "state.json").exists()
    model, info = load_model(stage1)
    assert info.classes == ["real", "fake"] and info.level == "BIN-L" and info.frames == T and info.finished
    assert not model.training and info.provenance["encoder"]["dim"] == D


class Killed(Exception):
    pass


def test_resume_is_bit_exact(cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    def kill_after_2(event: ProgressEvent) -> None:
        if event.kind == "epoch" and event.done == 2:
            raise Killed

    out = tmp_path / "s1"
    with pytest.raises(Killed):
        train_stage1(cache.root, out, s1_config(), progress=kill_after_2)
    assert (out / "state.json").is_file() and not (out / "done.json").exists()
    events: list[ProgressEvent] = []
    train_stage1(cache.root, out, s1_config(), progress=events.append)
    events = [e for e in events if e.kind != "status"]  # setup steps (kind status) come first
    assert "resuming" in events[0].message
    for name in ("model.safetensors",):
        a, b = load_file(str(stage1 / name)), load_file(str(out / name))
        assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "seconds"}  # noqa: E731
                       for l in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(out) == strip(stage1)
    again: list[ProgressEvent] = []
    train_stage1(cache.root, out, s1_config(), progress=again.append)
    again = [e for e in again if e.kind != "status"]  # setup steps (kind status) come first
    assert again[0].kind == "reused"
    with pytest.raises(SagaError, match="different settings"):
        train_stage1(cache.root, out, s1_config(lr=1e-3))


def test_streamed_stage1_runs(cache: FeatureCache, tmp_path: Path) -> None:
    out = train_stage1(cache.root, tmp_path / "s", s1_config(epochs=1, stream=True, frames=6, jitter=1,
                                                             frame_drop=0.2))
    assert json.loads((out / "config.json").read_text())["frames"] == 6


# -- stage 2 ------------------------------------------------------------------------------------
def test_fraction_sampling(cache: FeatureCache, tmp_path: Path) -> None:
    tax = cache.taxonomy
    recs = cache.ok_records()
    sub = labelled_subset(recs, "GEN-L", tax, fraction=0.005, floor=2, seed=0)
    assert list(sub) == tax.classes("GEN-L") and all(len(p) == 2 for p in sub.values())
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    assert labelled_subset(shuffled, "GEN-L", tax, 0.005, 2, 0) == sub  # record order does not matter
    assert labelled_subset(recs, "GEN-L", tax, 0.005, 2, 1) != sub
    big = labelled_subset(recs, "GEN-L", tax, fraction=0.5, floor=2, seed=0)
    assert len(big["real"]) == round(0.5 * sum(r.split == "train" and r.generator == "real" for r in recs))
    sd = labelled_subset(recs, "SD-L", tax, 0.5, 2, 0)
    assert list(sd) == tax.classes("SD-L")
    no_sd = {g for g, spec in tax.generators.items() if spec.sd is None}
    assert not any(p.split("/")[0] in no_sd for paths in sd.values() for p in paths)
    with pytest.warns(UserWarning, match="fewer than the floor"):
        labelled_subset(recs, "GEN-L", tax, 0.005, floor=50, seed=0)
    path = tmp_path / "labelled.json"
    first = resolve_labelled(path, recs, tax, settings("GEN-L", 0.005, 2, 0, cache.cache_id))
    assert resolve_labelled(path, recs[::-1], tax, settings("GEN-L", 0.005, 2, 0, cache.cache_id)) == first
    with pytest.raises(SagaError, match="fraction"):
        resolve_labelled(path, recs, tax, settings("GEN-L", 0.01, 2, 0, cache.cache_id))


def test_per_generator_floor_labels_every_generator_of_a_class(cache: FeatureCache, tmp_path: Path) -> None:
    tax, recs = cache.taxonomy, cache.ok_records()
    plain = labelled_subset(recs, "TEAM-L", tax, 0.005, 2, seed=4)
    gens = {r.path: r.generator for r in recs}
    train_gens = {t: {r.generator for r in recs if r.split == "train" and r.labels["TEAM-L"] == t} for t in plain}
    assert any(len({gens[p] for p in plain[t]}) < len(train_gens[t]) for t in plain)  # what the rule is for
    for m in (1, 2):
        sub = labelled_subset(recs, "TEAM-L", tax, 0.005, 2, seed=4, per_generator=m)
        assert list(sub) == list(plain)
        for team, paths in sub.items():
            drawn = [gens[p] for p in paths]
            assert set(drawn) == train_gens[team] and all(drawn.count(g) >= m for g in train_gens[team])
            assert len(paths) == max(2, m * len(train_gens[team]))
            if len(train_gens[team]) == 1 and m == 1:
                assert paths == plain[team]  # a one-generator class draws as without the rule
    assert labelled_subset(recs, "TEAM-L", tax, 0.005, 2, 4, per_generator=0) == plain
    # the rest of k still comes in hash order: where the plain draw covers every generator, nothing changes
    big, big_m = (labelled_subset(recs, "TEAM-L", tax, 0.5, 2, 4, per_generator=m) for m in (0, 1))
    assert all({gens[p] for p in big[t]} == train_gens[t] for t in big) and big_m == big
    with pytest.raises(SagaError, match="per_generator"):
        labelled_subset(recs, "TEAM-L", tax, 0.005, 2, 4, per_generator=-1)
    # labelled.json records it; an older file without the key reads as 0 and refuses 1
    path = tmp_path / "labelled.json"
    wanted = settings("TEAM-L", 0.005, 2, 4, cache.cache_id, per_generator=1)
    assert resolve_labelled(path, recs, tax, wanted) == labelled_subset(recs, "TEAM-L", tax, 0.005, 2, 4, 1)
    assert json.loads(path.read_text())["per_generator"] == 1
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "per_generator"}
    old["classes"] = plain
    path.write_text(json.dumps(old))
    assert resolve_labelled(path, recs, tax, {**wanted, "per_generator": 0}) == plain
    with pytest.raises(SagaError, match="per_generator=0"):
        resolve_labelled(path, recs, tax, wanted)
    with pytest.raises(SagaError, match="per_generator"):
        a_config(per_generator=-2).check()


def a_config(**kw) -> AttributeConfig:
    return AttributeConfig(**{**TINY, "level": "TASK-L", "fraction": 0.5, "epochs": 3, "batch_size": 16,
                              "lr": 1e-3, "warmup_epochs": 0.0, "patience": 0, "min_steps": 0, "eval_every_steps": 0,
                              "stream": False, **kw})


def test_stage2_starts_from_stage1(cache: FeatureCache, stage1: Path) -> None:
    base = load_base(stage1, cache)
    model = prepare_model(cache, a_config(), 3, T, base)
    saved = load_file(str(stage1 / "model.safetensors"))
    state = model.state_dict()
    body = [k for k in saved if not k.startswith("head.")]
    assert body and all(torch.equal(state[k], saved[k]) for k in body)
    assert state["head.weight"].shape == (3, 32) and saved["head.weight"].shape == (2, 32)


def _kill_resume_and_compare(cache: FeatureCache, stage1: Path, cfg: AttributeConfig, reference: Path,
                             resumed: Path, kill_when: Callable[[ProgressEvent], bool]) -> Path:
    """Train stage 2 into `resumed`, kill it at the first event `kill_when` accepts, rerun: the weights must
    equal the uninterrupted run's in `reference`."""
    def kill(event: ProgressEvent) -> None:
        if kill_when(event):
            raise Killed

    with pytest.raises(Killed):
        train_attribution(cache.root, resumed, cfg, from_run=stage1, progress=kill)
    train_attribution(cache.root, resumed, cfg, from_run=stage1)
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    return resumed


def test_stage2_hnm_logs_triplets_and_resumes(cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    cfg = a_config(mine_every=3)
    out = train_attribution(cache.root, tmp_path / "a", cfg, from_run=stage1)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(l["mined_triplets"] > 0 and l["refreshes"] >= 2 for l in lines)
    assert all(isinstance(l["active_triplets"], int) and 0 <= l["active_triplets"] <= l["triplets"] for l in lines)
    assert lines[0]["triplets"] > 0 and lines[0]["hnm"] is not None
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["from_run"]["fingerprint"] and prov["cache_id"] == cache.cache_id
    model, info = load_model(out)
    assert info.classes == ["real", "T2V", "I2V"] and model.config.n_classes == 3
    labelled = json.loads((out / "labelled.json").read_text())
    assert labelled["fraction"] == 0.5 and set(labelled["classes"]) == set(info.classes)

    _kill_resume_and_compare(cache, stage1, cfg, out, tmp_path / "b", lambda e: e.kind == "epoch" and e.done == 1)


def test_few_step_epochs_validate_and_checkpoint_in_rounds_and_resume_exactly(
        cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    cfg = a_config(loss="ce", batch_size=64, epochs=2, min_steps=9, eval_every_steps=4)
    out = train_attribution(cache.root, tmp_path / "a", cfg, from_run=stage1)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = lines[0]["step"]
    every = -(-4 // per_epoch)
    assert len(lines) == -(-9 // per_epoch) > 2  # the step floor raised 2 epochs
    validated = [l["epoch"] for l in lines if l["val_macro_accuracy"] is not None]
    assert validated == [e for e in range(1, len(lines) + 1) if e % every == 0 or e == len(lines)]
    assert json.loads((out / "done.json").read_text())["best_epoch"] in validated

    resumed = _kill_resume_and_compare(cache, stage1, cfg, out, tmp_path / "b", lambda e: e.kind == "epoch")
    assert (resumed / "metrics.jsonl").read_text().count("\n") == len(lines)


def test_stage2_ce_from_scratch_sd_level(cache: FeatureCache, tmp_path: Path) -> None:
    out = train_attribution(cache.root, tmp_path / "sd", a_config(level="SD-L", loss="ce", epochs=1))
    _, info = load_model(out)
    assert info.classes == cache.taxonomy.classes("SD-L")
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["hnm"] is None and line["val_accuracy"] is not None
    with pytest.raises(SagaError, match="labelled subset"):
        train_attribution(cache.root, tmp_path / "sd", a_config(level="SD-L", loss="ce", epochs=1, fraction=0.3))


def test_from_run_on_another_cache_is_refused(stage1: Path, tmp_path: Path) -> None:
    other = build_cache(tmp_path / "other", seed=1, real=6, per_gen=2)
    with pytest.raises(SagaError, match="not on"):
        train_attribution(other.root, tmp_path / "x", a_config(), from_run=stage1)


def test_ablation_grid_has_probe_and_ceiling_rows(cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    from saga.ablate import PAPER, interval95, run_ablation

    events: list[ProgressEvent] = []
    summary = run_ablation(cache.root, stage1, tmp_path / "abl", a_config(epochs=1), seeds=(0, 1), level="TASK-L",
                           progress=events.append)
    assert {e.kind for e in events} == {"cell"} and [e.done for e in events] == list(range(1, 17))
    assert events[-1].total == 16 and "1-stage, all labels ce seed 1: accuracy" in events[-1].message
    names = [(r["setting"], r["loss"]) for r in summary["rows"]]
    assert names[0] == ("1-stage, labelled only", "ce")  # the paper's 1-stage: nothing of the pool but its labels
    assert names[1:7] == [(s, l) for s in ("1-stage", "2-stage") for l in ("ce", "ce+semihnm", "ce+hnm")]
    assert ("1-stage, all labels", "ce") in names
    assert ("probe, same labels", "logistic regression") in names and ("probe, all labels", "logistic regression") in names
    assert all(r["runs"] == 2 and r["accuracy_ci95"] >= 0 and r["n_test"] > 0 for r in summary["rows"])
    paper = {(r["setting"], r["loss"]): r["paper"] for r in summary["rows"]}  # method.md's TASK-L headline
    assert (paper[("1-stage", "ce")], paper[("1-stage, all labels", "ce")], paper[("2-stage", "ce+hnm")]) == (
        None, 99.96, None)  # at fraction 0.5 only the all-labels figure compares (the others: 0.5 % labels)
    assert [PAPER["TASK-L"].get(key) for key in (("1-stage, labelled only", "ce"), ("2-stage", "ce+hnm"),
                                                 ("2-stage", "ce"), ("1-stage", "ce"))] == [
        82.41, 98.20, None, None]  # the paper's ablation is GEN-L only; its 1-stage saw the labelled videos alone
    assert summary["test_videos_per_class"] and set(summary["test_videos_per_class"]) == {"real", "T2V", "I2V"}
    text = (tmp_path / "abl" / "ablation.md").read_text()
    assert "95 % t-interval" in text and "probe, all labels" in text
    assert interval95([1.0]) is None and interval95([1.0, 3.0]) == pytest.approx(12.706 * 1.41421 / 1.41421, rel=1e-3)


def test_stage2_reports_the_labelled_count_per_class_before_training(cache: FeatureCache, stage1: Path,
                                                                     tmp_path: Path) -> None:
    from saga.cache.fraction import counts_line
    from saga.progress import describe

    events: list[ProgressEvent] = []
    run = train_attribution(cache.root, tmp_path / "r", a_config(epochs=1), from_run=stage1, progress=events.append)
    subset = json.loads((run / "labelled.json").read_text())["classes"]
    events = [e for e in events if e.kind != "status"]  # setup steps (kind status) come first
    assert events[0].kind == "labelled" and events[1].kind == "start"
    assert describe(events[0]) == counts_line("TASK-L", subset)
    low, high = sorted(subset, key=lambda c: len(subset[c]))[::2]
    assert describe(events[0]) == (f"labelled per TASK-L class: min {len(subset[low])} ({low}) … max "
                                   f"{len(subset[high])} ({high}); {sum(map(len, subset.values()))} videos in 3 classes")
    again: list[ProgressEvent] = []
    train_attribution(cache.root, run, a_config(epochs=1), from_run=stage1, progress=again.append)
    again = [e for e in again if e.kind != "status"]  # setup steps (kind status) come first
    assert [e.kind for e in again] == ["reused"]
