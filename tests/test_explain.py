"""Explain tools: inference convention, metrics, T-Sigs, t-SNE and the HTML report (CPU, small)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from saga.cache.manifest import VideoRecord
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter, next_part_name
from saga.errors import SagaError
from saga.model.inference import Inference, infer, subwindow_starts, take_subwindow
from saga.explain.metrics import compute_metrics, evaluate, metrics_table
from saga.explain.report import build_report
from saga.explain.tsig import (class_signatures, load_tsigs, plot_video_profile, signature_distances,
                               video_signature, write_tsigs)
from saga.explain.tsne import perplexity_for, tsne_plot
from saga.model import ModelConfig, VideoTransformer
from saga.taxonomy import Taxonomy
from saga.runs import load_model, make_provenance, save_weights, write_json

T, W, D, TP = 8, 2, 12, 4  # cached frames, windows, feature dim, model frames T'
GENS = ["real", "syn-svd", "syn-pika", "syn-sd", "syn-hotshot"]


# -- fixtures: a tiny cache and a run folder written as docs/run-folder.md says --------------------
def provenance() -> dict[str, Any]:
    return cache_provenance(EncoderSpec.simulated(D, T, W, name="toy"), Taxonomy.load("synth"))


def make_cache(root: Path, per_gen: int = 4, prov: dict | None = None, seed: int = 0) -> FeatureCache:
    """Features carry the generator in one dim (plus noise); each generator's 2nd video is short. Another `seed`
    makes other videos (other features and mtimes), so a held-out cache shares none with the run's."""
    tax = Taxonomy.load("synth")
    cache = FeatureCache.create_or_open(root, prov or provenance())
    rng = np.random.default_rng(seed)
    writer = PartWriter(cache, next_part_name(cache), capacity=len(GENS) * per_gen * W)
    for g, gen in enumerate(GENS):
        for k in range(per_gen):
            feats = rng.normal(size=(W, T, D)).astype(np.float16)
            feats[..., g] += 3
            mask = np.ones((W, T), bool)
            if k == 1:
                mask[:, 3:] = False  # 3 real frames, then repeats of the last
                feats[:, 3:] = feats[:, 2:3]
            rec = VideoRecord(path=f"{gen}/v{k}.mp4", size=1, mtime_ns=1 + seed, status="ok", generator=gen,
                              labels=tax.labels(gen), split="test" if k < per_gen - 1 else "val")
            writer.add(rec, feats, mask, np.zeros((W, T), np.float32))
    writer.close()
    return FeatureCache.open(root)


def make_run(root: Path, cache: FeatureCache, level: str = "TASK-L", depth: int = 3, seed: int = 0) -> Path:
    classes = Taxonomy.load("synth").classes(level)
    mcfg = ModelConfig(in_dim=D, d_model=16, depth=depth, heads=2, max_frames=16, n_classes=len(classes),
                       dropout=0.0)
    torch.manual_seed(seed)
    model = VideoTransformer(mcfg)
    config = {"stage": 1, "level": level, "classes": classes, "frames": TP, "model": mcfg.to_dict(),
              "train": {"lr": 1e-3, "epochs": 1, "batch_size": 8, "seed": seed, "loss": "ce", "fraction": 1.0},
              "cache": str(cache.root)}
    prov = make_provenance(cache, seed)
    root.mkdir(parents=True)
    save_weights(root / "model.safetensors", model, epoch=3, metric=0.7)
    write_json(root / "config.json", config)
    write_json(root / "provenance.json", prov)
    (root / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "loss": 1.0 / (e + 1), "ce": 0.8 / (e + 1), "hnm": 0.2 / (e + 1),
                    "val_accuracy": 0.5 + e / 10, "val_macro_accuracy": 0.4 + e / 10}) + "\n" for e in range(4)))
    (root / "done.json").write_text(json.dumps({"best_epoch": 3, "best_metric": 0.7}))
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("explain")
    cache = make_cache(base / "cache")
    return {"base": base, "cache": cache, "run": make_run(base / "runs" / "task", cache)}


# -- infer -----------------------------------------------------------------------------------------
def test_subwindow_is_centred_on_real_frames() -> None:
    full = np.ones((1, 8), bool)
    assert subwindow_starts(full, 4).tolist() == [2]  # (T - T') // 2
    short = np.arange(8)[None] < 3
    assert subwindow_starts(short, 4).tolist() == [0]  # clipped: keeps all 3 real frames
    late = (np.arange(8) >= 5)[None]
    assert subwindow_starts(late, 2).tolist() == [5]
    feats = np.arange(8, dtype=np.float32)[None, :, None]
    sub, m = take_subwindow(feats, full, 4)
    assert sub[0, :, 0].tolist() == [2, 3, 4, 5] and m.all()
    with pytest.raises(SagaError, match="frames"):
        subwindow_starts(full, 9)


def test_infer_shapes_and_eval_convention(world: dict[str, Any]) -> None:
    model, info = load_model(world["run"])
    cache: FeatureCache = world["cache"]
    recs = cache.ok_records("test")
    out = infer(model, info, cache, recs, batch_size=3, attention=True)
    n, c = len(recs), len(info.classes)
    assert out.logits.shape == (n, c) and out.probs.shape == (n, c) and out.embeddings.shape == (n, 16)
    assert out.attn.shape == (n, TP, TP) and out.mask.shape == (n, TP)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
    assert out.paths == [r.path for r in recs]
    assert set(out.targets.tolist()) <= {0, 1, 2}
    # by hand for one full and one short video
    data = cache.read(recs[:2])
    for i in range(2):
        x = torch.from_numpy(data["features"][i].astype(np.float32))
        m = torch.from_numpy(data["mask"][i])
        start = 2 if m[0].all() else 0
        with torch.no_grad():
            o = model(x[:, start:start + TP], m[:, start:start + TP], return_attn=True)
        np.testing.assert_allclose(out.logits[i], o.logits.mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(out.probs[i], o.logits.softmax(-1).mean(0).numpy(), atol=1e-5)
        emb = torch.nn.functional.normalize(o.embedding[0], dim=0).numpy()
        np.testing.assert_allclose(out.embeddings[i], emb, atol=1e-5)
        np.testing.assert_allclose(out.attn[i], o.attn[-2][0].mean(0).numpy(), atol=1e-5)  # penultimate block
        assert out.mask[i].tolist() == m[0, start:start + TP].tolist()
    assert out.mask[1].sum() == 3  # the short video keeps its 3 real frames
    same = infer(model, info, cache, recs, batch_size=256)  # batching changes nothing
    np.testing.assert_allclose(same.probs, out.probs, atol=1e-5)
    assert same.attn is None


# -- metrics ---------------------------------------------------------------------------------------
def _inference(probs: np.ndarray, targets: list[int]) -> Inference:
    n = len(targets)
    return Inference(np.log(probs), probs, np.zeros((n, 2)), np.array(targets), [str(i) for i in range(n)],
                     np.ones((n, 4), bool))


def test_compute_metrics_known_answer() -> None:
    p = np.eye(3)[[0, 0, 1, 2, 2, 2, 1]] * 0.9 + 0.1 / 3
    m = compute_metrics(_inference(p, [0, 0, 1, 2, 2, 1, -1]), ["real", "T2V", "I2V"], "TASK-L")
    assert m["n"] == 6  # -1 (no class at the level) excluded
    assert m["confusion"] == [[2, 0, 0], [0, 1, 1], [0, 0, 2]]
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["per_class"] == {"real": 1.0, "T2V": 0.5, "I2V": 1.0}
    assert m["macro_accuracy"] == pytest.approx(2.5 / 3)
    assert m["per_class_n"] == {"real": 2, "T2V": 2, "I2V": 2}
    assert m["auc"] is None  # only BIN-L has an AUC
    absent = compute_metrics(_inference(p[:2], [0, 0]), ["real", "T2V", "I2V"], "TASK-L")
    assert absent["per_class"]["T2V"] is None and absent["macro_accuracy"] == 1.0  # absent classes not averaged


def test_binary_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    fake = rng.random(40)
    p = np.stack([1 - fake, fake], 1)
    y = (rng.random(40) < 0.5).astype(int)
    m = compute_metrics(_inference(p, y.tolist()), ["real", "fake"], "BIN-L")
    assert m["auc"] == pytest.approx(roc_auc_score(y, fake))
    assert compute_metrics(_inference(p, [1] * 40), ["real", "fake"], "BIN-L")["auc"] is None


def test_evaluate_matches_sklearn_and_writes_files(world: dict[str, Any]) -> None:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

    run, cache = world["run"], world["cache"]
    res = evaluate(run, cache.root, "test")
    model, info = load_model(run)
    recs = cache.ok_records("test")
    out = infer(model, info, cache, recs)
    y, pred = out.targets, out.preds
    assert res["n"] == len(recs) and res["cache_id"] == cache.cache_id and res["split"] == "test"
    assert res["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert res["macro_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert res["confusion"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    assert res["auc"] is None
    # 95 % intervals beside every accuracy; 3 test videos per class: all flagged as few
    assert res["accuracy_ci"][0] <= res["accuracy"] <= res["accuracy_ci"][1]
    assert res["macro_accuracy_ci"][0] <= res["macro_accuracy"] <= res["macro_accuracy_ci"][1]
    assert set(res["per_class_ci"]) == set(info.classes) and res["few"] == info.classes
    assert "train" in res["probe"]["skipped"]  # this cache has no train split: no probe, evaluation goes on
    saved = json.loads((run / "metrics-test.json").read_text())
    assert saved == json.loads((run / "metrics.json").read_text()) and saved["accuracy"] == res["accuracy"]
    assert not list(run.glob(".*tmp*"))
    assert metrics_table(res).row_count == 3


def test_evaluate_bin_and_sd_levels(world: dict[str, Any]) -> None:
    cache = world["cache"]
    binr = evaluate(make_run(world["base"] / "runs" / "bin", cache, "BIN-L"), cache.root)
    assert binr["classes"] == ["real", "fake"] and binr["auc"] is not None
    sd = evaluate(make_run(world["base"] / "runs" / "sd", cache, "SD-L"), cache.root)
    assert sd["excluded"] == 3 and sd["n"] == 12  # syn-pika has no SD backbone
    assert sd["per_class_n"]["SD 2.1"] == 3 and sd["per_class"]["SD 1.4"] is None


def test_evaluate_refuses_a_foreign_cache(world: dict[str, Any], tmp_path: Path) -> None:
    same_encoder = make_cache(tmp_path / "same")
    with pytest.warns(UserWarning, match="not the run's training cache"):
        evaluate(world["run"], same_encoder.root, out=tmp_path / "eval")  # the shared run folder stays as it is
    other = make_cache(tmp_path / "other", prov={**provenance(), "weights_fingerprint": "zzz"})
    with pytest.raises(SagaError, match="weights_fingerprint"):
        evaluate(world["run"], other.root)


# -- T-Sigs ----------------------------------------------------------------------------------------
def test_identity_attention_puts_all_mass_at_zero() -> None:
    sig = video_signature(np.eye(6))
    assert sig["profile"].tolist() == [1, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(sig["map"].sum(1), 1.0)


def test_handcrafted_profile_and_padding_excluded() -> None:
    a = np.zeros((5, 5))
    for i in range(5):  # each frame attends half to itself, half to the next one (last: itself only)
        a[i, i] = 0.5 if i < 4 else 1.0
        if i < 4:
            a[i, i + 1] = 0.5
    sig = video_signature(a)
    raw = np.array([(0.5 * 4 + 1) / 5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(sig["profile"], raw / raw.sum(), atol=1e-6)
    assert len(sig["profile"]) == 5 and sig["profile"].sum() == pytest.approx(1.0)
    # the same 3 real frames followed by 2 padded ones full of garbage: garbage must not count
    b = np.full((5, 5), 7.0)
    b[:3, :3] = np.eye(3)
    padded = video_signature(b, np.array([1, 1, 1, 0, 0], bool))
    assert padded["profile"].tolist() == [1, 0, 0, 0, 0]
    assert padded["map"][3:].sum() == 0 and padded["map"][:, 3:].sum() == 0


def test_class_signatures_rows_and_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    attn = rng.random((6, 4, 4))
    attn /= attn.sum(-1, keepdims=True)
    mask = np.ones((6, 4), bool)
    mask[5, 2:] = False
    attn[5, :, 2:] = 0
    attn[5] /= attn[5].sum(-1, keepdims=True)
    inf = Inference(np.zeros((6, 3)), np.full((6, 3), 1 / 3), np.zeros((6, 2)), np.array([0, 0, 1, 1, 1, 1]),
                    [f"v{i}" for i in range(6)], mask, attn)
    sigs = class_signatures(inf, ["real", "T2V", "I2V"])
    assert list(sigs) == ["real", "T2V"]  # I2V has no video
    for s in sigs.values():
        np.testing.assert_allclose(s["map"].sum(1), 1.0, atol=1e-6)  # rows stay distributions
        assert s["profile"].shape == (4,) and s["profile"].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(sigs["real"]["map"], attn[:2].mean(0), atol=1e-6)
    np.testing.assert_allclose(sigs["T2V"]["map"][2], attn[2:5, 2].mean(0), atol=1e-6)  # row 2 real in 3 videos
    paths = write_tsigs(sigs, tmp_path)
    assert all(p.is_file() for p in paths.values())
    back = load_tsigs(tmp_path)
    np.testing.assert_allclose(back["T2V"]["profile"], sigs["T2V"]["profile"])
    assert (tmp_path / "tsig_profiles.csv").read_text().splitlines()[0] == "class,n,d0,d1,d2,d3"
    one = video_signature(attn[0], mask[0])
    assert next(iter(signature_distances(one["profile"], sigs))) in sigs
    assert plot_video_profile(one, sigs, tmp_path / "video.png", "v0").stat().st_size > 1000
    with pytest.raises(SagaError, match="attention"):
        class_signatures(Inference(*[getattr(inf, k) for k in ("logits", "probs", "embeddings", "targets",
                                                              "paths", "mask")]), ["real"])


# -- t-SNE -----------------------------------------------------------------------------------------
def test_tsne_png_legend_and_csv(world: dict[str, Any], tmp_path: Path) -> None:
    model, info = load_model(world["run"])
    cache = world["cache"]
    recs = cache.ok_records()
    out = infer(model, info, cache, recs)
    # a TASK-L run coloured by generator
    res = tsne_plot(out, recs, "GEN-L", cache.taxonomy, tmp_path / "tsne_gen.png", max_iter=250)
    assert res.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.coords.shape == (len(recs), 2) and len(res.legend) == len(GENS)
    assert res.legend[0].startswith("real")
    rows = res.csv.read_text().splitlines()
    assert rows[0] == "path,generator,label,x,y" and len(rows) == len(recs) + 1
    sd = tsne_plot(out, recs, "SD-L", cache.taxonomy, tmp_path / "tsne_sd.png", max_iter=250)
    assert any(t.startswith("(no class") for t in sd.legend)  # syn-pika has no SD backbone
    assert perplexity_for(4) == 1.0 and perplexity_for(1000) == 30.0


# -- report ----------------------------------------------------------------------------------------
def test_report_is_self_contained(world: dict[str, Any], tmp_path: Path) -> None:
    run, cache = world["run"], world["cache"]
    evaluate(run, cache.root)
    model, info = load_model(run)
    recs = cache.ok_records("test")
    out = infer(model, info, cache, recs, attention=True)
    write_tsigs(class_signatures(out, info.classes), run)
    tsne_plot(out, recs, "GEN-L", cache.taxonomy, run / "tsne_gen.png", max_iter=250)
    other = make_run(tmp_path / "runs" / "bin<&>", cache, "BIN-L")
    evaluate(other, cache.root)
    (tmp_path / "runs" / "ablation.json").write_text(json.dumps(
        [{"setting": "2-stage CE+HNM", "accuracy": 0.95}, {"setting": "1-stage CE", "accuracy": 0.25}]))
    html_path = build_report([run, other], tmp_path / "out" / "report.html")
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>") and 'name="viewport"' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == 4 + 1  # 4 figs + 1 curve
    assert "Per-class accuracy" in html and 'class="conf"' in html and "Ablation" in html
    assert "2-stage CE+HNM" in html and "bin&lt;&amp;&gt;" in html and "bin<&>" not in html
    assert html.count("<details>") == 2 and "ROC AUC" in html
    assert "95 % CI" in html and "class=few" in html and "Linear probe not fitted" in html


@pytest.mark.parametrize("command, example", [("tsig", "e.g. tsig_maps-train.png"),
                                              ("tsne", "e.g. tsne_<level>-train.png")])
def test_split_help_names_the_commands_own_files(command: str, example: str) -> None:
    """`saga tsne --help` used to give tsig_maps-train.png (a file only tsig writes) as its --split example."""
    from typer.testing import CliRunner

    from saga.cli import app

    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"}).stdout
    assert example in text and ("tsig_" in text) == (command == "tsig")
