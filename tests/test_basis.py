"""The fixed content basis: fitted on the train pool, saved with the weights, inherited by stage 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saga.errors import SagaError
from saga.model import ModelConfig, VideoTransformer
from saga.runs import load_model
from saga.train.attribute import load_base, prepare_model, train_attribution
from saga.train.basis import fit_basis, fit_to_pool, video_means
from saga.train.stage1 import train_stage1
from test_train import D, T, a_config, build_cache, s1_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    return build_cache(tmp_path_factory.mktemp("basis") / "c")


def test_pca_basis_gives_unit_variance_uncorrelated_coordinates() -> None:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    centre, basis = fit_basis(means, np.zeros(200, bool), 4, "pca")
    z = (means - centre) @ basis
    assert basis.shape == (12, 4) and basis.dtype == np.float32
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(4), atol=1e-4)


def test_gev_basis_finds_the_directions_only_fakes_vary_in() -> None:
    rng = np.random.default_rng(1)
    content = rng.normal(size=(400, 10)) * np.array([5.0] * 5 + [0.1] * 5)  # content: the first 5 dims
    real = np.arange(400) < 150
    marks = np.zeros((400, 10))
    marks[~real, 7] = rng.choice([-1.0, 1.0], size=(~real).sum())  # generators differ along dim 7 only
    _, basis = fit_basis(content + marks, real, 1, "gev")
    assert np.argmax(np.abs(basis[:, 0])) == 7
    with pytest.raises(SagaError, match="2 real and 2 fake"):
        fit_basis(content, np.zeros(400, bool), 1, "gev")


def test_fit_basis_refuses_impossible_sizes() -> None:
    with pytest.raises(SagaError, match="lower content_basis"):
        fit_basis(np.zeros((5, 8)), np.zeros(5, bool), 6, "pca")
    with pytest.raises(SagaError, match="method"):
        fit_basis(np.zeros((50, 8)), np.zeros(50, bool), 2, "lda")


def test_model_reads_content_through_the_basis_and_padding_still_changes_nothing() -> None:
    torch.manual_seed(0)
    model = VideoTransformer(ModelConfig(in_dim=D, d_model=16, depth=1, heads=2, n_classes=3, content_basis=3)).eval()
    assert model.in_norm.normalized_shape == (3,)
    model.set_basis(torch.randn(D), torch.randn(D, 3))
    x, mask = torch.randn(2, T, D), torch.ones(2, T, dtype=torch.bool)
    mask[1, 5:] = False
    y = x.clone()
    y[1, 5:] = 1e4
    torch.testing.assert_close(model(x, mask).logits, model(y, mask).logits)
    # only the basis' span of the content reaches θ
    null = torch.linalg.svd(model.basis.T, full_matrices=True).Vh[3:]  # (D-3, D), orthogonal to the basis
    z = x + (torch.randn(2, T, D - 3) @ null)
    out = model(z, mask)  # the temporal tokens see the change, the content path does not
    assert torch.allclose(model._content(z), model._content(x), atol=1e-4) and out.logits.shape == (2, 3)
    with pytest.raises(SagaError, match="needs"):
        model.set_basis(torch.zeros(D), torch.zeros(D, 4))
    with pytest.raises(SagaError, match="content_basis"):
        ModelConfig(in_dim=4, content_basis=5)


def test_stage1_fits_the_basis_saves_it_and_stage2_inherits_it(cache, tmp_path: Path) -> None:
    run = train_stage1(cache.root, tmp_path / "s1", s1_config(epochs=1, content_basis=4, basis_method="gev"))
    saved = load_file(str(run / "model.safetensors"))
    assert saved["basis"].shape == (D, 4) and saved["basis"].abs().sum() > 0
    expected = VideoTransformer(ModelConfig(in_dim=D, content_basis=4, n_classes=2))
    fit_to_pool(expected, cache, cache.ok_records("train"), "gev", 0, T)
    torch.testing.assert_close(saved["basis"], expected.basis)  # the whole train pool, deterministic
    model, _ = load_model(run)
    torch.testing.assert_close(model.basis, saved["basis"])
    with pytest.raises(SagaError, match=r"content_basis = 9 \(the stage-1 run's: 4\)"):  # would be ignored
        prepare_model(cache, a_config(content_basis=9), 3, T, load_base(run, cache))
    stage2 = prepare_model(cache, a_config(), 3, T, load_base(run, cache))
    assert stage2.config.content_basis == 4  # stage 2 keeps stage 1's θ, basis included
    torch.testing.assert_close(stage2.basis, saved["basis"])


def test_one_stage_fits_its_own_label_free_basis(cache) -> None:
    model = prepare_model(cache, a_config(content_basis=3), 3, T, None)
    means = video_means(cache, list(cache.ok_records("train")))
    centre, basis = fit_basis(means, np.zeros(len(means), bool), 3, "pca")
    np.testing.assert_allclose(model.basis.numpy(), basis, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.basis_mean.numpy(), centre, rtol=1e-5, atol=1e-6)


def test_window_statistics_of_a_known_sequence_ignore_padding() -> None:
    from saga.model.temporal import sequence_statistics, stats_dim

    e1, e2 = torch.eye(4, dtype=torch.float64)[0], torch.eye(4, dtype=torch.float64)[1]
    x = torch.stack([e1, 2 * e2] * 4)[None]  # period 2: lag-1 cosine distance 1, lag-2 0
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, 6:] = False
    x_padded = x.clone()
    x_padded[0, 6:] = 7.0  # padding must not count
    out = sequence_statistics(x_padded, mask, 3)[0].numpy()
    assert out.shape == (stats_dim(3),) and out.dtype == np.float64
    cos_moments, cos_acf = out[:12].reshape(3, 4), out[12:15]
    np.testing.assert_allclose(cos_moments[0], [1, 0, 1, 1])  # lag 1: mean, std, min, max
    np.testing.assert_allclose(cos_moments[1], [0, 0, 0, 0], atol=1e-12)  # lag 2: the same frame again
    np.testing.assert_allclose(cos_moments[2], [1, 0, 1, 1])
    np.testing.assert_allclose(cos_acf, 0.0)  # a constant sequence has no autocorrelation
    norm_moments = out[15:27].reshape(3, 4)
    np.testing.assert_allclose(norm_moments[0], [np.sqrt(5), 0, np.sqrt(5), np.sqrt(5)])  # |2 e2 - e1|
    np.testing.assert_allclose(norm_moments[1], [0, 0, 0, 0], atol=1e-12)
    assert torch.equal(sequence_statistics(x_padded, mask, 3), sequence_statistics(x, mask, 3))


def test_window_statistics_reach_phi_standardised_and_ignore_padding(cache, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VideoTransformer(ModelConfig(in_dim=D, d_model=16, depth=1, heads=2, n_classes=3, video_stats=2)).eval()
    fit_to_pool(model, cache, cache.ok_records("train"), "pca", 0, T)
    assert model.stats_std.min() > 0 and model.stats_mean.abs().sum() > 0
    x, mask = torch.randn(2, T, D), torch.ones(2, T, dtype=torch.bool)
    mask[1, 5:] = False
    y = x.clone()
    y[1, 5:] = 1e4
    torch.testing.assert_close(model(x, mask).embedding, model(y, mask).embedding)
    z = x.clone()
    z[0, 3] = z[0, 2]  # a held frame changes the statistics, hence φ
    assert not torch.allclose(model(z, mask).embedding[0], model(x, mask).embedding[0])
    run = train_stage1(cache.root, tmp_path / "s1", s1_config(epochs=1, video_stats=2))
    loaded, _ = load_model(run)
    assert loaded.config.video_stats == 2 and loaded.stats_std.min() > 0


def test_basis_is_narrowed_to_the_pool_and_a_large_pool_is_sampled(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.train import basis as basis_module

    assert a_config(content_basis=500).model_config(D, 3, T, pool_size=1000).content_basis == D
    assert a_config(content_basis=500).model_config(D, 3, T, pool_size=6).content_basis == 5
    seen: list[int] = []
    real_read = basis_module.pool_summaries
    monkeypatch.setattr(basis_module, "pool_summaries",
                        lambda c, recs, *a: seen.append(len(recs)) or real_read(c, recs, *a))
    monkeypatch.setattr(basis_module, "MAX_VIDEOS", 10)
    model = VideoTransformer(ModelConfig(in_dim=D, d_model=16, depth=1, heads=2, n_classes=3, content_basis=3))
    fit_to_pool(model, cache, cache.ok_records("train"), "pca", 0, T)
    assert seen == [10] and model.basis.abs().sum() > 0


def test_discriminant_separates_gaussian_classes_and_is_the_head(cache, tmp_path: Path) -> None:
    from saga.train.readout import discriminant, embed

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 6)) * 3
    y = np.repeat(np.arange(3), 4)
    emb = centres[y] + rng.normal(size=(12, 6))
    w, b = discriminant(emb, y, 3, real_emb=rng.normal(size=(30, 6)))
    test_y = np.repeat(np.arange(3), 50)
    test = centres[test_y] + rng.normal(size=(150, 6))
    assert ((test @ w.T + b).argmax(1) == test_y).mean() > 0.9
    with pytest.raises(SagaError, match="all 4 classes"):
        discriminant(emb, y, 4)
    # end to end: stage 2 replaces its head by the discriminant of its labelled videos, saved in model.safetensors
    run = train_attribution(cache.root, tmp_path / "lda", a_config(epochs=2, readout="lda", self_training=False,
                                                                   sources=False))
    head_run = train_attribution(cache.root, tmp_path / "head", a_config(epochs=2, readout="head", sources=False))
    done = json.loads((run / "done.json").read_text())
    assert done["readout"] == "lda" and done["labelled_videos"] > 0 and done["real_videos"] > 0
    assert set(done["val_macro_accuracy"]) == {"head", "lda"}  # both recorded, the discriminant kept
    model, info = load_model(run)
    trained, _ = load_model(head_run)
    for name, tensor in trained.state_dict().items():  # same training, only the head differs
        assert torch.equal(tensor, model.state_dict()[name]) != name.startswith("head."), name
    subset = json.loads((run / "labelled.json").read_text())["classes"]
    recs = [r for r in cache.ok_records("train") if any(r.path in p for p in subset.values())]
    targets = np.array([info.classes.index(next(c for c, p in subset.items() if r.path in p)) for r in recs])
    reals = [r for r in cache.ok_records("train") if r.labels["BIN-L"] == "real"]
    w, b = discriminant(embed(model, cache, recs, T, 64, torch.device("cpu")), targets, len(info.classes),
                        embed(model, cache, reals, T, 64, torch.device("cpu")))
    torch.testing.assert_close(model.head.weight.double(), torch.from_numpy(w), rtol=1e-4, atol=1e-4)
    # readout = "auto": the validation videos pick one of the two, recorded in done.json
    auto = train_attribution(cache.root, tmp_path / "auto", a_config(epochs=2, readout="auto", self_training=False,
                                                                     sources=False))
    done = json.loads((auto / "done.json").read_text())
    assert done["chosen_by"] == "val_macro_accuracy" and set(done["val_macro_accuracy"]) == {"head", "lda"}
    chosen = {"lda": model, "head": trained}[done["readout"]]
    assert torch.equal(load_model(auto)[0].head.weight, chosen.head.weight)
    with pytest.raises(SagaError, match="readout"):
        a_config(readout="knn").check()


@pytest.mark.parametrize(("head_acc", "lda_acc", "kept"), [(0.9, 0.5, "head"), (0.5, 0.9, "lda"), (0.7, 0.7, "lda")])
def test_auto_readout_keeps_what_validates_better(head_acc: float, lda_acc: float, kept: str) -> None:
    from saga.train.readout import choose_readout

    model = VideoTransformer(ModelConfig(in_dim=D, d_model=16, depth=1, heads=2, n_classes=3))
    trained = model.head.weight.detach().clone()

    def fit(m: VideoTransformer) -> dict[str, object]:
        with torch.no_grad():
            m.head.weight.fill_(7.0)
        return {"readout": "lda"}

    def validate(m: VideoTransformer) -> dict[str, object]:
        return {"macro_accuracy": lda_acc if bool((m.head.weight == 7.0).all()) else head_acc, "n": 9}

    info = choose_readout(model, fit, validate)
    assert info["readout"] == kept and info["val_macro_accuracy"] == {"head": head_acc, "lda": lda_acc}
    assert torch.equal(model.head.weight, trained) == (kept == "head")
    assert choose_readout(model, fit, None)["readout"] == "lda"  # no validation videos: the discriminant
    assert choose_readout(model, fit, validate, switch=False)["readout"] == "lda"  # readout = "lda": scores only
