"""Few-shot enrollment: a new generator from 3–20 videos, without retraining, as a prototype in φ.

The trained embedding φ already separates sources it never saw (that is what open-set rejection
relies on), so a new source is the mean φ of its few videos. Classifying with the head *plus*
enrolled prototypes (rule "gate", the default) keeps the head's decision among the known classes
and lets the prototypes decide only how much mass goes to enrolled ones:

    q = softmax(cos(φ, [old prototypes; enrolled prototypes]) / τ),   π = Σ_enrolled q
    p = [(1 − π) · p_head,  q_enrolled]

τ is fitted (1-D NLL search) on the run's known validation videos' prototype similarities, so q
is as sharp as the prototypes actually are on unseen videos. Rule "ncm" (nearest class mean over
all prototypes, softmax(cos/τ)) is kept for comparison. The enrolled classes appear at every
level their taxonomy labels (task, SD backbone, team) imply. Stored beside the run as
enrolled.json (the commit point: entries, τ, fingerprints) + enrolled.<hash>.safetensors (see `store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from saga.errors import SagaError
from saga.explain.seen import SEEN_KEY, seen_problem
from saga.model.inference import Inference
from saga.openworld.calibration import fit_temperature, softmax
from saga.openworld.embeddings import normalise
from saga.openworld.levels import aggregate, coarser_levels, parents
from saga.openworld.store import class_mismatch, finite, load_pair, names, save_pair
from saga.runs import RunInfo
from saga.runs.files import ENROLLED, ENROLLED_STEM
from saga.taxonomy import FAKE, LEVELS, NO_SD, REAL, TASKS, Taxonomy

STEM = ENROLLED_STEM  # ENROLLED = "enrolled.json" + enrolled.<hash>.safetensors (enrolled and old prototypes)
RULES = ("gate", "ncm")
MIN_VIDEOS, MAX_VIDEOS = 3, 20
TAU_RANGE = (1e-3, 10.0)
# τ when val has no nearest-prototype error: a cosine gap of 0.15 is then odds e^3 ≈ 20 (fitted τ: 0.057
# on a trained toy fold); sharp enough for an enrolled class to win, not a hard nearest-prototype rule.
SHARP_TAU = 0.05


@dataclass
class Entry:
    """One enrolled generator: its labels at every level, the videos behind it, its prototype."""

    name: str
    labels: dict[str, str | None]
    paths: list[str]
    cache_id: str
    prototype: np.ndarray = field(repr=False)


@dataclass
class Enrollment:
    """A run's enrolled classes with the run's own prototypes and the prototype temperature τ."""

    run_model: str
    classes: list[str]
    level: str
    tau: float
    old_prototypes: np.ndarray = field(repr=False)
    entries: list[Entry] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # levels predict answers (`level_classes`), for the report
    run_cache_id: str = ""  # the cache the old prototypes and τ came from ("": not recorded, an older file)
    seen_in_training: dict[str, Any] | None = None  # val videos left out of τ's fit (saga.explain.seen)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def save(self, folder: str | Path) -> Path:
        """enrolled.json + its content-addressed tensors file, committed together (`store`)."""
        d = self.old_prototypes.shape[1]
        protos = np.stack([e.prototype for e in self.entries]) if self.entries else np.zeros((0, d), np.float32)
        entries = [{"name": e.name, "labels": e.labels, "n": len(e.paths), "paths": e.paths, "cache_id": e.cache_id}
                   for e in self.entries]
        meta = {"run_model": self.run_model, "classes": self.classes, "level": self.level, "tau": self.tau,
                "answered": self.answered, "run_cache_id": self.run_cache_id, "entries": entries,
                **({SEEN_KEY: self.seen_in_training} if self.seen_in_training else {})}
        return save_pair(Path(folder), STEM, {"prototypes": protos, "old_prototypes": self.old_prototypes}, meta)

    @classmethod
    def load(cls, folder: str | Path, run_model: str | None = None, classes: list[str] | None = None,
             level: str | None = None) -> "Enrollment":
        """enrolled.json and its tensors, every value checked (`check_enrollment`); refused if made with other
        weights than `run_model` (or for other `classes` / another `level` than the run's)."""
        folder = Path(folder)
        meta, tensors = load_pair(folder, STEM, f"; delete {ENROLLED} and enroll again")
        if run_model is not None and meta.get("run_model") != run_model:
            raise SagaError(f"{folder / ENROLLED}: made with other weights than the run's (retrained?); delete "
                            f"{ENROLLED} and enroll again")
        problem = check_enrollment(meta, tensors, classes, level)
        if problem:
            raise SagaError(f"{folder / ENROLLED}: damaged ({problem}); delete {ENROLLED} and enroll again")
        protos = tensors["prototypes"]
        entries = [Entry(e["name"], e["labels"], list(e["paths"]), e["cache_id"], protos[i])
                   for i, e in enumerate(meta["entries"])]
        return cls(meta["run_model"], list(meta["classes"]), meta["level"], float(meta["tau"]),
                   tensors["old_prototypes"], entries, list(meta.get("answered") or []), meta.get("run_cache_id", ""),
                   meta.get(SEEN_KEY))


def check_enrollment(meta: dict[str, Any], tensors: dict[str, np.ndarray], classes: list[str] | None = None,
                     level: str | None = None) -> str:
    """What is wrong with enrolled.json's values ("" when nothing): τ 0 gave NaN probabilities (argmax
    "real"), a negative τ an inverted softmax, the others tracebacks in predict."""
    tau, lv, old, new = meta.get("tau"), meta.get("level"), tensors.get("old_prototypes"), tensors.get("prototypes")
    if not (finite(tau) and TAU_RANGE[0] <= tau <= TAU_RANGE[1]):
        return f"tau {tau!r} is not a number in [{TAU_RANGE[0]:g}, {TAU_RANGE[1]:g}]"
    if lv not in LEVELS or (level is not None and lv != level):
        return f"level {lv!r} is not the run's {level or ' / '.join(LEVELS)}"
    if class_mismatch(meta.get("classes"), classes):
        return class_mismatch(meta.get("classes"), classes)
    if not (isinstance(meta.get("run_model"), str) and isinstance(meta.get("run_cache_id", ""), str)
            and names(meta.get("answered") or [])):
        return "run_model, run_cache_id or answered is not text"
    if problem := seen_problem(meta.get(SEEN_KEY)):
        return problem
    entries = meta.get("entries")
    if not isinstance(entries, list) or old is None or new is None:
        return "no entries list or prototypes"
    problem = next((p for p in (entry_problem(e, i, lv) for i, e in enumerate(entries, 1)) if p), "")
    if not problem and (old.ndim != 2 or new.ndim != 2 or len(old) != len(meta["classes"])
                        or len(new) != len(entries) or new.shape[1] != old.shape[1]):
        problem = f"prototypes of shapes {old.shape} / {new.shape} for {len(meta['classes'])} classes " \
                  f"and {len(entries)} entries"
    return problem


def entry_problem(e: Any, i: int, level: str) -> str:
    """What is wrong with entry `i` (1-based) of enrolled.json ("" when nothing); it needs a class at `level`."""
    if not (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("cache_id"), str)
            and names(e.get("paths")) and isinstance(e.get("labels"), dict)):
        return f"entry {i} lacks a name, labels, paths or cache_id"
    if not all(v is None or isinstance(v, str) for v in e["labels"].values()) or \
            not isinstance(e["labels"].get(level), str):
        return f"entry {e['name']!r} has no {level} label"
    return ""


def generator_labels(name: str, task: str | None, sd: str | None, team: str | None) -> dict[str, str | None]:
    """The new generator's class at every level; what is not given stays None (that level is not reported)."""
    if task is not None and task not in TASKS:
        raise SagaError(f"--task {task!r}: use one of {', '.join(TASKS)}")
    for flag, value, fix in (("--team", team, "not a team; give the new generator's team"),
                             ("--sd", sd, "not an SD backbone; give the new generator's, or 'none'"),
                             ("--generator", name, "give the new generator another name")):
        if value is not None and value.strip().lower() == REAL:
            # BIN-L is forced to fake: a fake source in the real class at TEAM-L / SD-L contradicts it
            raise SagaError(f"{flag} {value}: '{REAL}' is the real-video class, {fix}")
    if sd is not None and sd.strip().lower() == NO_SD:
        sd = NO_SD  # explicitly no SD backbone: the "none" group at SD-L (None = not given: no SD-L answer)
    return {"BIN-L": FAKE, "TASK-L": task, "SD-L": sd, "TEAM-L": team, "GEN-L": name}


def prototype_tau(old_protos: np.ndarray, val_embeddings: np.ndarray, val_targets: np.ndarray) -> float:
    """τ of softmax(cos/τ) fitted on the known validation videos (1-D NLL search).

    Val videos all nearest their own prototype leave the NLL without a minimum: τ = SHARP_TAU, not the
    logits' T = 1 (cosines lie in [-1, 1], so τ = 1 is nearly uniform and no enrolled class would win).
    """
    keep = val_targets >= 0
    if not keep.any():
        raise SagaError("no validation videos of the run's classes: cannot fit the prototype temperature")
    return fit_temperature(val_embeddings[keep] @ old_protos.T, val_targets[keep], bounds=TAU_RANGE,
                           no_error=SHARP_TAU)


def add_entry(enr: Enrollment, name: str, labels: dict[str, str | None], embeddings: np.ndarray,
              paths: Sequence[str], cache_id: str) -> Enrollment:
    """Add (or replace) generator `name` from 3–20 videos' φ."""
    if not MIN_VIDEOS <= len(paths) <= MAX_VIDEOS:
        raise SagaError(f"{name}: {len(paths)} videos to enroll; give {MIN_VIDEOS}–{MAX_VIDEOS} (more: retrain)")
    if labels.get(enr.level) is None:
        flag = {"TASK-L": "--task", "SD-L": "--sd", "TEAM-L": "--team"}.get(enr.level, "--generator")
        raise SagaError(f"{name}: the run attributes at {enr.level}; give the new generator's class there ({flag})")
    if name in enr.classes:
        raise SagaError(f"{name}: already a class of the run; enroll a new generator under another name")
    proto = normalise(embeddings.mean(axis=0, keepdims=True))[0]
    entry = Entry(name, labels, sorted(paths), cache_id, proto)
    enr.entries = [e for e in enr.entries if e.name != name] + [entry]
    return enr


def scores(enr: Enrollment, inf: Inference, rule: str = "gate", head_probs: np.ndarray | None = None
           ) -> tuple[list[str], np.ndarray]:
    """(class names, (n, C + E) probabilities) at the run's level, enrolled classes last."""
    if rule not in RULES:
        raise SagaError(f"rule {rule!r}: use one of {', '.join(RULES)}")
    p_head = inf.probs if head_probs is None else head_probs
    new = np.stack([e.prototype for e in enr.entries]) if enr.entries else np.zeros((0, inf.embeddings.shape[1]))
    q = softmax(inf.embeddings @ np.concatenate([enr.old_prototypes, new]).T, enr.tau)
    c = len(enr.classes)
    if rule == "ncm":
        probs = q
    else:
        pi = q[:, c:].sum(axis=1, keepdims=True)
        probs = np.concatenate([(1.0 - pi) * p_head, q[:, c:]], axis=1)
    names = [*enr.classes, *[str(e.labels[enr.level]) for e in enr.entries]]
    return names, probs.astype(np.float32)


def level_classes(taxonomy: Taxonomy, level: str, enr: Enrollment) -> dict[str, list[str]]:
    """Per level answered (the run's and coarser ones): each head class's then each enrolled source's class there.

    A level is left out when the taxonomy makes a head class's class there ambiguous (`parents`) or an
    enrolled source's class there was not given (no --task/--sd/--team).
    """
    out: dict[str, list[str]] = {}
    for lv in coarser_levels(level):
        head = parents(taxonomy, level, enr.classes, lv)
        extra = [e.labels.get(lv) for e in enr.entries]
        if head is not None and all(x is not None for x in extra):
            out[lv] = [*head, *[str(x) for x in extra]]
    return out


def predict_with_enrolled(info: RunInfo, taxonomy: Taxonomy, enr: Enrollment, inf: Inference, rule: str = "gate",
                          head_probs: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per level of `level_classes`: classes, (n, K) probabilities and predicted class names.

    `inf` is `infer(...)` of the run on the videos; `head_probs` may replace `inf.probs` (predict does
    not: the rule is measured on the run's own probabilities, docs/beyond.md).
    """
    names, probs = scores(enr, inf, rule, head_probs)
    out: dict[str, dict[str, Any]] = {}
    for level, parent in level_classes(taxonomy, info.level, enr).items():
        classes, p = aggregate(probs, parent)
        out[level] = {"classes": classes, "probs": p, "pred": [classes[i] for i in p.argmax(axis=1)]}
    return out
