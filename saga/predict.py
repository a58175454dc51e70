"""Attribute new videos with a trained run: extract with the run's own encoder, then classify.

The features must come from the very encoder (weights and preprocessing) the run was
trained on, so the encoder recorded in the run is loaded and checked; anything else is
refused rather than giving confident nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from saga.distributed import resolve_device
from saga.errors import DecodeError, SagaError
from saga.model.inference import run_batch, take_subwindow
from saga.pipeline.decode import decode_video
from saga.pipeline.encoders import FrameEncoder, preprocess_frames
from saga.pipeline.inputs import VIDEO_SUFFIXES
from saga.pipeline.recorded import checked_encoder
from saga.pipeline.sampling import SamplingPolicy
from saga.taxonomy import LEVELS, Taxonomy
from saga.runs import DONE, PROVENANCE, RunInfo, load_model
from saga.openworld.extras import OpenWorld


@dataclass
class Prediction:
    path: str
    status: str = "ok"
    error: str = ""
    level: str = ""
    predicted: str = ""
    confidence: float = 0.0
    implied: dict[str, str] = field(default_factory=dict)
    probabilities: dict[str, float] = field(default_factory=dict)  # calibrated when the run has calibration.json
    tsig: list[float] | None = None
    # a run whose head keeps a row per labelled generator (`sources`): the predicted class's nearest one,
    # {generator, share (its probability within the class), rows (the class's labelled generators)}
    source: dict[str, Any] | None = None
    # the run's open-world files applied (saga calibrate / openset fit / enroll): "calibrated",
    # "unknown" {unknown, score, threshold, kind}, "enrolled" {level: {predicted, confidence, probabilities}}
    openworld: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given; folders expanded to the videos inside them (sorted).

    A folder the user names is expanded whatever its name (`clips.mp4/`); while walking, only
    non-folders with a video suffix are taken (a sub-folder `x.mp4/` is walked, not predicted).
    """
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES and not q.is_dir()))
        else:
            out.append(p)
    return out


def check_finished(info: RunInfo, allow_unfinished: bool) -> None:
    """Refuse an interrupted run's weights unless asked: they are not the classifier the run ends with
    (stage 2 fits its readout and self-trains at the end), so a prediction from them is silently other."""
    if info.finished:
        return
    what = (f"{info.path}: the run is unfinished (no {DONE}): its weights are mid-training, not the final "
            "classifier")
    if not allow_unfinished:
        raise SagaError(f"{what}; finish it by rerunning its `saga train ... --resume` (or `saga attribute ... "
                        "--resume`) command, or pass --allow-unfinished to predict with these weights anyway")
    warnings.warn(f"{what}: predicting with them as --allow-unfinished asks; these predictions are not the "
                  "finished run's", stacklevel=2)


def run_encoder(info: RunInfo, device: str, encoder: str | None = None, pretrained: str | None = None) -> FrameEncoder:
    """The encoder the run was trained on; overrides (a local copy of the weights) must match its fingerprint."""
    return checked_encoder(info.encoder, str(info.path), device, encoder, pretrained)


def nearest_source(row_probs: np.ndarray, cls: int, subclass_of: list[int], names: list[str]) -> dict[str, Any] | None:
    """Which of class `cls`'s labelled generators the video is most like (None when the rows are unnamed).

    Only generators with a labelled video have a row: an unlabelled generator of the class is
    named as its nearest labelled one, so this is a lead for an analyst, not an attribution.
    """
    rows = [i for i, c in enumerate(subclass_of) if c == cls]
    if not names or not rows:
        return None
    share = row_probs[rows] / max(float(row_probs[rows].sum()), 1e-12)
    k = int(share.argmax())
    return {"generator": names[rows[k]], "share": round(float(share[k]), 6), "rows": len(rows)}


class Predictor:
    """Loads a run and its encoder once, then attributes any number of videos."""

    def __init__(self, run_dir: Path, device: str = "cpu", encoder: str | None = None,
                 pretrained: str | None = None, allow_unfinished: bool = False) -> None:
        self.model, self.info = load_model(run_dir)
        check_finished(self.info, allow_unfinished)  # before minutes of loading the encoder
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.encoder = run_encoder(self.info, device, encoder, pretrained)
        try:
            self.policy = SamplingPolicy.from_dict(dict(self.info.encoder.sampling or {}))
        except SagaError as exc:
            raise SagaError(f"{Path(run_dir) / PROVENANCE}: {exc}; the run folder is damaged") from None
        self.taxonomy = Taxonomy.from_dict(self.info.provenance.get("taxonomy"),
                                           f"{Path(run_dir) / PROVENANCE} (its taxonomy; train the run again)")
        self.openworld = OpenWorld.load(run_dir, self.info)

    def features(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(1, W, T, D) float16 features (as the cache stores them) and (1, W, T) mask."""
        clip = decode_video(path, self.policy)
        w, t = clip.mask.shape
        pixels = preprocess_frames(self.encoder.preprocess, clip.frames.reshape(w * t, *clip.frames.shape[2:]))
        feats = self.encoder.encode(pixels).to(torch.float16).cpu().numpy().reshape(1, w, t, -1)
        return feats, clip.mask[None]

    def predict(self, path: Path, tsig: bool = False) -> Prediction:
        try:
            feats, mask = self.features(path)
        except DecodeError as exc:
            return Prediction(str(path), status="failed", error=getattr(exc, "reason", None) or str(exc).splitlines()[0])
        sub, sub_mask = take_subwindow(feats.astype(np.float32), mask, self.info.frames)
        res = run_batch(self.model, sub, sub_mask, self.device, attention=tsig)
        best, probs = decide(res, self.openworld)
        cls = self.info.classes[best]
        pred = Prediction(str(path), level=self.info.level, predicted=cls, confidence=float(probs[best]),
                          implied=self.implied(cls),
                          probabilities={c: round(float(p), 6) for c, p in zip(self.info.classes, probs)})
        pred.openworld = self.openworld.apply(res["logits"], res["probs"], res["embeddings"])[0] or None
        if "row_probs" in res:
            pred.source = nearest_source(res["row_probs"][0], best, self.model.config.subclass_of,
                                         self.model.config.subclass_names)
        if tsig:
            from saga.explain.tsig import video_signature

            pred.tsig = video_signature(res["attn"][0], sub_mask[0, 0])["profile"].round(6).tolist()
        return pred

    def implied(self, cls: str) -> dict[str, str]:
        """The coarser levels' classes that the predicted class determines (unambiguous ones only)."""
        out = {}
        for level in LEVELS[: LEVELS.index(self.info.level)]:
            parent = self.taxonomy.parent(self.info.level, cls, level)
            if parent is not None:
                out[level] = parent
        return out


def decide(res: dict[str, np.ndarray], openworld: OpenWorld) -> tuple[int, np.ndarray]:
    """The class and the probabilities shown for one video's `run_batch` result.

    The class is evaluate's, the argmax of the mean per-window softmax; the probabilities are
    calibrated where the run has calibration.json (a softmax of the mean logits, which with
    several windows can rank two close classes the other way: the class must not follow it).
    """
    return int(res["probs"][0].argmax()), openworld.head_probs(res["logits"], res["probs"])[0]
