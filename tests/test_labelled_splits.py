"""Which videos stage 2 learns from and which it is scored on: no scored video is one the run trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saga.cache.manifest import OK, VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter
from saga.errors import SagaError
from saga.explain.metrics import evaluate
from saga.taxonomy import Taxonomy
from saga.train.attribute import train_attribution

from expected_warnings import other_cache, seen_videos, unreliable, unreliable_fold
from test_train import D, T, a_config, sequence

GENS = ("real", "syn-svd", "syn-latte", "syn-pika")


def split_cache(root: Path, splits: dict[str, str], extra: dict[str, tuple[str, str]] | None = None) -> FeatureCache:
    """One record per `splits` path (features by its generator and name: the same path is the same video in any
    cache), plus `extra` copies: new path -> (path whose video it holds, split)."""
    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(root, cache_provenance(EncoderSpec.simulated(D, T, name="test-encoder"), tax))
    bases = np.random.default_rng(123).normal(size=(9, D)).astype(np.float32)

    def row(path: str, video: str, split: str) -> tuple:
        gen = video.split("/")[0]
        rng = np.random.default_rng(int(video.split("/")[1][:3]) + 100 * GENS.index(gen))
        size, mtime = 1000 + len(video) * 7 + GENS.index(gen), 10 ** 9 * (1 + int(video.split("/")[1][:3]))
        rec = VideoRecord(path, size, mtime, OK, gen, tax.labels(gen), split)
        feats = sequence(-1 if gen == "real" else list(tax.generators).index(gen), rng, bases, T)
        return rec, feats[None], np.ones((1, T), bool), np.arange(T, dtype=np.float32)[None] / 8

    rows = [row(p, p, s) for p, s in splits.items()] + [row(p, v, s) for p, (v, s) in (extra or {}).items()]
    writer = PartWriter(cache, "p000001-r000", capacity=len(rows), shard_rows=8)
    for r in rows:
        writer.add(*r)
    writer.close()
    return FeatureCache.open(root)


def videos(shift: int, n: int = 10) -> dict[str, str]:
    """n videos per generator, split 6 / 1 / 3; `shift` rotates which go where (another --split-seed)."""
    order = ("train",) * 6 + ("val",) + ("test",) * 3
    return {f"{g}/{i:03d}.mp4": order[(i + shift) % n] for g in GENS for i in range(n)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureCache, Path]:
    root = tmp_path_factory.mktemp("splits")
    cache = split_cache(root / "own", videos(0))
    cfg = a_config(level="GEN-L", fraction=0.5, epochs=1, content_basis=0, self_training=False)
    return cache, train_attribution(cache.root, root / "run", cfg)


def test_a_heldout_cache_holding_the_runs_train_videos_scores_only_the_others(
        trained: tuple[FeatureCache, Path], tmp_path: Path) -> None:
    own, run = trained
    labelled = {p for ps in json.loads((run / "labelled.json").read_text())["classes"].values() for p in ps}
    # the same videos extracted again with another split, plus 2 new videos per generator in its test split
    again = videos(5) | {f"{g}/{i:03d}.mp4": "test" for g in GENS for i in (20, 21)}
    other = split_cache(tmp_path / "other", again)
    test = {p for p, s in again.items() if s == "test"}
    trained_on = {r.path for r in own.ok_records() if r.split in ("train", "val")}
    assert test & labelled and test & trained_on and test - trained_on  # the leak the check is for
    with other_cache(), pytest.warns(UserWarning, match=r"\d+ of the 20 test videos are videos the run was trained "
                                                        "or validated on"):
        m = evaluate(run, other.root, probe=False)
    assert m["n"] == len(test - trained_on) == 8
    assert m["seen_in_training"]["n"] == len(test & trained_on) == 12
    assert set(m["seen_in_training"]["examples"]) <= trained_on


def test_a_copy_of_a_train_video_in_the_test_split_is_left_out_for_the_run_and_the_probe(
        trained: tuple[FeatureCache, Path], tmp_path: Path) -> None:
    own, run = trained
    base = own.ok_records("test")
    # the same cache's videos and split, plus two copies of train videos under other paths, in test
    splits = videos(0)
    extra = {"syn-svd/copy-000.mp4": ("syn-svd/000.mp4", "test"), "real/copy-001.mp4": ("real/001.mp4", "test")}
    copied = split_cache(tmp_path / "copied", splits, extra)
    run2 = train_attribution(copied.root, tmp_path / "run2",
                             a_config(level="GEN-L", fraction=0.5, epochs=1, content_basis=0, self_training=False))
    with pytest.warns(UserWarning, match="2 of the 14 test videos .* another split of its cache"):
        m = evaluate(run2, copied.root)
    assert m["n"] == len(base) == 12 and m["seen_in_training"]["n"] == 2
    assert m["probe"]["n"] == 12 and m["probe"]["paired"]["n"] == 12  # the probe is scored on the same videos
    with pytest.warns(UserWarning, match="run2: the checkpoint was chosen on val: this accuracy is optimistic"):
        assert "seen_in_training" not in evaluate(run2, copied.root, split="val", probe=False)
    from saga.explain.report import render_report

    assert "2 video(s) the run was trained or validated on (e.g. " in render_report([run2])  # the run's own metrics


def test_a_heldout_cache_of_only_trained_videos_is_refused(trained: tuple[FeatureCache, Path], tmp_path: Path) -> None:
    own, run = trained
    other = split_cache(tmp_path / "other", {p: "test" for p, s in videos(0).items() if s == "train"})
    with pytest.raises(SagaError, match="every 'test' video is one the run was trained or validated on"), \
            other_cache(), seen_videos("test", "the scores", 24, 24):
        evaluate(run, other.root, probe=False)


# -- the other commands that score or summarise a run on a cache: the same rule (saga.explain.seen) ----------------
def shared_heldout(own: FeatureCache, root: Path) -> tuple[FeatureCache, set[str]]:
    """The run's videos extracted again with another split, plus 2 new test videos per generator; and the paths
    of its 20 test videos the run never saw (8: the other 12 are train or val videos of the run's cache)."""
    again = videos(5) | {f"{g}/{i:03d}.mp4": "test" for g in GENS for i in (20, 21)}
    trained_on = {r.path for r in own.ok_records() if r.split in ("train", "val")}
    return split_cache(root / "other", again), {p for p, s in again.items() if s == "test"} - trained_on


def test_tsig_and_tsne_on_a_heldout_cache_leave_out_the_runs_train_videos(
        trained: tuple[FeatureCache, Path], tmp_path: Path) -> None:
    from saga.explain.tsig import load_tsigs, run_tsigs
    from saga.explain.tsne import run_tsne

    own, run = trained
    other, unseen = shared_heldout(own, tmp_path)
    with other_cache(), pytest.warns(UserWarning, match="12 of the 20 test videos are videos the run was trained "
                                                        "or validated on.*left out of the T-Sigs"):
        paths = run_tsigs(run, other.root)
    assert sum(s["n"] for s in load_tsigs(paths["npz"]).values()) == len(unseen) == 8
    with np.load(paths["npz"]) as z:
        assert json.loads(str(z["seen_in_training"]))["n"] == 12
    with other_cache(), pytest.warns(UserWarning, match="12 of the 20 test videos .* left out of the map"):
        res = run_tsne(run, other.root, color_by="GEN-L")
    mapped = {line.split(",")[0] for line in res.csv.read_text().splitlines()[1:]}
    assert mapped == unseen and json.loads(res.json.read_text())["seen_in_training"]["n"] == 12


def test_calibrate_and_openset_fit_leave_out_val_videos_the_run_was_trained_on(
        trained: tuple[FeatureCache, Path], tmp_path: Path) -> None:
    """The fits on val keep the run's own val videos (what they are for) and drop copies of its train videos;
    the reported test ECE drops a copy of a val video too."""
    from saga.openworld.api import calibrate_run, fit_openset_run
    from saga.openworld.openset import OpenSet

    own, run = trained
    extra = {"syn-svd/copy-000.mp4": ("syn-svd/000.mp4", "val"), "real/copy-001.mp4": ("real/001.mp4", "val"),
             "syn-pika/copy-006.mp4": ("syn-pika/006.mp4", "test")}  # 000, 001: train videos; 006: a val video
    other = split_cache(tmp_path / "other", videos(0), extra)
    out = tmp_path / "fits"
    with (unreliable("the temperature", 4), seen_videos("test", "the test ECE", 1, 13),
          pytest.warns(UserWarning, match="2 of the 6 val videos are videos the run was trained on .* temperature")):
        cal, diagrams = calibrate_run(run, other.root, out, write_report=True)
    assert cal.n == 4 and cal.seen_in_training["n"] == 2  # the run's 4 own val videos kept
    assert json.loads((out / "calibration.json").read_text())["seen_in_training"]["n"] == 2
    assert diagrams["before"]["n"] == 12 and diagrams["seen_in_training"]["examples"] == ["syn-pika/copy-006.mp4"]
    assert json.loads((out / "reliability-test.json").read_text())["seen_in_training"]["n"] == 1
    with unreliable("the unknown threshold at the 95th percentile", 4), \
            pytest.warns(UserWarning, match="2 of the 6 val videos .* threshold"):
        det = fit_openset_run(run, other.root, out, k=2)
    assert det.n_val == 4 and OpenSet.load(out).seen_in_training["n"] == 2


def test_evaluate_s_open_world_figures_leave_out_the_same_videos(trained: tuple[FeatureCache, Path],
                                                                  tmp_path: Path) -> None:
    import shutil

    from saga.openworld.api import calibrate_run, evaluate_openworld

    own, run = trained
    run = Path(shutil.copytree(run, tmp_path / "run"))  # calibration.json in a copy: the module's run stays bare
    with unreliable("the temperature", 4):
        calibrate_run(run, own.root, report_split=None)
    other, unseen = shared_heldout(own, tmp_path)
    ow = evaluate_openworld(run, other.root)
    assert ow["calibration"]["before"]["n"] == len(unseen) == 8 and ow["seen_in_training"]["n"] == 12


def test_the_report_says_when_scores_left_out_videos_the_run_was_trained_on(
        trained: tuple[FeatureCache, Path], tmp_path: Path) -> None:
    """The report showed n = 8 for a 20-video test split without saying why: a reader took the 12 seen videos
    as lost (or the figure as of the whole cache)."""
    from saga.explain.report import render_report

    own, run = trained
    other = split_cache(tmp_path / "shared", videos(5) | {f"{g}/{i:03d}.mp4": "test" for g in GENS for i in (20, 21)})
    with other_cache(), pytest.warns(UserWarning, match="trained or validated on"):
        m = evaluate(run, other.root, probe=False)
    html = render_report([run])
    seen = m["seen_in_training"]
    assert (f"shared · test: {seen['n']} video(s) the run was trained or validated on (e.g. {seen['examples'][0]}) "
            "were left out of these scores: n counts only the others.") in html
    section = html[:html.index("Held-out evaluations")]
    assert "were left out of these scores" not in section  # the run's own metrics left nothing out


def test_saga_probe_leaves_out_test_copies_of_the_videos_it_was_fitted_or_validated_on(tmp_path: Path) -> None:
    """`saga probe` scored a test video that is a copy of a train (or val) video of its own cache, which
    `saga evaluate`'s probe line leaves out: two figures of one probe on one cache, and one of them inflated."""
    from typer.testing import CliRunner

    from saga.cli import app

    extra = {"syn-svd/copy-000.mp4": ("syn-svd/000.mp4", "test"), "real/copy-006.mp4": ("real/006.mp4", "test")}
    copied = split_cache(tmp_path / "copied", videos(0), extra)  # 000: a train video, 006: a val video
    out = tmp_path / "probe"
    result = CliRunner().invoke(app, ["probe", "--cache", str(copied.root), "--out", str(out), "--fraction", "0.5",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics-test.json").read_text())
    assert m["n"] == 12 and m["seen_in_training"]["n"] == 2  # 12 test videos of its own, not 14
    assert set(m["seen_in_training"]["examples"]) == set(extra)


def test_enroll_fits_tau_without_val_copies_of_the_runs_train_videos(trained: tuple[FeatureCache, Path],
                                                                      tmp_path: Path) -> None:
    """`saga openset enroll` fitted the prototype temperature τ on every val video of the run's cache, copies of
    its train videos too (their prototype similarity is the sharpest the run has), where calibrate and
    openset fit leave them out."""
    from saga.openworld.api import enroll_run
    from saga.openworld.enroll import Enrollment

    own, run = trained
    extra = {"syn-svd/copy-000.mp4": ("syn-svd/000.mp4", "val"), "real/copy-001.mp4": ("real/001.mp4", "val")}
    other = split_cache(tmp_path / "other", videos(0), extra)
    out = tmp_path / "enrolled"
    with unreliable("the prototype temperature τ", 4), \
            pytest.warns(UserWarning, match="2 of the 6 val videos are videos the run was trained on .* τ's fit"):
        enroll_run(run, "syn-new", other.root, videos="syn-pika", split="test", run_cache_path=other.root, out=out)
    enr = Enrollment.load(out)
    assert enr.seen_in_training["n"] == 2 and set(enr.seen_in_training["examples"]) == set(extra)
    assert json.loads((out / "enrolled.json").read_text())["seen_in_training"]["n"] == 2


def test_the_logo_measure_step_leaves_out_copies_of_the_folds_train_videos(tmp_path: Path) -> None:
    """`saga openset logo`'s measurements (open set, enrollment, calibration rows) scored every test video and fitted
    the threshold and τ on every val video of the cache, copies of the fold's train videos too."""
    from saga.cache.store import PartWriter, next_part_name
    from saga.openworld.logo import evaluate_folds
    from saga.runs import write_json
    from test_openworld import W, make_cache, make_run
    from test_openworld import T as TW

    cache = make_cache(tmp_path / "cache")
    tax = Taxonomy.load("synth")
    writer = PartWriter(cache, next_part_name(cache), capacity=2)
    for path, gen, split in (("syn-svd/copies/v0.mp4", "syn-svd", "test"), ("syn-pika/copies/v1.mp4", "syn-pika", "val")):
        rec = VideoRecord(path=path, size=1, mtime_ns=1, status=OK, generator=gen, labels=tax.labels(gen), split=split)
        writer.add(rec, np.ones((W, TW, cache.dim), np.float16), np.ones((W, TW), bool), np.zeros((W, TW), np.float32))
    writer.close()
    cache = FeatureCache.open(cache.root)
    fold = make_run(tmp_path / "exp" / "logo" / "syn-hotshot", cache)
    config = json.loads((fold / "config.json").read_text())
    write_json(fold / "config.json", {**config, "withheld": {"level": "GEN-L", "classes": ["syn-hotshot"], "keep": []}})
    with (unreliable_fold(), unreliable("syn-hotshot's temperature"),
          seen_videos("val", "fold syn-hotshot's threshold and τ", 1, 16),
          seen_videos("val", "syn-hotshot's temperature", 1, 16),
          pytest.warns(UserWarning, match="1 of the 16 test videos are videos the run was trained or validated on")):
        res = evaluate_folds(cache, tmp_path / "exp", tmp_path / "out", ["syn-hotshot"], 3, 0, calibrate=[fold])
    knn = res["openset"]["syn-hotshot"]["GEN-L"]["knn"]
    assert (knn["n_known"], knn["n_unknown"]) == (12, 3)  # the 4 known classes' 3 test videos each, not the copy
    assert res["seen_in_training"]["syn-hotshot"] == {
        "val": {"n": 1, "examples": ["syn-pika/copies/v1.mp4"], "in": "own cache"},
        "test": {"n": 1, "examples": ["syn-svd/copies/v0.mp4"], "in": "own cache"}}
    assert res["calibration"][0]["n_test"] == 12 and res["calibration"][0]["n_val"] == 12
    assert "syn-hotshot: 1 val, 1 test." in (tmp_path / "out" / "results.md").read_text()
