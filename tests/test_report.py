"""The HTML report rendered by a real browser (headless Chromium): DOM, images, phone and desktop sizes."""

from __future__ import annotations

import base64
import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from saga.cache.manifest import VideoRecord
from saga.model.inference import Inference
from saga.explain.report import build_report
from saga.explain.tsig import class_signatures, write_tsigs
from saga.explain.tsne import tsne_plot
from saga.taxonomy import Taxonomy

CHROMIUM = Path("/usr/bin/chromium")
PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium not installed (apt-get install -y chromium)")


def _fake_run(root: Path, level: str, seed: int) -> Path:
    """A finished, evaluated run folder with every artefact the report shows (no model needed)."""
    tax = Taxonomy.load("synth")
    classes = tax.classes(level)
    gens = ["real", *tax.generators]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    c = len(classes)
    conf = (np.eye(c, dtype=int) * 40 + rng.integers(0, 4, (c, c))).tolist()
    per_n = [sum(r) for r in conf]
    metrics = {"level": level, "split": "test", "n": sum(per_n), "classes": classes, "confusion": conf,
               "per_class": {k: conf[i][i] / per_n[i] for i, k in enumerate(classes)},
               "per_class_n": dict(zip(classes, per_n)), "accuracy": 0.9, "macro_accuracy": 0.88,
               "auc": 0.99 if level == "BIN-L" else None, "cache_id": "c" * 32,
               "accuracy_ci": [0.87, 0.92], "macro_accuracy_ci": [0.85, 0.91],
               "per_class_ci": {k: [0.8, 0.95] for k in classes}, "few": []}
    metrics["probe"] = {**metrics, "accuracy": 0.61, "macro_accuracy": 0.55, "accuracy_ci": [0.58, 0.64],
                        "macro_accuracy_ci": [0.5, 0.6], "n_train": 40, "C": 1.0, "subset": {"source": "labelled.json"}}
    config = {"stage": 2, "level": level, "classes": classes, "frames": 16, "model": {"depth": 4},
              "train": {"loss": "ce+hnm", "fraction": 0.005, "lr": 1e-4}, "cache": "/data/cache"}
    files = {"metrics.json": metrics, "metrics-test.json": metrics, "config.json": config,
             "provenance.json": {"cache_id": "c" * 32, "encoder": {"encoder": "ViT-SO400M-14-SigLIP-384"}},
             "done.json": {"best_epoch": 7}}
    for name, data in files.items():
        (root / name).write_text(json.dumps(data))
    (root / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "loss": 2 / (e + 1), "ce": 1.5 / (e + 1), "hnm": 0.5 / (e + 1), "val_accuracy": 0.5 + e / 20,
         "val_macro_accuracy": 0.45 + e / 20}) + "\n" for e in range(10)))
    n, t = 60, 8
    attn = rng.random((n, t, t)) + 3 * np.eye(t)
    attn /= attn.sum(-1, keepdims=True)
    recs = [VideoRecord(f"{g}/{i}.mp4", 1, 1, "ok", g, tax.labels(g), "test") for i, g in
            enumerate(gens[i % len(gens)] for i in range(n))]
    targets = np.array([classes.index(r.labels[level]) for r in recs])
    emb = rng.normal(size=(n, 8)) + np.eye(8)[targets % 8] * 4
    inf = Inference(np.zeros((n, c)), np.full((n, c), 1 / c), emb, targets, [r.path for r in recs],
                    np.ones((n, t), bool), attn)
    write_tsigs(class_signatures(inf, classes), root)
    tsne_plot(inf, recs, "GEN-L", tax, root / "tsne_gen.png", max_iter=250)
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    runs = [_fake_run(base / "runs" / "gen-2stage", "GEN-L", 0), _fake_run(base / "runs" / "bin", "BIN-L", 1)]
    (base / "runs" / "ablation.md").write_text(
        "# GEN-L ablation at 0.5 %\n\n| setting | accuracy % |\n|---|---:|\n| 1-stage CE | 24.55 |\n"
        "| 2-stage CE+HNM | 94.99 |\n")
    return build_report(runs, base / "report.html")


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_dom_shows_tables_and_images(report: Path, tmp_path: Path) -> None:
    res = _chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", report.as_uri())
    dom = res.stdout
    assert "<table" in dom, res.stderr[-2000:]
    assert dom.count('class="conf"') == 2 and "Per-class accuracy" in dom and "Ablation" in dom
    assert "2-stage CE+HNM" in dom and "syn-hotshot" in dom
    assert "probe acc %" in dom and "95 % CI" in dom and "[87.0–92.0]" in dom
    imgs = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', dom)
    assert len(imgs) == 2 * 4  # per run: training curve, T-Sig maps, T-Sig profiles, t-SNE
    assert all(base64.b64decode(b).startswith(PNG) for b in imgs)


@pytest.mark.parametrize("width", [390, 1280])
def test_images_decode_and_page_fits_the_screen(report: Path, tmp_path: Path, width: int) -> None:
    """The report in an iframe of a phone's / desktop's width, probed by a script in the test page only.

    (An iframe, because headless Chromium will not make a window narrower than 500 px.)
    Every image must decode, and the page must not scroll sideways: wide tables scroll in their box.
    """
    probe = ("<script>addEventListener('load',()=>{const f=document.getElementById('f').contentDocument;"
             "const d=f.documentElement;document.body.setAttribute('data-probe',JSON.stringify({sw:d.scrollWidth,"
             "cw:d.clientWidth,imgs:Array.from(f.images).map(i=>i.complete?i.naturalWidth:-1)}))});</script>")
    page = tmp_path / "probe.html"
    page.write_text(f'<!DOCTYPE html><html><body style="margin:0">{probe}<iframe id="f" '
                    f'style="width:{width}px;height:844px;border:0" srcdoc="{html.escape(report.read_text())}">'
                    "</iframe></body></html>")
    res = _chromium(tmp_path, "--window-size=1400,900", "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    found = re.search(r'data-probe="([^"]*)"', res.stdout)
    assert found, res.stderr[-2000:]
    data = json.loads(html.unescape(found.group(1)))
    assert len(data["imgs"]) == 8 and all(w > 0 for w in data["imgs"]), data
    assert width - 20 <= data["cw"] <= width and data["sw"] <= data["cw"], data


@pytest.mark.parametrize("size", ["390,844", "1280,900"])
def test_screenshots(report: Path, tmp_path: Path, size: str) -> None:
    shot = tmp_path / f"shot-{size.replace(',', 'x')}.png"
    res = _chromium(tmp_path, f"--window-size={size}", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), res.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(PNG)
    assert int.from_bytes(data[16:20], "big") == int(size.split(",")[0])
