"""Splits that stay honest: ties in the split draw, pruned videos that come back, and the probe's C on val."""

from __future__ import annotations

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_video_tree, run_saga, write_clip
from expected_warnings import other_cache
from saga.cache.export import export_h5, import_h5
from saga.cache.manifest import PRUNED_PLAN, VideoRecord, _split_order, assign_splits, read_pruned_plan
from saga.cache.prune import prune_gone
from saga.cache.store import FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.pipeline.extract import extract
from saga.taxonomy import Taxonomy
from test_extract import config
from test_probe import GENS, SPLITS, T, W, clip, provenance
from test_train_guards import cache, stage1  # noqa: F401 - a tiny cache and a stage-1 run chosen on its val split


# --- 1. ties in the split draw --------------------------------------------------------------------------------

@pytest.mark.parametrize("fractions", [(0.7, 0.1, 0.2), (0.68, 0.14, 0.18), (0.75, 0.0, 0.25)])
def test_a_class_of_two_videos_gets_one_test_video_whatever_the_fractions_rounding(
        fractions: tuple[float, float, float]) -> None:
    """The second video ties train against test (0.7 * 2 - 1 = 0.4 = 0.2 * 2): float noise decided it, so 70/10/20
    gave train + test but 68/14/18 and 75/0/25 two train videos and nothing to test the class on."""
    shares = dict(zip(("train", "val", "test"), fractions))
    for seed in range(3):
        got = assign_splits([("c/a.mp4", "c"), ("c/b.mp4", "c")], {}, shares, seed)
        assert Counter(got.values()) == {"train": 1, "test": 1}


def test_a_tie_goes_to_the_split_still_empty_and_the_draw_keeps_its_shares() -> None:
    """Five videos at 70/10/20: the fifth ties train (3.5 - 3) against val (0.5 - 0); val holds none yet."""
    shares = {"train": 0.7, "val": 0.1, "test": 0.2}
    got = assign_splits([(f"c/{i}.mp4", "c") for i in range(5)], {}, shares, 0)
    assert Counter(got.values()) == {"train": 3, "val": 1, "test": 1}
    many = assign_splits([(f"c/{i}.mp4", "c") for i in range(1000)], {}, shares, 0)
    assert Counter(many.values()) == {"train": 700, "val": 100, "test": 200}
    assert assign_splits([(f"c/{i}.mp4", "c") for i in reversed(range(5))], {}, shares, 0) == got


@pytest.mark.parametrize("fractions", [(0.7, 0.1, 0.2), (0.5, 0.1, 0.4), (0.8, 0.1, 0.1)])
def test_only_ties_with_an_empty_split_change_the_old_draw(fractions: tuple[float, float, float]) -> None:
    """Benchmarks measured on caches drawn by the old rule stay comparable: past a class's first six videos
    the draw is the old one (raw float deficits, train first on exact ties)."""
    shares = dict(zip(("train", "val", "test"), fractions))
    counts, old = dict.fromkeys(shares, 0), []
    for total in range(1, 201):
        split = max(shares, key=lambda s: (shares[s] * total - counts[s], -list(shares).index(s)))
        counts[split] += 1
        old.append(split)
    items = [(f"c/{i}.mp4", "c") for i in range(200)]
    got = assign_splits(items, {}, shares, 0)
    order = sorted(got, key=lambda p: _split_order(0, p))
    assert [got[p] for p in order][6:] == old[6:]


# --- 2. a pruned video that comes back ------------------------------------------------------------------------

def _splits(out: Path) -> dict[str, str]:
    return {r.path: r.split for r in FeatureCache.open(out).records(refresh=True)}


def _gone_and_back(tmp_path: Path, tiny_weights: Path, into: str = "", cli: bool = True
                   ) -> tuple[str, str, dict, dict]:
    """A test video moved away and pruned, a new video of its class extracted meanwhile, then the video back
    (into the folder `into`, keeping its name, size and mtime, when given): (its path, the path it came back
    at, splits before, splits after)."""
    videos = make_video_tree(tmp_path / "v", per_class=3)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    before = _splits(cfg.out)
    video = next(p for p, s in sorted(before.items()) if s == "test" and p.startswith("real/"))
    shutil.move(str(videos / video), tmp_path / "away.mp4")
    if cli:
        proc = run_saga("cache", "prune", str(cfg.out), "--videos", str(videos), "--yes", check=True)
        assert "their splits are kept" in " ".join(proc.stdout.split())
    else:
        prune_gone(FeatureCache.open(cfg.out), videos)
    assert video not in _splits(cfg.out)
    write_clip(videos / "real" / "new.mp4", n_frames=9, seed=77)
    extract(cfg)
    assert _splits(cfg.out)["real/new.mp4"] == "test"  # the class lacked its test video
    back = f"{into}/{Path(video).name}" if into else video
    (videos / back).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp_path / "away.mp4"), videos / back)
    extract(cfg)
    assert FeatureCache.open(cfg.out).check_structure()[0] == []
    return video, back, before, _splits(cfg.out)


def test_a_pruned_test_video_that_comes_back_returns_to_test(tmp_path: Path, tiny_weights: Path) -> None:
    """A fresh draw put it in train (the new video had taken the class's test place): a video the earlier runs
    were tested on became a training video of every later run."""
    video, _, before, after = _gone_and_back(tmp_path, tiny_weights)
    assert after[video] == before[video] == "test"
    assert json.loads((tmp_path / "c" / PRUNED_PLAN).read_text().splitlines()[0])["split"] == "test"


def test_a_pruned_video_renamed_while_gone_returns_to_its_split(tmp_path: Path, tiny_weights: Path) -> None:
    """Back under another folder with its name, size and mtime (`mv` keeps them): the same file, the same split."""
    video, back, before, after = _gone_and_back(tmp_path, tiny_weights, "real/restored", cli=False)
    assert back != video and after[back] == before[video] == "test"


def test_a_corrupt_line_of_the_pruned_splits_is_one_line(tmp_path: Path, tiny_weights: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    (cfg.out / PRUNED_PLAN).write_text('{"path": "real/x.mp4", "split": "somewhere"}\n')
    write_clip(videos / "real" / "new.mp4", n_frames=9, seed=7)
    with pytest.raises(SagaError, match=rf"{PRUNED_PLAN}:1: corrupt line .*; restore it, or delete the line") as exc:
        extract(cfg)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("field, value", [("size", "Infinity"), ("mtime_ns", "-Infinity"), ("size", "1e30"),
                                          ("size", "100000000000000000000000000000"), ("mtime_ns", "true"),
                                          ("size", "-2"), ("size", "\"12\"")])
def test_a_pruned_splits_line_with_a_number_no_file_has_is_one_line(tmp_path: Path, field: str, value: str) -> None:
    """Infinity was an OverflowError traceback (`int()` of it) in `saga extract` and `cache export`; 10**30 and
    1e30 were kept and exported into a file whose sizes no stat can give."""
    path = tmp_path / PRUNED_PLAN
    path.write_text(f'{{"path": "real/x.mp4", "split": "test", "{field}": {value}}}\n')
    with pytest.raises(SagaError, match=rf"{PRUNED_PLAN}:1: corrupt line .*; restore it, or delete the line") as exc:
        read_pruned_plan(path)
    assert "\n" not in str(exc.value)
    path.write_text('{"path": "real/x.mp4", "split": "test", "size": -1, "mtime_ns": -5}\n')  # what saga writes
    assert read_pruned_plan(path) == {"real/x.mp4": {"split": "test", "size": -1, "mtime_ns": -5}}


def test_the_splits_of_pruned_videos_travel_with_an_export(tmp_path: Path) -> None:
    """An imported cache extended by `saga extract` must know them too; edited inside the file, it is refused."""
    from test_cache_fixes import pruned_export_cache

    cache = pruned_export_cache(tmp_path)
    kept = read_pruned_plan(cache.root / PRUNED_PLAN)
    assert kept == {"real/b.mp4": {"split": "test", "size": 5, "mtime_ns": 6}}
    export_h5(FeatureCache.open(cache.root), tmp_path / "c.h5")
    assert read_pruned_plan(import_h5(tmp_path / "c.h5", tmp_path / "imp").root / PRUNED_PLAN) == kept
    with h5py.File(tmp_path / "c.h5", "a") as h5:
        del h5["pruned_splits"]
        line = json.dumps({"path": "real/b.mp4", "split": "train", "size": 5, "mtime_ns": 6})
        h5.create_dataset("pruned_splits", data=np.array([line], dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(SagaError, match="the file is damaged"):
        import_h5(tmp_path / "c.h5", tmp_path / "imp2")


# --- 3. the probe's C when the val split is the one scored -----------------------------------------------------

def _probe_cache(root: Path, val_seed: int) -> FeatureCache:
    """test_probe's toy cache; `val_seed` draws the val videos' features (the train videos' are the same)."""
    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(root, provenance())
    writer = PartWriter(cache, next_part_name(cache), capacity=len(GENS) * len(SPLITS) * W)
    for g, gen in enumerate(GENS):
        for k, split in enumerate(SPLITS):
            rng = np.random.default_rng([g, k, val_seed if split == "val" else 0])
            feats = np.stack([clip(gen, rng) for _ in range(W)]).astype(np.float16)
            if split == "val" and val_seed:  # val videos that say nothing of their class
                feats = rng.normal(size=feats.shape).astype(np.float16)
            rec = VideoRecord(path=f"{gen}/v{k}.mp4", size=1, mtime_ns=1, status="ok", generator=gen,
                              labels=tax.labels(gen), split=split)
            writer.add(rec, feats, np.ones((W, T), bool), np.zeros((W, T), np.float32))
    writer.close()
    return FeatureCache.open(root)


def test_probe_scored_on_val_chooses_c_by_cross_validation_on_train(tmp_path: Path) -> None:
    """`saga probe --split val` chose C on the val videos and reported its accuracy on the same videos."""
    from typer.testing import CliRunner

    from saga.cli import app

    clean, noise = _probe_cache(tmp_path / "clean", 0), _probe_cache(tmp_path / "noise", 1)
    args = ["probe", "--level", "GEN-L", "--fraction", "1.0", "--split", "val", "--format", "json"]
    res = CliRunner().invoke(app, [*args, "--cache", str(clean.root), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    choice = data["selection"]
    assert choice["selected_on"] == "train" and choice["folds"] == 5 and choice["val_macro_accuracy"] is None
    assert set(choice["cv_macro_accuracy"]) == {"0.01", "0.1", "1.0", "10.0"} and data["split"] == "val"
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["model"]["selection"]["selected_on"] == "train"
    # the val videos no longer choose anything: other val features, the same C and the same probe
    other = CliRunner().invoke(app, [*args, "--cache", str(noise.root), "--out", str(tmp_path / "q")])
    assert json.loads(other.stdout.strip().splitlines()[-1])["selection"] == choice
    text = CliRunner().invoke(app, [*args[:-2], "--cache", str(clean.root), "--out", str(tmp_path / "p")])
    assert "chosen by 5-fold cross-validation on the labelled train videos" in " ".join(text.stdout.split())
    test = CliRunner().invoke(app, [*args[:-4], "--format", "json", "--cache", str(clean.root),
                                    "--out", str(tmp_path / "t")])
    assert json.loads(test.stdout.strip().splitlines()[-1])["selection"]["selected_on"] == "val"


def test_probe_cross_validation_needs_two_labelled_videos_per_class(tmp_path: Path) -> None:
    """One labelled video of a class leaves nothing to cross-validate: C = 1.0, said so; val still chooses nothing."""
    from saga.explain.probe import train_and_evaluate

    cache = _probe_cache(tmp_path / "c", 0)
    subset = {gen: [f"{gen}/v0.mp4"] for gen in GENS[:3]}
    _, metrics = train_and_evaluate(cache, "GEN-L", subset, None, "val")
    assert metrics["C"] == 1.0 and metrics["selection"]["selected_on"] is None and metrics["n_val"] == 0
    assert "no cross-validation" in metrics["selection"]["selected_by"]


OPTIMISTIC = "the checkpoint was chosen on val: this accuracy is optimistic; use --split test"


def test_evaluate_on_the_split_that_chose_the_checkpoint_says_it_is_optimistic(stage1: Path,
                                                                               tmp_path: Path) -> None:
    """`saga evaluate --split val` reported the accuracy on the videos that chose the kept epoch (done.json:
    best val macro accuracy) like a test figure, in the output, metrics-val.json and the report."""
    from typer.testing import CliRunner

    from saga.cli import app

    run = tmp_path / "run"
    shutil.copytree(stage1, run)
    done = json.loads((run / "done.json").read_text())
    assert done["metric"] == "val_macro_accuracy" and done["select"] == "accuracy"  # the run was selected on val
    cache = str(json.loads((run / "config.json").read_text())["cache"])
    val = CliRunner().invoke(app, ["evaluate", str(run), "--cache", cache, "--split", "val", "--no-probe",
                                   "--format", "json"])
    assert val.exit_code == 0, val.output
    assert f"warning: {run}: {OPTIMISTIC}" in " ".join(val.stderr.split())
    chosen = {"selected_on": "val", "select": "accuracy", "best_epoch": done["best_epoch"]}
    assert json.loads(val.stdout)["checkpoint_chosen_on_split"] == chosen
    assert json.loads((run / "metrics-val.json").read_text())["checkpoint_chosen_on_split"] == chosen
    text = CliRunner().invoke(app, ["evaluate", str(run), "--cache", cache, "--split", "val", "--no-probe"])
    assert "val (chose the checkpoint: optimistic)" in " ".join(text.stdout.split())
    html = tmp_path / "r.html"
    assert CliRunner().invoke(app, ["report", str(run), "--out", str(html)]).exit_code == 0
    assert html.read_text().count("val (chose the checkpoint: optimistic)") >= 2  # summary row and metrics heading
    test = CliRunner().invoke(app, ["evaluate", str(run), "--cache", cache, "--no-probe", "--format", "json"])
    assert test.exit_code == 0 and "optimistic" not in test.output
    assert "checkpoint_chosen_on_split" not in json.loads(test.stdout)


@pytest.mark.parametrize("done,chosen", [
    ({"metric": "val_macro_accuracy", "select": "loss", "best_epoch": 3},
     {"selected_on": "val", "select": "loss", "best_epoch": 3}),
    ({"metric": "val_macro_accuracy", "select": "last", "best_epoch": 9, "chosen_by": "val_macro_accuracy"},
     {"selected_on": "val", "select": None, "best_epoch": 9, "readout_chosen_by": "val_macro_accuracy"}),
    ({"metric": "val_macro_accuracy", "select": "last", "best_epoch": 9}, None),  # the last epoch, the head
    ({"metric": None, "select": "accuracy", "best_epoch": 9, "chosen_by": "no validation videos"}, None),
])
def test_what_val_chose_is_read_from_done_json(tmp_path: Path, done: dict, chosen: dict | None) -> None:
    """Only a run whose kept epoch or readout the val split chose is flagged (`select = "last"`, no val videos: not)."""
    from saga.explain.metrics import chosen_on_val

    (tmp_path / "done.json").write_text(json.dumps(done))
    assert chosen_on_val(tmp_path) == chosen


def test_an_unfinished_run_is_chosen_on_val_once_an_epoch_was_validated(tmp_path: Path) -> None:
    from saga.explain.metrics import chosen_on_val

    (tmp_path / "config.json").write_text(json.dumps({"train": {"select": "accuracy"}}))
    lines = [{"epoch": 1, "val_macro_accuracy": 0.4, "best": True}, {"epoch": 2, "val_macro_accuracy": 0.3,
                                                                     "best": False}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert chosen_on_val(tmp_path) == {"selected_on": "val", "select": "accuracy", "best_epoch": 1}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_macro_accuracy": None, "best": True}) + "\n")
    assert chosen_on_val(tmp_path) is None  # no val videos: nothing chose on val


FIT_ONLY = "the run trained on these videos: this accuracy measures fit, not generalisation; use --split test"


def _cli(*args: str):  # noqa: ANN202 - a click Result
    from typer.testing import CliRunner

    from saga.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def stage2(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureCache, Path]:
    """A stage-2 run (open-set fits need its labelled videos) on a cache of 20 val videos, chosen on val."""
    from saga.train.attribute import train_attribution
    from test_labelled_splits import GENS as SPLIT_GENS
    from test_labelled_splits import split_cache
    from test_train import a_config

    root = tmp_path_factory.mktemp("stage2")
    order = ("train", "train", "train", "val", "test")
    cache = split_cache(root / "own", {f"{g}/{i:03d}.mp4": order[i % 5] for g in SPLIT_GENS for i in range(25)})
    cfg = a_config(level="GEN-L", fraction=0.5, epochs=1, content_basis=0, self_training=False)
    return cache, train_attribution(cache.root, root / "run", cfg)


def _run_copy(stage1: Path, tmp_path: Path) -> tuple[Path, str]:
    run = tmp_path / "run"
    shutil.copytree(stage1, run)
    return run, str(json.loads((run / "config.json").read_text())["cache"])


def test_evaluate_val_with_figures_fitted_on_val_says_so_in_one_warning(stage2: tuple[FeatureCache, Path],
                                                                         tmp_path: Path) -> None:
    """The temperature and the unknown threshold were fitted on the val videos `evaluate --split val` scores their
    ECE / false-unknown rate on: optimistic too, but the warning and the marking spoke of the accuracy only."""
    from saga.openworld.api import calibrate_run, fit_openset_run

    run, cache = _run_copy(stage2[1], tmp_path)
    assert json.loads((run / "done.json").read_text())["metric"] == "val_macro_accuracy"  # chosen on val
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few val videos: T unreliable, said elsewhere
        calibrate_run(run, report_split=None)
        fit_openset_run(run, k=3)
    val = _cli("evaluate", str(run), "--cache", cache, "--split", "val", "--no-probe", "--format", "json")
    assert val.exit_code == 0, val.output
    fitted = "the temperature and the unknown threshold"
    warned = [line for line in val.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: {run}: the checkpoint was chosen on val and {fitted} fitted on it: this accuracy "
                      "and the open-world figures are optimistic; use --split test"]
    mark = {"split": "val", "fitted": ["the temperature", "the unknown threshold"]}
    assert json.loads(val.stdout)["openworld"]["fitted_on_split"] == mark
    assert json.loads((run / "metrics-val.json").read_text())["openworld"]["fitted_on_split"] == mark
    text = " ".join(_cli("evaluate", str(run), "--cache", cache, "--split", "val", "--no-probe").stdout.split())
    assert f"on val (fitted {fitted}: optimistic)" in text
    html = tmp_path / "r.html"
    assert _cli("report", str(run), "--out", str(html)).exit_code == 0
    page = html.read_text()
    assert f"<td class=l>val (fitted {fitted}: optimistic)</td>" in page  # the calibration table's row
    assert f"val split (fitted {fitted}: optimistic)</p>" in page  # the open-set figures
    test = _cli("evaluate", str(run), "--cache", cache, "--no-probe", "--format", "json")
    assert test.exit_code == 0 and "optimistic" not in test.output
    assert "fitted_on_split" not in json.loads(test.stdout)["openworld"]


@pytest.mark.parametrize("metrics, text", [
    ({"split": "val", "checkpoint_chosen_on_split": {"selected_on": "val"}}, OPTIMISTIC),
    ({"split": "val", "openworld": {"fitted_on_split": {"split": "val", "fitted": ["the temperature"]}}},
     "the temperature was fitted on val: the open-world figures are optimistic; use --split test"),
    ({"split": "val", "openworld": {"fitted_on_split": {"fitted": ["the temperature", "the unknown threshold"]}}},
     "the temperature and the unknown threshold were fitted on val: the open-world figures are optimistic; "
     "use --split test"),
    ({"split": "train", "trained_on_split": "train"}, FIT_ONLY),
    ({"split": "train", "trained_on_split": "train", "openworld": {"calibration": {}}},
     "the run trained on these videos: this accuracy and the open-world figures measure fit, not generalisation; "
     "use --split test"),
    ({"split": "test", "openworld": {"calibration": {}}}, None),
])
def test_one_warning_names_every_figure_the_split_flatters(metrics: dict, text: str | None) -> None:
    """A run not chosen on val (`select = "last"`) still has its temperature fitted there."""
    from saga.explain.metrics import split_warning

    assert split_warning(metrics) == text



def test_evaluate_on_the_train_split_says_it_measures_fit(stage1: Path, tmp_path: Path) -> None:
    """`saga evaluate --split train` scored the videos the run was trained on with no word, like a test figure."""
    run, cache = _run_copy(stage1, tmp_path)
    res = _cli("evaluate", str(run), "--cache", cache, "--split", "train", "--no-probe", "--format", "json")
    assert res.exit_code == 0, res.output
    assert f"warning: {run}: {FIT_ONLY}" in " ".join(res.stderr.split())
    assert json.loads(res.stdout)["trained_on_split"] == "train"
    assert json.loads((run / "metrics-train.json").read_text())["trained_on_split"] == "train"
    text = _cli("evaluate", str(run), "--cache", cache, "--split", "train", "--no-probe")
    assert "train (trained on: fit, not generalisation)" in " ".join(text.stdout.split())
    html = tmp_path / "r.html"
    assert _cli("report", str(run), "--out", str(html)).exit_code == 0
    assert html.read_text().count("train (trained on: fit, not generalisation)") >= 2  # summary row, heading
    assert _cli("evaluate", str(run), "--cache", cache, "--no-probe").exit_code == 0
    assert _cli("report", str(run), "--out", str(html)).exit_code == 0
    assert "also evaluated: train (trained on: fit, not generalisation)" in html.read_text()  # beside the test's


def test_the_train_split_of_a_heldout_cache_is_not_flagged(stage2: tuple[FeatureCache, Path], tmp_path: Path) -> None:
    """Another cache's train videos are not the run's (those it shares are left out): a fair test."""
    from saga.explain.metrics import evaluate
    from test_labelled_splits import GENS as SPLIT_GENS
    from test_labelled_splits import split_cache

    own, run = stage2[0], _run_copy(stage2[1], tmp_path)[0]
    other = split_cache(tmp_path / "other", {f"{g}/{i:03d}.mp4": "train" for g in SPLIT_GENS for i in (40, 41)})
    with other_cache():
        m = evaluate(run, other.root, split="train", probe=False)
    assert m["heldout"] and "trained_on_split" not in m
    with pytest.warns(UserWarning, match=FIT_ONLY):
        assert evaluate(run, own.root, split="train", probe=False)["trained_on_split"] == "train"
