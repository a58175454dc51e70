"""What predict / evaluate / report call: the run's open-world files applied to its outputs.

`OpenWorld.load(run_dir, info)` reads whichever of calibration.json, openset.json and
enrolled.json the run has (each checked against the run's weights: a file fitted on other
weights is refused, not silently used); `apply` turns one batch of the run's outputs
(window-averaged logits, probabilities, L2-normalised φ, as `run_batch`/`infer` return them)
into per-video extras; `evaluation` adds calibration and false-unknown figures to a split's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saga.model.inference import Inference
from saga.openworld.calibration import Calibration, reliability
from saga.openworld.enroll import Enrollment, predict_with_enrolled
from saga.openworld.openset import OpenSet, score_lists, summary
from saga.runs import MODEL, RunInfo, file_fingerprint
from saga.runs.files import CALIBRATION, ENROLLED, OPENSET
from saga.taxonomy import Taxonomy


def as_inference(logits: np.ndarray, probs: np.ndarray, embeddings: np.ndarray) -> Inference:
    """Bare outputs (no targets, paths or mask) as an `Inference`, for the functions that take one."""
    n = len(logits)
    return Inference(logits=logits, probs=probs, embeddings=embeddings, targets=np.full(n, -1, np.int64),
                     paths=[""] * n, mask=np.zeros((n, 0), bool))


@dataclass
class OpenWorld:
    """A run's fitted open-world parts (each None when the run has none)."""

    info: RunInfo
    taxonomy: Taxonomy | None
    calibration: Calibration | None = None
    openset: OpenSet | None = None
    enrollment: Enrollment | None = None

    @classmethod
    def load(cls, run_dir: str | Path, info: RunInfo, enrollment: bool = True) -> "OpenWorld":
        """The run's files, each refused when fitted on other weights; `enrollment` False skips enrolled.json
        (evaluation does not use it, so a stale one must not stop it)."""
        folder, fp = Path(run_dir), file_fingerprint(Path(run_dir) / MODEL)
        tax = info.provenance.get("taxonomy")
        return cls(info, Taxonomy.from_dict(tax) if tax else None,
                   Calibration.load(folder, fp, info.classes) if (folder / CALIBRATION).is_file() else None,
                   OpenSet.load(folder, fp, info.classes) if (folder / OPENSET).is_file() else None,
                   Enrollment.load(folder, fp, info.classes, info.level)
                   if enrollment and (folder / ENROLLED).is_file() else None)

    def head_probs(self, logits: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities when the run has calibration.json, else the run's own."""
        return self.calibration.probs(logits) if self.calibration else probs

    def apply(self, logits: np.ndarray, probs: np.ndarray, embeddings: np.ndarray) -> list[dict[str, Any]]:
        """Per video: calibrated probabilities, unknown-source verdict, predictions with enrolled classes.

        The enrolled classes' rule gets the run's own probabilities, as `saga openset logo` measured it
        (calibrated ones move mass between head and prototypes: another classifier); T is display only.
        """
        out: list[dict[str, Any]] = [{} for _ in range(len(logits))]
        head = self.head_probs(logits, probs)
        if self.calibration:
            for row, p in zip(out, head):
                row["calibrated"] = {"temperature": round(self.calibration.temperature, 6),
                                     "probabilities": {c: round(float(x), 6) for c, x in zip(self.info.classes, p)}}
        if self.openset:
            score = self.openset.score(embeddings)
            for row, s in zip(out, score):
                row["unknown"] = {"unknown": bool(s > self.openset.threshold), "score": round(float(s), 6),
                                  "threshold": round(self.openset.threshold, 6), "kind": self.openset.kind}
        if self.enrollment and self.enrollment.entries and self.taxonomy:
            levels = predict_with_enrolled(self.info, self.taxonomy, self.enrollment,
                                           as_inference(logits, probs, embeddings))
            for i, row in enumerate(out):
                row["enrolled"] = {lv: {"predicted": d["pred"][i], "confidence": round(float(d["probs"][i].max()), 6),
                                        "probabilities": {c: round(float(x), 6) for c, x in zip(d["classes"], d["probs"][i])}}
                                   for lv, d in levels.items()}
                own = row["enrolled"].get(self.info.level, {}).get("predicted")
                if own is not None and own not in self.info.classes and row.get("unknown", {}).get("unknown"):
                    # far from every trained class, but the enrollment rule routes it to an enrolled one:
                    # known through enrollment, not an unknown source
                    row["unknown"].update(unknown=False, enrolled=own)
        return out

    def evaluation(self, inf: Inference, unseen: np.ndarray | None = None) -> dict[str, Any]:
        """For evaluate/report: ECE before/after (+ reliability data) and the known videos' false-unknown rate."""
        res: dict[str, Any] = {}
        if self.calibration:
            res["calibration"] = {"temperature": self.calibration.temperature,
                                  "before": reliability(inf.probs, inf.targets),
                                  "after": reliability(self.calibration.probs(inf.logits), inf.targets)}
        if self.openset:
            res["openset"] = self.openset_evaluation(inf, unseen)
        for key, fit in (("calibration", self.calibration), ("openset", self.openset)):
            if fit is not None and fit.cache_id:  # which cache's val it was fitted on (`mark_openworld`)
                res[key]["fitted_on_cache"] = fit.cache_id
        return res

    def openset_evaluation(self, inf: Inference, unseen: np.ndarray | None = None) -> dict[str, Any]:
        """The known videos' false-unknown rate; with `unseen` videos (a class at the run's level that the
        run does not have, e.g. the held-out generator of a leave-one-generator-out run; default: every
        video without a class of the run), AUROC / OSCR known vs unseen too, and the per-video scores
        (compact, `score_lists`) from which the report draws the ROC and OSCR curves. Videos with no
        class at the run's level (SD-L: generators without an SD backbone) are neither known nor unseen."""
        det = self.openset
        known = inf.targets >= 0
        unseen = ~known if unseen is None else np.asarray(unseen, bool) & ~known
        score = det.score(inf.embeddings) if len(inf.targets) else np.zeros(0, np.float32)
        ks, us = score[known], score[unseen]
        correct = inf.probs[known].argmax(axis=1) == inf.targets[known] if known.any() else np.zeros(0, bool)
        out: dict[str, Any] = {"kind": det.kind, "threshold": det.threshold, "percentile": det.percentile,
                               "n_known": int(known.sum()), "n_unknown": int(unseen.sum()),
                               "false_unknown": float((ks > det.threshold).mean()) if ks.size else None}
        if ks.size and us.size:
            out.update({k: v for k, v in summary(ks, correct, us, det.threshold).items() if k != "threshold"})
        if ks.size:
            out["scores"] = score_lists(ks, correct, us)
        return out
