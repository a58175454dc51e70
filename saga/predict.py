"""Attribute new videos with a trained run: extract with the run's own encoder, then classify.

The features must come from the very encoder (weights and preprocessing) the run was
trained on, so the encoder recorded in the run is loaded and checked; anything else is
refused rather than giving confident nonsense. Each answer records its evidence (`Evidence`: the real
frames the model saw out of its window, their size, whether anything moved), and is flagged, not
refused, when that is too thin for a temporal model (a still image, a 1×1 video): the analyst decides.
Every record names the run and the blake2b of its weights, as `saga evaluate` records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from saga.distributed import resolve_device
from saga.errors import DecodeError, SagaError, shown
from saga.explain.metrics import weights_stamp
from saga.model.inference import run_batch, subwindow_starts, take_subwindow
from saga.pipeline.decode import Clip, decode_video
from saga.pipeline.encoders import FrameEncoder, preprocess_frames
from saga.pipeline.inputs import unreadable_line
from saga.pipeline.recorded import checked_encoder
from saga.pipeline.sampling import SamplingPolicy
from saga.pipeline.walk import Walk
from saga.progress import ProgressFn, StepCount, report_step
from saga.taxonomy import LEVELS, REAL, Taxonomy
from saga.runs import DONE, PROVENANCE, RunInfo, load_model
from saga.openworld.extras import OpenWorld

MIN_SIDE = 32  # pixels: a frame smaller on a side is a thumbnail or a placeholder, not something to attribute
# "no visible change" between two frames: no pixel changes by more than STILL_LEVEL grey levels, nor the frame
# by more than STILL_MEAN on average. Measured: a still image through H.264 (CRF 0-45) or VP9 changes by at most
# 15 (its P-frames refine it), on average by 0.2 (a photo) to 2.0 (random noise, a codec's worst case); the
# stillest clip of the synth benchmark (SVD) by 17-22 in every pair
STILL_LEVEL, STILL_MEAN = 16, 2.5
STILL_PIXELS = 512  # the longer side the still check looks at (a stride over an 8K frame, not all of it)


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
    evidence: dict[str, Any] | None = None  # `Evidence.to_dict`: what the answer rests on
    warnings: list[str] | None = None  # why that evidence is thin (`Evidence.warnings`); [] when it is not
    # the run that answered: its folder (absolute), the blake2b of its weights, whether it had finished
    run: str | None = None
    run_model: str | None = None
    run_finished: bool | None = None
    # why a "real" answer does not mean real: the run's level has no class for some generators (SD-L)
    caveat: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Inputs:
    """The videos to predict, the folders that could not be listed (folder, reason: their videos are missing,
    so the call has failed in part), and one note per link or copy not predicted twice."""

    paths: list[Path] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def expand_inputs(inputs: Iterable[Path], progress: ProgressFn | None = None) -> Inputs:
    """Files as given; folders expanded to the videos below them, walked as `saga extract` walks
    (`saga.pipeline.walk`): linked sub-folders followed once, link loops not, each real file once, sorted.

    A folder the user names is expanded whatever its name (`clips.mp4/`); while walking, only files are
    taken (a sub-folder `x.mp4/` is walked, not predicted). `progress` gets each walk's status events
    (`StepCount`: a folder of 100,000 files takes minutes).
    """
    out = Inputs()
    for p in inputs:
        if not p.is_dir():
            out.paths.append(p)
            continue
        walk = Walk(p, [], walk_video_named=True, count=StepCount(progress, f"scanning {shown(p)}"))
        out.paths.extend(p / rel for rel in walk.every_video())
        walk.count.end()
        out.unreadable.extend(walk.unreadable)
        out.notes.extend(_walk_notes(p, walk))
    return out


def _walk_notes(root: Path, walk: Walk) -> list[str]:
    """One line per linked folder not followed and per folder of videos reached twice: none is lost."""
    notes = [f"{shown(link)}: linked folder not followed ({why}); its videos are predicted once"
             for link, why in walk.skipped]
    notes += [f"{shown(s.folder)}: the same folder as {shown(root / s.listed)}; its {s.videos} video(s) are "
              "predicted once, under that name" for s in walk.same]
    pairs = [pair for group in walk.copies.values() for pair in group]
    if pairs:
        rel, first = pairs[0]
        notes.append(f"{shown(root)}: {len(pairs)} video(s) are the same file as another one (e.g. {shown(rel)} is "
                     f"{shown(first)}: a link or hard link); each is predicted once")
    return notes


def no_videos(inputs: list[Path], found: Inputs, suffixes: Iterable[str]) -> SagaError:
    """The one-line error for a call without a video, naming the folders that could not be listed."""
    return SagaError(f"{', '.join(shown(v) for v in inputs)}: no videos found (looked for {', '.join(sorted(suffixes))})"
                     + "".join(f"; {unreadable_line(*u)}" for u in found.unreadable[:3])
                     + ("" if found.unreadable else "; pass video files or folders holding them"))


@dataclass(frozen=True)
class Evidence:
    """What one answer rests on: the real (not padded) frames the model saw out of its window of `of`, in the
    window with fewest, their size, and whether nothing moved between them (a still)."""

    frames: int
    of: int
    size: tuple[int, int]  # width, height in pixels, as decoded (upright)
    still: bool

    def warnings(self) -> list[str]:
        """Why this evidence is too thin for a temporal model, one reason each; [] when it is not."""
        out = []
        if self.frames < 2:
            out.append(f"only {self.frames} of {self.of} frames, one still image: no temporal evidence")
        elif self.frames < self.of:
            out.append(f"only {self.frames} of {self.of} frames: less temporal evidence than the model was trained on")
        elif self.still:
            out.append(f"no visible change between its {self.frames} frames, a still: little or no temporal evidence")
        if min(self.size) < MIN_SIDE:
            out.append(f"frames of {self.size[0]}x{self.size[1]} px, under {MIN_SIDE} px on a side: "
                       "almost nothing for the encoder to see")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "of": self.of, "size": list(self.size), "still": self.still}


def frame_evidence(clip: Clip, window: int) -> Evidence:
    """The `Evidence` of the `window`-frame sub-windows the model sees (`take_subwindow`'s)."""
    starts = subwindow_starts(clip.mask, window)
    real = [clip.frames[w, s:s + window][clip.mask[w, s:s + window]] for w, s in enumerate(starts.tolist())]
    height, width = clip.frames.shape[2:4]
    return Evidence(min(len(r) for r in real), window, (int(width), int(height)), all(map(_still, real)))


def _still(frames: np.ndarray) -> bool:
    """Whether no consecutive pair of (n, H, W, 3) frames changes visibly (see STILL_*); one frame is a still."""
    step = max(1, max(frames.shape[1:3]) // STILL_PIXELS)
    small = frames[:, ::step, ::step].astype(np.int16)
    for a, b in zip(small[:-1], small[1:]):
        diff = np.abs(b - a)
        if diff.max() > STILL_LEVEL or diff.mean() > STILL_MEAN:
            return False
    return True


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


def run_encoder(info: RunInfo, device: str, encoder: str | None = None, pretrained: str | None = None,
                progress: ProgressFn | None = None) -> FrameEncoder:
    """The encoder the run was trained on; overrides (a local copy of the weights) must match its fingerprint."""
    return checked_encoder(info.encoder, str(info.path), device, encoder, pretrained, progress)


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

    def __init__(self, run_dir: Path, device: str = "auto", encoder: str | None = None,
                 pretrained: str | None = None, allow_unfinished: bool = False,
                 progress: ProgressFn | None = None) -> None:
        """`progress` gets a status event per loading step (the run's model, the encoder: a minute or more)."""
        report_step(progress, f"loading the run {shown(run_dir)}")
        stamp = weights_stamp(run_dir)  # before loading: weights replaced meanwhile are not passed off as these
        self.model, self.info = load_model(run_dir)
        self.identity = {"run": str(Path(run_dir).absolute()), **stamp}
        check_finished(self.info, allow_unfinished)  # before minutes of loading the encoder
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.encoder = run_encoder(self.info, device, encoder, pretrained, progress)
        try:
            self.policy = SamplingPolicy.from_dict(dict(self.info.encoder.sampling or {}))
        except SagaError as exc:
            raise SagaError(f"{Path(run_dir) / PROVENANCE}: {exc}; the run folder is damaged") from None
        self.taxonomy = Taxonomy.from_dict(self.info.provenance.get("taxonomy"),
                                           f"{Path(run_dir) / PROVENANCE} (its taxonomy; train the run again)")
        self.openworld = OpenWorld.load(run_dir, self.info)
        self.uncovered = [g for g in self.taxonomy.generators if self.taxonomy.labels(g)[self.info.level] is None]

    def features(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(1, W, T, D) float16 features (as the cache stores them) and (1, W, T) mask."""
        feats, mask, _ = self.decoded(path)
        return feats, mask

    def decoded(self, path: Path) -> tuple[np.ndarray, np.ndarray, Evidence]:
        """`features`, and the evidence of the frames behind them."""
        clip = decode_video(path, self.policy)
        w, t = clip.mask.shape
        pixels = preprocess_frames(self.encoder.preprocess, clip.frames.reshape(w * t, *clip.frames.shape[2:]))
        feats = self.encoder.encode(pixels).to(torch.float16).cpu().numpy().reshape(1, w, t, -1)
        return feats, clip.mask[None], frame_evidence(clip, self.info.frames)

    def failed(self, path: Path | str, reason: str) -> Prediction:
        """A failed record of this run (a video that did not decode, a folder that could not be listed)."""
        return Prediction(str(path), status="failed", error=reason, **self.identity)

    def predict(self, path: Path, tsig: bool = False) -> Prediction:
        try:
            feats, mask, evidence = self.decoded(path)
        except DecodeError as exc:
            return self.failed(path, getattr(exc, "reason", None) or str(exc).splitlines()[0])
        sub, sub_mask = take_subwindow(feats.astype(np.float32), mask, self.info.frames)
        res = run_batch(self.model, sub, sub_mask, self.device, attention=tsig)
        best, probs = decide(res, self.openworld)
        cls = self.info.classes[best]
        pred = Prediction(str(path), level=self.info.level, predicted=cls, confidence=float(probs[best]),
                          implied=self.implied(cls),
                          probabilities={c: round(float(p), 6) for c, p in zip(self.info.classes, probs)},
                          evidence=evidence.to_dict(), warnings=evidence.warnings(), caveat=self.caveat(cls),
                          **self.identity)
        pred.openworld = self.openworld.apply(res["logits"], res["probs"], res["embeddings"])[0] or None
        if "row_probs" in res:
            pred.source = nearest_source(res["row_probs"][0], best, self.model.config.subclass_of,
                                         self.model.config.subclass_names)
        if tsig:
            from saga.explain.tsig import video_signature

            pred.tsig = video_signature(res["attn"][0], sub_mask[0, 0])["profile"].round(6).tolist()
        return pred

    def implied(self, cls: str) -> dict[str, str]:
        """The coarser levels' classes that the predicted class determines (unambiguous ones only). "real" implies
        nothing at a level that leaves generators out (SD-L): their fakes land in "real" too (`caveat`)."""
        if cls == REAL and self.uncovered:
            return {}
        out = {}
        for level in LEVELS[: LEVELS.index(self.info.level)]:
            parent = self.taxonomy.parent(self.info.level, cls, level)
            if parent is not None:
                out[level] = parent
        return out


    def caveat(self, cls: str) -> str | None:
        """For "real" from a run whose level has no class for some generators: an SD-L run called a Sora clip real
        and printed "implies BIN-L real", though it never saw a fake without an SD backbone."""
        if cls != REAL or not self.uncovered:
            return None
        names = ", ".join(self.uncovered[:4]) + (", …" if len(self.uncovered) > 4 else "")
        return (f"this {self.info.level} run has no class for the {len(self.uncovered)} generators without one at "
                f"{self.info.level} ({names}): its '{REAL}' also stands for their videos; ask a BIN-L run (the "
                "stage-1 run) whether the video is real")


def decide(res: dict[str, np.ndarray], openworld: OpenWorld) -> tuple[int, np.ndarray]:
    """The class and the probabilities shown for one video's `run_batch` result.

    The class is evaluate's, the argmax of the mean per-window softmax; the probabilities are
    calibrated where the run has calibration.json (a softmax of the mean logits, which with
    several windows can rank two close classes the other way: the class must not follow it).
    """
    return int(res["probs"][0].argmax()), openworld.head_probs(res["logits"], res["probs"])[0]
