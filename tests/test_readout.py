"""The discriminant readout: its sources (a mixture per class) and self-training on the unlabelled train pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saga.cache.manifest import OK, VideoRecord
from saga.taxonomy import Taxonomy
from saga.train import readout
from saga.train.attribute import train_attribution
import torch

from saga.model import ModelConfig, VideoTransformer
from saga.runs import load_model
from saga.train.readout import (SELF_TRAINING_SHARES, class_logits, discriminant, mixture_bias, readout_rows,
                                self_train, source_subclasses, unlabelled_pool)
from test_basis import cache  # noqa: F401 - the module's small cache fixture
from test_train import a_config


def gaussian_classes(seed: int, n: int, classes: int = 4, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Close class means and a strong nuisance in 2 random directions: 2 labels misjudge the covariance."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.5
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    scale = np.array([3.0, 3.0] + [0.3] * (dim - 2))
    y = np.repeat(np.arange(classes), n)
    return centres[y] + (rng.normal(size=(len(y), dim)) * scale) @ rotation, y


def split_draw(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    x, y = gaussian_classes(seed, 262)
    parts = [np.concatenate([np.flatnonzero(y == c)[lo:hi] for c in range(4)])
             for lo, hi in ((0, 2), (2, 62), (62, 262))]
    return tuple((x[p], y[p]) for p in parts)


def accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    return float(((x @ w.T + b).argmax(axis=1) == y).mean())


def test_self_training_uses_the_unlabelled_pool_to_fix_a_two_label_discriminant() -> None:
    plain, trained = [], []
    for seed in range(6):
        (lab, y_lab), (unl, _), (test, y_test) = split_draw(seed)
        plain.append(accuracy(test, y_test, *discriminant(lab, y_lab, 4)))
        w, b, picked = self_train(lab, y_lab, 4, unl)
        trained.append(accuracy(test, y_test, w, b))
        per_class = len(unl) / 4
        assert len(picked) == len(SELF_TRAINING_SHARES)
        assert all(n <= round(s * per_class) * 4 for n, s in zip(picked, SELF_TRAINING_SHARES))  # capped per class
        assert picked == sorted(picked)  # a growing share each round
    assert np.mean(trained) > np.mean(plain) + 0.05, (plain, trained)


def test_self_training_without_unlabelled_videos_is_the_plain_discriminant() -> None:
    (lab, y_lab), _, _ = split_draw(0)
    w, b, picked = self_train(lab, y_lab, 4, np.zeros((0, lab.shape[1])))
    w0, b0 = discriminant(lab, y_lab, 4)
    assert picked == [] and np.array_equal(w, w0) and np.array_equal(b, b0)


def records(tax: Taxonomy) -> list[VideoRecord]:
    gens = ["real", *tax.generators]
    return [VideoRecord(f"{g}/{i}.mp4", 1, i, OK, g, tax.labels(g), "train") for i, g in enumerate(gens * 3)]


def test_one_video_per_class_and_no_real_videos_give_a_discriminant_of_ordinary_size() -> None:
    """No within-class spread and nothing to shrink it to: the identity was scaled by 1e-12, and the
    weights reached ~1e13 (every probability exactly 0 or 1)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 16))
    weights, bias = discriminant(emb, np.arange(3), 3)
    assert np.isfinite(weights).all() and np.abs(weights).max() < 100 and np.abs(bias).max() < 1e3
    assert ((emb + 0.1 * rng.normal(size=emb.shape)) @ weights.T + bias).argmax(1).tolist() == [0, 1, 2]


def test_choosing_the_trained_head_keeps_what_the_discriminant_recorded() -> None:
    import torch

    from saga.model import ModelConfig, VideoTransformer
    from saga.train.readout import choose_readout

    model = VideoTransformer(ModelConfig(in_dim=8, d_model=16, depth=1, heads=2, n_classes=2))
    scores = iter([0.5])  # the discriminant validates worse than the head's 0.9
    info = choose_readout(model, lambda m: {"readout": "lda", "labelled_videos": 4, "self_training": "on"},
                          lambda m: {"macro_accuracy": next(scores), "n": 10}, head_score=0.9)
    assert info["readout"] == "head" and info["labelled_videos"] == 4 and info["self_training"] == "on"
    assert info["val_macro_accuracy"] == {"head": 0.9, "lda": 0.5}
    del torch


def test_the_unlabelled_pool_leaves_out_labelled_videos_copies_and_levels_without_a_class_for_all(monkeypatch) -> None:
    tax = Taxonomy.load("synth")
    train = records(tax)
    train.append(VideoRecord(".augment/crf28/syn-sd/0.mp4", 1, 999, OK, "syn-sd", tax.labels("syn-sd"), "train"))
    from saga.cache.manifest import source_key

    assert source_key(train[-1].path)[0], "the test needs an augmented copy's name"
    labelled = {train[0].path, train[1].path}
    pool, why = unlabelled_pool(train, labelled, "GEN-L", tax, seed=0)
    assert why is None and len(pool) == len(train) - 3
    assert not labelled & {r.path for r in pool} and train[-1] not in pool
    pool, why = unlabelled_pool(train, labelled, "SD-L", tax, seed=0)  # a no-SD generator's video fits no class
    assert pool == [] and "SD-L gives no class" in why
    monkeypatch.setattr(readout, "MAX_UNLABELLED", 5)
    first, _ = unlabelled_pool(train, labelled, "TEAM-L", tax, seed=3)
    again, _ = unlabelled_pool(train, labelled, "TEAM-L", tax, seed=3)
    assert len(first) == 5 and first == again  # a seeded sample
    assert unlabelled_pool(train[:2], labelled, "GEN-L", tax, 0) == ([], "every train video is labelled")


def test_stage2_self_trains_on_its_unlabelled_train_videos_and_records_it(cache, tmp_path: Path) -> None:  # noqa: F811
    on = train_attribution(cache.root, tmp_path / "on", a_config(epochs=2))
    off = train_attribution(cache.root, tmp_path / "off", a_config(epochs=2, self_training=False))
    done_on = json.loads((on / "done.json").read_text())
    done_off = json.loads((off / "done.json").read_text())
    train = [r for r in cache.ok_records("train")]
    assert done_on["self_training"] == "on" and done_on["readout"] == "lda"
    assert done_on["unlabelled_videos"] == len(train) - done_on["labelled_videos"] > 0
    assert len(done_on["pseudo_labelled"]) == len(SELF_TRAINING_SHARES)
    assert done_off["self_training"] == "self_training = false" and done_off["unlabelled_videos"] == 0
    assert json.loads((on / "config.json").read_text())["train"]["self_training"] is True
    with pytest.raises(Exception, match="self_training must be true or false"):
        a_config(self_training="yes").check()


def test_the_readout_benchmark_reproduces_the_runs_own_readout(cache, tmp_path: Path) -> None:  # noqa: F811
    import os
    import subprocess
    import sys

    from saga.explain.metrics import compute_evaluation

    cells = tmp_path / "ablation"
    run = train_attribution(cache.root, cells / "2-stage_ce_seed0", a_config(epochs=2))
    script = Path(__file__).resolve().parents[1] / "bench" / "readout.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "--cache", str(cache.root), str(cells), "--pool-sizes", "3",
                           "--out", str(tmp_path / "st.json")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "st.json").read_text())
    row = result["runs"][0]
    # the default readout the benchmark refits is the one stage 2 wrote into the head
    assert row["sources_self_trained"] == pytest.approx(compute_evaluation(run, cache.root, probe=False)["accuracy"])
    assert set(row["default_on_subsample"]) == {"3"} and "ablation/2-stage_ce" in result["cells"]


def two_source_class(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, list[VideoRecord]]:
    """Class 0 is two generators on either side of class 1: its one mean sits on top of class 1's."""
    rng = np.random.default_rng(seed)
    means = {"gen-a": (0, -3.0), "gen-b": (0, 3.0), "gen-c": (1, 0.0)}
    recs, x, y = [], [], []
    for gen, (cls, centre) in means.items():
        for i in range(n):
            recs.append(VideoRecord(f"{gen}/{i}.mp4", 1, i, OK, gen, {}, "train"))
            x.append([centre, 0.0] + rng.normal(size=2) * 0.5)
            y.append(cls)
    return np.array(x), np.array(y), recs


def test_sources_fit_a_class_made_of_two_generators_that_one_mean_cannot() -> None:
    x, y, recs = two_source_class(0, 5)
    test_x, test_y, _ = two_source_class(1, 100)
    sub, groups, generators = source_subclasses(recs, y)
    assert groups == [0, 0, 1] and generators == ["gen-a", "gen-b", "gen-c"] and sub.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    none = np.zeros((0, 2))
    plain = readout_rows(x, y, 2, none, None)
    mixed = readout_rows(x, y, 2, none, None, (sub, groups))
    assert plain[2] == [] and mixed[2] == [0, 0, 1] and mixed[0].shape == (3, 2)

    def acc(rows: tuple) -> float:
        return float((class_logits(test_x, rows[0], rows[1], rows[2], 2).argmax(1) == test_y).mean())

    assert acc(mixed) > 0.95 and acc(plain) < 0.8
    # one source per class is the plain discriminant, whatever is asked
    same = readout_rows(x, sub, 3, none, None, (sub, [0, 1, 2]))
    assert same[2] == [] and np.array_equal(same[0], readout_rows(x, sub, 3, none, None)[0])
    # a class of k sources: each weighted 1/k, so the class gets no head start from having many
    assert np.allclose(mixture_bias(np.zeros(3), [0, 0, 1]), [-np.log(2), -np.log(2), 0.0])


def test_the_model_pools_subclass_rows_as_the_readout_does() -> None:
    x, y, recs = two_source_class(0, 5)
    model = VideoTransformer(ModelConfig(in_dim=4, d_model=2, depth=1, heads=1, n_classes=2))
    sub, groups, _ = source_subclasses(recs, y)
    w, b, subclass_of, _ = readout_rows(x, y, 2, np.zeros((0, 2)), None, (sub, groups))
    model.set_head(torch.from_numpy(w), torch.from_numpy(b), subclass_of)
    model.double()
    assert model.config.subclass_of == [0, 0, 1] and model.head.out_features == 3
    torch.testing.assert_close(model.logits(torch.from_numpy(x)).detach().numpy(), class_logits(x, w, b, subclass_of, 2))
    with pytest.raises(Exception, match="subclass_of must name every class"):
        model.set_head(torch.from_numpy(w), torch.from_numpy(b), [0, 0, 0])
    with pytest.raises(Exception, match="rows"):
        model.set_head(torch.from_numpy(w), torch.from_numpy(b), [0, 1])
    with pytest.raises(Exception, match="one name per subclass_of row"):
        model.set_head(torch.from_numpy(w), torch.from_numpy(b), subclass_of, ["a", "b"])
    model.set_head(torch.from_numpy(w), torch.from_numpy(b), subclass_of, ["g1", "g2", "g3"])
    assert ModelConfig.from_dict(model.config.to_dict()).subclass_names == ["g1", "g2", "g3"]
    model.reset_head(4)  # stage 2 on this θ: a plain fresh head again
    assert model.config.subclass_of == [] and model.logits(torch.zeros(1, 2, dtype=torch.float64)).shape == (1, 4)


def test_stage2_fits_each_class_as_its_labelled_sources_and_the_run_reloads_them(cache, tmp_path: Path) -> None:  # noqa: F811
    run = train_attribution(cache.root, tmp_path / "sources", a_config(epochs=2))
    done = json.loads((run / "done.json").read_text())
    model, info = load_model(run)
    subset = json.loads((run / "labelled.json").read_text())["classes"]
    by_generator = {r.path: r.generator for r in cache.ok_records("train")}
    wanted = [sorted({by_generator[p] for p in subset[c]}) for c in info.classes]
    assert done["sources"] == wanted and any(len(g) > 1 for g in wanted)  # TASK-L: several generators a class
    assert model.config.subclass_of == [k for k, gens in enumerate(wanted) for _ in gens]
    # trained on the sources too: the head had those rows from the first step
    assert json.loads((run / "config.json").read_text())["model"]["subclass_of"] == model.config.subclass_of
    assert model.head.out_features == sum(map(len, wanted)) > len(info.classes)
    assert model.config.subclass_names == [g for gens in wanted for g in gens]  # the checkpoint names its rows
    x = torch.randn(3, 8, model.config.in_dim)
    out = model(x)
    rows = model.head(out.embedding)
    first = len(wanted[0])
    torch.testing.assert_close(out.logits[:, 0], torch.logsumexp(rows[:, :first], dim=1))
    # beside it, evaluate's probe had the same labels: the generators, summed per class
    from saga.explain.metrics import compute_evaluation

    metrics = compute_evaluation(run, cache.root)
    assert metrics["probe"]["sources"] == [g for gens in wanted for g in gens]
    # "most like its labelled generator", scored on the test videos it can be right for
    src = metrics["nearest_source"]
    assert 0 < src["n"] <= metrics["n"] and 0 <= src["accuracy"] <= 1 and 0 < src["chance"] <= 0.5
    from saga.explain.metrics import metrics_table

    assert f"of {src['n']} correctly attributed videos of a labelled generator" in str(metrics_table(metrics).caption)
    off = train_attribution(cache.root, tmp_path / "off", a_config(epochs=2, sources=False))
    assert json.loads((off / "done.json").read_text())["sources"] == "off"
    assert json.loads((off / "config.json").read_text())["model"]["subclass_of"] == []
    assert load_model(off)[0].head.out_features == len(info.classes)
    assert "nearest_source" not in compute_evaluation(off, cache.root, probe=False)
    with pytest.raises(Exception, match="sources must be true or false"):
        a_config(sources=1).check()


def test_nearest_source_names_the_likeliest_row_of_the_predicted_class() -> None:
    from saga.explain.scores import source_metrics
    from saga.model.inference import Inference
    from saga.predict import nearest_source

    groups, names = [0, 0, 1, 1, 1], ["a", "b", "c", "d", "e"]
    probs = np.array([0.1, 0.3, 0.2, 0.1, 0.3])
    assert nearest_source(probs, 0, groups, names) == {"generator": "b", "share": 0.75, "rows": 2}
    assert nearest_source(probs, 1, groups, names)["generator"] == "e"
    assert nearest_source(probs, 1, groups, []) is None  # unnamed rows (a checkpoint from before names)
    row_probs = np.array([[0.6, 0.1, 0.1, 0.1, 0.1],   # class 0, names a: right
                          [0.6, 0.1, 0.1, 0.1, 0.1],   # class 0 but its generator b: wrong
                          [0.0, 0.0, 0.5, 0.3, 0.2],   # class 1, generator d: wrong (c)
                          [0.0, 0.0, 0.1, 0.1, 0.8],   # class 1, unlabelled generator f: not counted
                          [0.1, 0.0, 0.9, 0.0, 0.0]])  # class 0 predicted as 1: not counted
    class_probs = np.stack([row_probs[:, :2].sum(1), row_probs[:, 2:].sum(1)], axis=1)
    inf = Inference(logits=np.log(class_probs + 1e-9), probs=class_probs, embeddings=np.zeros((5, 2)),
                    targets=np.array([0, 0, 1, 1, 0]), paths=list("vwxyz"), mask=np.ones((5, 2), bool),
                    row_probs=row_probs)
    out = source_metrics(inf, ["a", "b", "d", "f", "a"], groups, names)
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(1 / 3)
    assert out["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3) and len(out["accuracy_ci"]) == 2
    assert source_metrics(inf, list("abdfa"), groups, []) is None
    from saga.explain.report import source_note

    assert "Most like its labelled generator: right for 33.3 % [" in source_note({"nearest_source": out})
    assert "of 3 correctly attributed videos" in source_note({"nearest_source": out}) and source_note({}) == ""
    from saga.commands.common import console
    from saga.commands.predict_cmds import _print_prediction
    from saga.predict import Prediction

    with console.capture() as text:  # the name is the user's data: printed as written, never as rich markup
        _print_prediction(Prediction("v.mp4", level="TEAM-L", predicted="Alibaba", confidence=0.9,
                                     probabilities={"Alibaba": 0.9}, source={"generator": "[red]x", "share": 0.75,
                                                                             "rows": 2}))
    assert "most like its labelled generator [red]x (75.0% of the class; 2 labelled generators)" in text.get()


def test_the_unlabelled_generators_benchmark_refits_the_runs_readout_and_its_variants(cache, tmp_path: Path) -> None:  # noqa: F811
    import os
    import subprocess
    import sys

    from saga.explain.metrics import compute_evaluation

    run = train_attribution(cache.root, tmp_path / "team", a_config(level="TEAM-L", fraction=0.01, floor=2, epochs=2))
    script = Path(__file__).resolve().parents[1] / "bench" / "unlabelled_generators.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "--cache", str(cache.root), str(run),
                           "--out", str(tmp_path / "ug.json")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((tmp_path / "ug.json").read_text())["runs"][0]
    assert row["default"][0] == pytest.approx(100 * compute_evaluation(run, cache.root, probe=False)["accuracy"])
    absent = row["unlabelled_generators"]  # 2 labels per team: a team of 3 always lacks one
    assert {"Tencent AI Lab", "Shanghai AI Lab"} <= set(absent)
    assert row["extra_labels"] == sum(map(len, absent.values())) and row["their_test_videos"] > 0
    assert all(0 <= row[v][0] <= 100 for v in ("split", "discover", "one_label_each", "oracle"))


def test_the_per_generator_benchmark_pairs_runs_and_scores_them_as_evaluate(cache, tmp_path: Path) -> None:  # noqa: F811
    import os
    import subprocess
    import sys

    from saga.explain.metrics import compute_evaluation

    cfg = dict(level="TEAM-L", fraction=0.01, floor=2, epochs=2)
    base = train_attribution(cache.root, tmp_path / "base", a_config(**cfg))
    variant = train_attribution(cache.root, tmp_path / "pergen", a_config(**cfg, per_generator=1))
    script = Path(__file__).resolve().parents[1] / "bench" / "per_generator.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "--cache", str(cache.root), "--base", str(base),
                           "--variant", str(variant), "--out", str(tmp_path / "pg.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "pg.json").read_text())
    row = result["pairs"][0]
    for i, run in enumerate((base, variant)):
        assert row["accuracy"][i] == pytest.approx(100 * compute_evaluation(run, cache.root, probe=False)["accuracy"])
    assert row["per_generator"] == [0, 1] and row["labels"][1] > row["labels"][0]
    assert row["unlabelled_generators"] and row["their_test_videos"] > 0  # a team of 3 at 2 labels lacks one
    assert result["summary"]["gain"][0] == pytest.approx(row["accuracy"][1] - row["accuracy"][0])
    unequal = subprocess.run([sys.executable, str(script), "--cache", str(cache.root), "--base", str(base),
                              "--variant", str(variant), str(base)], capture_output=True, text=True, env=env)
    assert unequal.returncode != 0 and "pair them one to one" in unequal.stderr
