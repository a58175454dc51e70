"""T-Sigs: temporal attention signatures per class (the paper's interpretability tool).

Input: the penultimate temporal block's frame-to-frame attention, averaged over
heads (`infer(..., attention=True)`), one T'×T' map per video (window 0).

Normalisation (documented, because the paper does not publish one):

- **map**: row i (query frame i) is an attention distribution over the video's real
  frames, so it sums to 1. Each row is renormalised over those frames: with CLS pooling
  the model's maps leave out the CLS token's column, so a raw row sums to 1 minus the
  frame's attention to CLS (with mean pooling it already sums to 1 and nothing changes).
  A class map averages row i over the class's videos in which frame i is real; padded
  frames are dropped as queries and as keys. Rows therefore stay distributions (sum 1),
  and short videos do not dilute the rows of frames they do not have. Plots share one
  colour scale across classes.
- **profile**: for offset Δ = 0..T'-1, a video's value is the mean over the i with
  frames i and i+Δ both real of A[i, i+Δ] (forward offsets, as in the method).
  A class profile averages the videos' values at each Δ (over videos that have
  such a pair) and is normalised to sum 1, so classes compare by *shape*.
  Identity attention gives all the mass at Δ = 0.

tsig.npz and both PNGs record the weights they were made with (`run_model`, `run_finished`; in
the PNGs' metadata as saga:<key>): `saga report` leaves out figures of older weights and
`saga predict --tsig` warns when it compares against them. They also record the data (`split`,
`cache_id`), which the titles and the report's captions say; the test split's files keep the plain
names (tsig.npz, the class signatures `predict --tsig` compares with), another split's carry it
(tsig-train.npz, tsig_maps-train.png, ...), so `--split train` never replaces them; files made on a
held-out cache (not the run's training cache) carry it too (tsig@<cache>-<id8>.npz, `saga.runs.on_cache`),
so they never replace the run's own T-Sigs, nor another held-out cache's. The videos the run was trained or
validated on are left out of the class signatures (a held-out cache sharing its videos, a copy of a train video in
test: `saga.explain.seen`), recorded as `seen_in_training` (JSON: n, examples, in).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from saga.errors import SagaError
from saga.cache.store import FeatureCache
from saga.explain.metrics import (RUN_MODEL, SPLIT, data_label, data_stamp, other_weights, run_weights,
                                  warn_unfinished, weights_stamp)
from saga.model.inference import Inference, infer
from saga.fileio import atomic_path, write_bytes
from saga.npzfile import read_npz
from saga.runs import (TSIG, TSIG_CSV, TSIG_MAPS, TSIG_PROFILES, RunFolder, by_split, check_cache, heldout_tag,
                       load_model, on_cache)
from saga.runs.files import DEFAULT_SPLIT
from saga.explain.seen import SEEN_KEY, only_unseen
from saga.explain.split_flags import figure_flag, warn_figures
from saga.explain.tsne import class_colors, save_figure, stamp_text

Signature = dict[str, Any]  # {"map": (T', T'), "profile": (T',), "n": int}
PROFILES_TITLE = "T-Sig profiles{}: mean attention at frame offset Δ"  # {}: " (test split)"


def _masks(attn: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if attn.ndim != 3 or attn.shape[1] != attn.shape[2]:
        raise SagaError(f"attention maps must be (n, T, T), got {attn.shape}")
    return np.ones(attn.shape[:2], bool) if mask is None else np.asarray(mask, bool)


def offset_sums(attn: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per video and offset Δ: the sum of A[i, i+Δ] over real pairs, and how many pairs (n, T)."""
    mask = _masks(attn, mask)
    n, t = mask.shape
    sums, counts = np.zeros((n, t)), np.zeros((n, t))
    for d in range(t):
        pair = mask[:, : t - d] & mask[:, d:]
        diag = np.diagonal(attn, offset=d, axis1=1, axis2=2)
        sums[:, d] = np.where(pair, diag, 0.0).sum(axis=1)
        counts[:, d] = pair.sum(axis=1)
    return sums, counts


def _normalise(profile: np.ndarray) -> np.ndarray:
    total = profile.sum()
    return profile / total if total > 0 else profile


def over_real_frames(attn: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each video's rows renormalised over its real frames (keys): a distribution over frames, whatever
    else the model attended to (the CLS token); padded keys get 0, a row with no mass on real keys stays 0."""
    pair = mask[:, :, None] & mask[:, None, :]
    kept = np.where(pair, attn, 0.0)
    total = kept.sum(axis=2, keepdims=True)
    return np.divide(kept, total, out=np.zeros_like(kept), where=total > 0)


def group_signature(attn: np.ndarray, mask: np.ndarray | None = None) -> Signature:
    """The signature of a group of videos (a class, or one video): map and normalised profile."""
    mask = _masks(attn, mask)
    attn = over_real_frames(np.asarray(attn, np.float64), mask)
    pair = mask[:, :, None] & mask[:, None, :]
    rows = mask.sum(axis=0)  # videos in which query frame i is real
    summed = np.where(pair, attn, 0.0).sum(axis=0)
    cmap = np.divide(summed, rows[:, None], out=np.zeros_like(summed), where=rows[:, None] > 0)
    sums, counts = offset_sums(attn, mask)
    per_video = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    defined = (counts > 0).sum(axis=0)
    prof = np.divide(per_video.sum(axis=0), defined, out=np.zeros(mask.shape[1]), where=defined > 0)
    return {"map": cmap.astype(np.float32), "profile": _normalise(prof).astype(np.float32), "n": int(len(attn))}


def video_signature(attn: np.ndarray, mask: np.ndarray | None = None) -> Signature:
    """One video's signature from its (T', T') map and (T',) mask (`saga predict --tsig`)."""
    attn = np.asarray(attn, np.float64)
    return group_signature(attn[None], None if mask is None else np.asarray(mask, bool)[None])


def class_signatures(inference: Inference, classes: Sequence[str]) -> dict[str, Signature]:
    """Per class (index = target), the signature of its videos; classes without videos are left out."""
    if inference.attn is None:
        raise SagaError("T-Sigs need attention maps: run infer(..., attention=True)")
    sigs: dict[str, Signature] = {}
    for i, cls in enumerate(classes):
        sel = inference.targets == i
        if sel.any():
            sigs[cls] = group_signature(inference.attn[sel].astype(np.float64), inference.mask[sel])
    if not sigs:
        raise SagaError("T-Sigs: no video has a class at the run's level")
    return sigs


def signature_distances(profile: np.ndarray, sigs: dict[str, Signature]) -> dict[str, float]:
    """L1 distance from a (normalised) profile to each class profile, nearest first."""
    dist = {c: float(np.abs(np.asarray(profile) - s["profile"]).sum()) for c, s in sigs.items()}
    return dict(sorted(dist.items(), key=lambda kv: kv[1]))


# -- files ------------------------------------------------------------------------------
def write_tsigs(sigs: dict[str, Signature], out_dir: str | Path, stamp: dict[str, Any] | None = None,
                label: str = "", tag: str | None = None) -> dict[str, Path]:
    """tsig.npz (classes, maps, profiles, counts; the `stamp` of weights_stamp and data_stamp), tsig_profiles.csv,
    tsig_maps.png, tsig_profiles.png (the stamp in their metadata, `label` in their titles); named for the
    stamp's split when it is not test (`by_split`), and for a held-out cache's `tag` (`on_cache`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(sigs)
    split = (stamp or {}).get(SPLIT) or DEFAULT_SPLIT
    paths = {kind: out / on_cache(by_split(name, split), tag) for kind, name in
             (("npz", TSIG), ("csv", TSIG_CSV), ("maps", TSIG_MAPS), ("profiles", TSIG_PROFILES))}
    buf = io.BytesIO()
    np.savez(buf, classes=np.array(classes), maps=np.stack([sigs[c]["map"] for c in classes]),
             profiles=np.stack([sigs[c]["profile"] for c in classes]),
             counts=np.array([sigs[c]["n"] for c in classes]),
             **{k: np.array(stamp_text(v)) for k, v in (stamp or {}).items() if v is not None})
    write_bytes(paths["npz"], buf.getvalue())
    _write_csv(sigs, paths["csv"])
    of = f" ({label})" if label else ""
    plot_maps(sigs, paths["maps"], stamp, title=f"T-Sig maps{of}" if label else "")
    plot_profiles(sigs, paths["profiles"], stamp=stamp, title=PROFILES_TITLE.format(of))
    return paths


TSIG_ARRAYS = ("classes", "maps", "profiles", "counts")


def tsig_weights(path: Path) -> str | None:
    """The run_model a tsig.npz records (None: an older saga wrote it, or it is unreadable)."""
    try:
        z = read_npz(path, (RUN_MODEL,))
        return str(z[RUN_MODEL]) if RUN_MODEL in z else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def load_tsigs(path: str | Path) -> dict[str, Signature]:
    """Read tsig.npz back (a run folder or the file itself)."""
    path = Path(path)
    path = path / TSIG if path.is_dir() else path
    if not path.is_file():
        raise SagaError(f"{path}: no T-Sigs; compute them first with `saga tsig`")
    try:
        z = read_npz(path, TSIG_ARRAYS)
        return {str(c): {"map": m, "profile": p, "n": int(k)}
                for c, m, p, k in zip(z["classes"], z["maps"], z["profiles"], z["counts"])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SagaError(f"{path}: damaged T-Sigs ({type(exc).__name__}); compute them again with "
                        "`saga tsig RUN --cache CACHE`") from None


def _write_csv(sigs: dict[str, Signature], path: Path) -> None:
    t = len(next(iter(sigs.values()))["profile"])
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "n", *[f"d{d}" for d in range(t)]])
        for cls, s in sigs.items():
            w.writerow([cls, s["n"], *[f"{v:.6f}" for v in s["profile"]]])


# -- plots ------------------------------------------------------------------------------
def plot_maps(sigs: dict[str, Signature], out_png: Path, stamp: dict[str, Any] | None = None,
              title: str = "") -> None:
    """One panel per class on a shared colour scale, so brightness compares across classes."""
    n = len(sigs)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.3 * cols + 0.8, 2.4 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = max(float(s["map"].max()) for s in sigs.values()) or 1.0
    im = None
    for ax, (cls, s) in zip(axes.flat, sigs.items()):
        im = ax.imshow(s["map"], vmin=0.0, vmax=vmax, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{cls} (n={s['n']})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="attention (query row → key column)")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, out_png, stamp)


def plot_profiles(sigs: dict[str, Signature], out_png: Path, video: np.ndarray | None = None,
                  title: str = PROFILES_TITLE.format(""),
                  stamp: dict[str, Any] | None = None) -> None:
    """One curve per class (and, for `saga predict --tsig`, the video's own in black)."""
    fig = Figure(figsize=(7.5, 4.5), dpi=110)
    ax = fig.add_subplot()
    for (cls, s), color in zip(sigs.items(), class_colors(len(sigs))):
        ax.plot(np.arange(len(s["profile"])), s["profile"], color=color, lw=1.4, marker="o", ms=2.5,
                label=f"{cls} (n={s['n']})", alpha=0.9 if video is None else 0.55)
    if video is not None:
        ax.plot(np.arange(len(video)), video, color="black", lw=2.6, label="this video")
    ax.set_xlabel("frame offset Δ")
    ax.set_ylabel("normalised attention")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    save_figure(fig, out_png, stamp)


def plot_video_profile(video: Signature, sigs: dict[str, Signature], out_png: str | Path, name: str = "") -> Path:
    """One video's profile against the class signatures (nearest class named in the title)."""
    dist = signature_distances(video["profile"], sigs)
    nearest = next(iter(dist))
    title = f"{name or 'video'}: nearest T-Sig {nearest} (L1 {dist[nearest]:.3f})"
    plot_profiles(sigs, Path(out_png), video=video["profile"], title=title)
    return Path(out_png)


def run_tsigs(run_dir: str | Path, cache_path: str | Path, split: str = "test", device: str = "cpu") -> dict[str, Path]:
    """T-Sigs per class of a run's level over a cache split, written into the run folder (test: tsig.npz, ...;
    another split: tsig-<split>.npz, ...; a held-out cache: tsig[-<split>]@<cache>-<id8>.npz, ...)."""
    stamp = weights_stamp(run_dir)  # before loading: see weights_stamp
    model, info = load_model(run_dir)
    warn_unfinished(run_dir, stamp, "the T-Sigs are")
    cache = FeatureCache.open(cache_path)
    check_cache(info, cache)
    records = [r for r in cache.ok_records(split) if r.labels.get(info.level) in info.classes]
    if not records:
        raise SagaError(f"{cache_path}: no {split} videos with a class at {info.level}; try another --split")
    records, seen = only_unseen(info, cache, records, split, f"the T-Sigs (the .npz: {SEEN_KEY})",
                                fix="draw them from videos it has not seen (another --split or --cache)")
    inference = infer(model, info, cache, records, device=device, attention=True)
    flag = figure_flag(run_dir, split, heldout_tag(info, cache))  # val chose the weights, train trained them
    warn_figures(run_dir, flag, "the T-Sigs are")
    stamp.update(data_stamp(cache, split), **flag, **({SEEN_KEY: seen} if seen else {}))
    label = data_label(stamp, (info.provenance or {}).get("cache_id"))
    return write_tsigs(class_signatures(inference, info.classes), run_dir, stamp, label, heldout_tag(info, cache))


def compare_video(run_dir: str | Path, profile: Sequence[float], out_png: str | Path,
                  name: str = "") -> tuple[str, Path] | None:
    """A new video's T-Sig profile against the run's class signatures: (nearest class, plot), or None
    when the run has no class T-Sigs yet (`saga tsig` makes them)."""
    if not RunFolder(run_dir).has_tsigs:
        return None
    sigs = load_tsigs(run_dir)
    if other_weights({RUN_MODEL: tsig_weights(Path(run_dir) / TSIG)}, run_weights(run_dir)):
        warnings.warn(f"{Path(run_dir) / TSIG}: class T-Sigs of other weights than the run's (trained on or "
                      f"retrained since); rerun `saga tsig {run_dir} --cache CACHE`", stacklevel=2)
    prof = np.asarray(profile, dtype=np.float64)
    nearest = next(iter(signature_distances(prof, sigs)))
    png = plot_video_profile({"map": None, "profile": prof, "n": 1}, sigs, out_png, name=name)
    return nearest, Path(png)

