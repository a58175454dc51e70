"""t-SNE of the video embeddings φ, coloured by the class at any level.

Colouring by a level other than the run's (a TEAM-L run coloured by generator)
shows whether the embedding separates finer sources than it was trained on, which
is the question behind the paper's t-SNE figures. The PNG records what it was made from in its
metadata (`saga:<key>`), and so does a JSON beside it: the weights (`run_model`, `run_finished`:
`saga report` leaves out a map of older weights), the data (`split`, `cache_id`: the report says
which split each map shows and flags another cache than the run's) and the t-SNE settings
(`tsne_seed`, `perplexity`, `max_iter`, `method`). A split other than test gets its own file
name (`tsne_<level>-<split>.png`), so it never replaces the test map; so does a held-out cache
(`tsne_<level>@<cache>-<id8>.png`), so it never replaces the map of the run's own cache. The videos the run was
trained or validated on are not mapped (`saga.explain.seen`): the JSON records them as `seen_in_training`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from saga.cache.manifest import VideoRecord
from saga.errors import SagaError
from saga.cache.store import FeatureCache
from saga.explain.metrics import data_label, data_stamp, warn_unfinished, weights_stamp
from saga.explain.seen import SEEN_KEY, only_unseen
from saga.explain.split_flags import figure_flag, warn_figures
from saga.model.inference import Inference, infer
from saga.fileio import atomic_path, write_json
from saga.runs import check_cache, heldout_tag, load_model, on_cache, tsne_file
from saga.taxonomy import Taxonomy, check_level

NO_CLASS = "(no class at this level)"


@dataclass
class TsneResult:
    png: Path
    csv: Path
    coords: np.ndarray  # (n, 2)
    labels: list[str]
    legend: list[str]  # the legend entries, in drawing order
    json: Path | None = None  # what the map was made from (the PNG's metadata, readable without it)


def class_colors(n: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours for up to 20 classes, then an evenly spaced hue wheel.

    tab20 lists each hue dark then light; taking the ten dark ones first keeps
    neighbouring classes apart (up to 10 classes this is exactly tab10).
    """
    if n <= 20:
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [colormaps["tab20"](order[i]) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def perplexity_for(n: int) -> float:
    """sklearn needs perplexity < n; (n - 1) / 3 keeps ~3 neighbours per point on tiny sets."""
    return float(max(1.0, min(30.0, (n - 1) / 3)))


def label_points(records: Sequence[VideoRecord], level: str, taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    """Each record's class at `level` and the class order (taxonomy order; unknown labels last)."""
    check_level(level)
    labels = []
    for rec in records:
        try:
            cls = taxonomy.labels(rec.generator)[level]
        except SagaError:  # a generator the taxonomy does not know: fall back to the cached labels
            cls = rec.labels.get(level)
        labels.append(NO_CLASS if cls is None else str(cls))
    order = [c for c in taxonomy.classes(level) if c in set(labels)]
    order += sorted(set(labels) - set(order) - {NO_CLASS}) + ([NO_CLASS] if NO_CLASS in labels else [])
    return labels, order


def tsne_settings(n: int, seed: int = 0, max_iter: int = 1000) -> dict[str, Any]:
    """The settings `embed_2d` runs t-SNE with on n points (recorded with the map, which they shape).

    Exact gradients up to 1000 points: there they are faster than Barnes-Hut (measured
    on 2 CPU cores: 500 points 12 s against 45 s) and also exact.
    """
    return {"tsne_seed": seed, "perplexity": perplexity_for(n), "max_iter": max(250, max_iter),
            "method": "exact" if n <= 1000 else "barnes_hut"}


def embed_2d(embeddings: np.ndarray, seed: int = 0, max_iter: int = 1000) -> np.ndarray:
    """2-D t-SNE coordinates (PCA init, automatic learning rate: stable across sklearn versions)."""
    from sklearn.manifold import TSNE

    n = len(embeddings)
    if n < 3:
        raise SagaError(f"t-SNE needs at least 3 videos, got {n}; use a larger split")
    opts = tsne_settings(n, seed, max_iter)
    tsne = TSNE(n_components=2, perplexity=opts["perplexity"], init="pca", learning_rate="auto",
                random_state=seed, max_iter=opts["max_iter"], method=opts["method"])
    return tsne.fit_transform(np.asarray(embeddings, np.float32)).astype(np.float32)


def tsne_plot(inference: Inference, records: Sequence[VideoRecord], color_by_level: str, taxonomy: Taxonomy,
              out_png: str | Path, seed: int = 0, title: str = "", max_iter: int = 1000,
              stamp: dict[str, Any] | None = None) -> TsneResult:
    """Plot the t-SNE of `inference.embeddings` coloured by `color_by_level`; CSV of the coordinates and JSON
    of what it was made from beside it. `stamp` (weights, data: `weights_stamp`, `data_stamp`) and the t-SNE
    settings go into the JSON and the PNG's metadata."""
    if len(records) != len(inference):
        raise SagaError(f"t-SNE: {len(records)} records for {len(inference)} embeddings")
    out_png = Path(out_png)
    coords = embed_2d(inference.embeddings, seed, max_iter)
    meta = {**(stamp or {}), "color_by": color_by_level, "n": len(records),
            **tsne_settings(len(records), seed, max_iter)}
    labels, order = label_points(records, color_by_level, taxonomy)
    legend = _draw(coords, labels, order, out_png, title or f"t-SNE of φ, coloured by {color_by_level}", meta)
    out_csv, out_json = out_png.with_suffix(".csv"), out_png.with_suffix(".json")
    _write_csv(out_csv, records, labels, coords)
    write_json(out_json, {**meta, "png": out_png.name, "csv": out_csv.name})
    return TsneResult(out_png, out_csv, coords, labels, legend, out_json)


def _draw(coords: np.ndarray, labels: list[str], order: list[str], out_png: Path, title: str,
          stamp: dict[str, Any] | None = None) -> list[str]:
    fig = Figure(figsize=(7.5, 5.5), dpi=110)
    ax = fig.add_subplot()
    colors = dict(zip([c for c in order if c != NO_CLASS], class_colors(len(order) - (NO_CLASS in order))))
    colors[NO_CLASS] = (0.75, 0.75, 0.75, 1.0)
    arr = np.array(labels)
    size = float(np.clip(3000 / max(len(labels), 1), 4, 40))
    for cls in order:
        pts = coords[arr == cls]
        ax.scatter(pts[:, 0], pts[:, 1], s=size, color=colors[cls], label=f"{cls} ({len(pts)})",
                   alpha=0.8, linewidths=0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    leg = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, markerscale=1.5)
    save_figure(fig, out_png, stamp)
    return [t.get_text() for t in leg.get_texts()]


def save_figure(fig: Figure, out_png: Path, stamp: dict[str, Any] | None = None) -> None:
    """Save through a temporary file so a report never embeds a half-written image; `stamp` (the weights
    it shows) goes into the PNG's text metadata as saga:<key>."""
    out_png.parent.mkdir(parents=True, exist_ok=True)
    meta = {f"saga:{k}": str(v).lower() if isinstance(v, bool) else stamp_text(v)
            for k, v in (stamp or {}).items() if v is not None}
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png", metadata=meta)


def stamp_text(value: Any) -> str:
    """A stamp value as text (PNG metadata, tsig.npz): JSON for a dict or list (`seen_in_training`), else str."""
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _write_csv(path: Path, records: Sequence[VideoRecord], labels: list[str], coords: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "generator", "label", "x", "y"])
        for rec, lab, (x, y) in zip(records, labels, coords):
            writer.writerow([rec.path, rec.generator, lab, f"{x:.5f}", f"{y:.5f}"])


def run_tsne(run_dir: str | Path, cache_path: str | Path, color_by: str | None = None, split: str = "test",
             device: str = "cpu", seed: int = 0) -> TsneResult:
    """t-SNE of a run's embeddings of a cache split, coloured by any level, written into the run folder."""

    stamp = weights_stamp(run_dir)  # before loading: see weights_stamp
    model, info = load_model(run_dir)
    warn_unfinished(run_dir, stamp, "the t-SNE map is")
    level = check_level(color_by or info.level)
    cache = FeatureCache.open(cache_path)
    check_cache(info, cache)
    records = cache.ok_records(split)
    if info.level == "SD-L":  # the model never saw generators without an SD backbone
        records = [r for r in records if r.labels.get("SD-L") is not None]
    records, seen = only_unseen(info, cache, records, split, f"the map (its .json: {SEEN_KEY})",
                                fix="map videos it has not seen (another --split or --cache)")
    if len(records) < 5:
        raise SagaError(f"{cache_path}: only {len(records)} {split} videos; t-SNE needs at least 5")
    inference = infer(model, info, cache, records, device=device)
    flag = figure_flag(run_dir, split, heldout_tag(info, cache))  # val chose the weights, train trained them
    warn_figures(run_dir, flag, "the t-SNE map is")
    stamp.update(data_stamp(cache, split), **flag, **({SEEN_KEY: seen} if seen else {}))
    title = (f"t-SNE of φ ({info.level} run, {data_label(stamp, (info.provenance or {}).get('cache_id'))}), "
             f"coloured by {level}")
    out_png = Path(run_dir) / on_cache(tsne_file(level, split), heldout_tag(info, cache))
    return tsne_plot(inference, records, level, cache.taxonomy, out_png, seed=seed, title=title, stamp=stamp)
