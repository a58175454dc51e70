"""Loading a run's model: `load_model` and the checks on someone else's weights and config.

A run folder may come from anyone, so its weights metadata and config.json are hostile
input: every size is bounded before anything is allocated, and every error names the
file it is about (never a traceback, never "KeyError: 'depth'").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saga.cache.provenance import EncoderSpec
from saga.cache.store import FeatureCache
from saga.errors import SagaError, reason
from saga.fileio import loads
from saga.model import MODEL_LIMITS, ModelConfig, VideoTransformer
from saga.runs.files import (CONFIG, DONE, MODEL, PROVENANCE, PROVENANCE_FIX, RETRAIN, cache_tag, finished,
                              load_tensors, read_json)
from saga.runs.origin import check_cache_seals
from saga.taxonomy import LEVELS

# Keys every weights file saga wrote holds (ModelConfig's first version): one missing became its default silently
# (heads: no tensor shape shows it, so a 2-head θ ran as 4 heads). Keys added later default to what older runs used.
CORE_KEYS = ("in_dim", "d_model", "depth", "heads", "mlp_ratio", "dropout", "max_frames", "pool", "n_classes")
# The keys that shape θ: config.json's `model` and the weights' own config must agree on them.
SHAPE_KEYS = ("in_dim", "d_model", "depth", "heads", "mlp_ratio", "pool", "n_classes", "inputs", "temporal_lags",
              "content_dim", "content_basis", "video_stats")
# MODEL_LIMITS bound what a weights file from someone else may ask us to allocate (checked before building
# the model); training refuses the same (ModelConfig), so every run it writes loads.


@dataclass
class RunInfo:
    """What a loaded run is: its resolved config, class list (index = model output) and provenance."""

    path: Path
    config: dict[str, Any]
    classes: list[str]
    level: str
    frames: int
    provenance: dict[str, Any]
    finished: bool

    @property
    def encoder(self) -> EncoderSpec:
        """The encoder (and sampling) of the features the run was trained on; without them, one line saying
        whether provenance.json is missing or incomplete, and the fix."""
        if not (self.path / PROVENANCE).is_file() and not self.provenance.get("encoder"):
            raise SagaError(f"{self.path / PROVENANCE}: missing; it records the encoder and sampling the run was "
                            f"trained on: {PROVENANCE_FIX}")
        try:
            return EncoderSpec.from_dict(self.provenance.get("encoder") or {}, f"{self.path} ({PROVENANCE})")
        except SagaError as exc:
            raise SagaError(f"{exc}; {PROVENANCE_FIX}") from None


def load_model(run_dir: str | Path) -> tuple[VideoTransformer, RunInfo]:
    """The run's best weights as an eval-mode model, and what it predicts (classes, level, frames)."""
    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise SagaError(f"{path}: not a saga run folder (no {CONFIG}); pass the --out of `saga train`/`attribute`")
    config = read_json(path / CONFIG)
    if isinstance(config, dict) and config.get("kind") == "probe":  # its advice would be "rerun it to resume"
        raise SagaError(f"{path}: holds a linear probe (saga probe), not a trained model; pass a run folder of "
                        "`saga train`/`attribute` (the probe's own figures are in its metrics.json, and "
                        "`saga report` shows it beside runs)")
    if not (path / MODEL).is_file():
        raise SagaError(f"{path}: no {MODEL}; " + (
            "its weights were deleted: rerun the run's training command to train it again" if (path / DONE).is_file()
            else "the run has not completed an epoch (rerun it to resume)"))
    model = build_model(path / MODEL)
    _check_weights_belong(path, config, model)
    prov_path = path / PROVENANCE
    classes, level, frames = _checked_run_config(path / CONFIG, config, model.config.max_frames)
    provenance = read_json(prov_path) if prov_path.is_file() else {}
    if not isinstance(provenance, dict):
        raise SagaError(f"{prov_path}: not a JSON object; the run folder is damaged")
    info = RunInfo(path=path, config=config, classes=classes, level=level, frames=frames,
                   provenance=provenance, finished=finished(path))
    if model.config.n_classes != len(info.classes):
        raise SagaError(f"{path / MODEL}: the model has {model.config.n_classes} outputs but {CONFIG} lists "
                        f"{len(info.classes)} classes; the folder is damaged")
    return model, info


def build_model(path: Path) -> VideoTransformer:
    """An eval-mode model from a weights file alone (its metadata config, then its tensors), errors naming it."""
    model_config = read_model_config(path)
    weights, _ = load_tensors(path)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SagaError(f"{path}: tensor {name} holds NaN or inf; the file is damaged: {RETRAIN}")
    try:
        model = VideoTransformer(model_config)
        model.load_state_dict(weights)
    except (RuntimeError, ValueError, TypeError) as exc:  # wrong tensor shapes or names
        raise SagaError(f"{path}: weights do not fit the stored config ({reason(exc)}); "
                        "the file is damaged or not from saga") from None
    return model.eval()


def read_model_config(path: Path) -> ModelConfig:
    """The model config in a weights file's metadata, every size bounded before anything is allocated."""
    if not path.is_file():
        raise SagaError(f"{path}: missing; {RETRAIN}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            stored = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    except Exception as exc:
        raise SagaError(f"{path}: unreadable safetensors file ({exc}); {RETRAIN}") from None
    if "config" not in meta:
        raise SagaError(f"{path}: no model config in its metadata; not written by saga")
    try:
        raw = loads(meta["config"])
        if not isinstance(raw, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        raise SagaError(f"{path}: corrupt model config in its metadata ({exc})") from None
    _check_sizes(path, raw, stored)
    missing = [key for key in CORE_KEYS if key not in raw]
    if missing:
        raise SagaError(f"{path}: the model config in its metadata lacks {', '.join(missing)}; the file is damaged "
                        f"or not from saga: {RETRAIN}")
    try:
        return ModelConfig.from_dict(raw)
    except SagaError as exc:
        raise SagaError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise SagaError(f"{path}: invalid model config in its metadata ({exc})") from None


def _check_weights_belong(path: Path, config: Any, model: VideoTransformer) -> None:
    """config.json's `model` (when recorded) is the weights' own shape: another run's model.safetensors copied
    in, or either file edited, was loaded and its outputs read with this run's class names."""
    recorded = config.get("model") if isinstance(config, dict) else None
    if not isinstance(recorded, dict):
        return
    ours = model.config.to_dict()
    differ = [f"{key} {recorded[key]!r} vs {ours[key]!r}" for key in SHAPE_KEYS
              if key in recorded and recorded[key] != ours[key]]
    if differ:
        raise SagaError(f"{path / MODEL}: not the model {CONFIG} describes ({'; '.join(differ)}: {CONFIG} vs the "
                        f"weights); the run folder is damaged or mixes two runs: {RETRAIN}")


def _check_sizes(path: Path, raw: dict[str, Any], stored: int) -> None:
    """Every size within MODEL_LIMITS, and the implied parameter count near what the file holds."""
    for key, limit in MODEL_LIMITS.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= limit:
            raise SagaError(f"{path}: model config {key}={value!r} is out of range (0..{limit}); "
                            "the weights file is damaged or not from saga")
    d = float(raw.get("d_model", 256))
    wanted = (float(raw.get("depth", 4)) * d * d * (4 + 2 * float(raw.get("mlp_ratio", 4.0)))
              + (float(raw.get("in_dim", 0)) + float(raw.get("content_dim", 0)) + float(raw.get("n_classes", 0))) * d)
    if wanted > 2 * stored + 1_000_000:  # the config would allocate far more than the file holds
        raise SagaError(f"{path}: model config asks for ~{wanted:.3g} parameters but the file holds {stored}; "
                        "the metadata is damaged or hostile")


def _checked_run_config(path: Path, config: Any, max_frames: int) -> tuple[list[str], str, int]:
    """classes, level and frames of a run's config.json, each checked (someone else's folder may be hostile)."""
    if not isinstance(config, dict):
        raise SagaError(f"{path}: not a JSON object; the run folder is damaged")
    classes, level, frames = config.get("classes"), config.get("level"), config.get("frames")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) or (
            len(set(classes)) != len(classes)):
        raise SagaError(f"{path}: 'classes' must list at least two distinct class names; the run folder is damaged")
    if level not in LEVELS:
        raise SagaError(f"{path}: 'level' must be one of {', '.join(LEVELS)}, got {level!r}; the run folder is damaged")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= max_frames:
        raise SagaError(f"{path}: 'frames' must be an integer in 1..{max_frames} (the model's limit), "
                        f"got {frames!r}; the run folder is damaged")
    return list(classes), level, frames


def check_cache(info: RunInfo, cache: FeatureCache) -> None:
    """Refuse a cache that is not the run's own, unless its encoder provenance is identical.

    Another cache with the same encoder, weights, preprocessing and sampling holds
    comparable features (e.g. a held-out set extracted later): evaluate but warn.
    """
    check_cache_seals(cache)
    prov = info.provenance or {}
    run_id = prov.get("cache_id")
    if run_id is not None and run_id == cache.cache_id:
        return
    if not prov.get("encoder"):  # nothing to compare with: features of any encoder would be scored
        raise SagaError(f"{info.path / PROVENANCE}: missing or without the run's encoder, so {cache.root} cannot be "
                        f"checked against it; {PROVENANCE_FIX}")
    differ = info.encoder.differences(cache.encoder_spec)
    if differ:
        raise SagaError(
            f"{cache.root}: cache {cache.cache_id[:12]} is not the run's cache {str(run_id)[:12]} and its "
            f"{', '.join(differ)} differ; evaluate on features from the run's encoder and sampling"
        )
    warnings.warn(f"{cache.root}: not the run's training cache ({str(run_id)[:12] if run_id else 'not recorded'}), "
                  "but extracted with the same encoder and sampling; evaluating anyway", stacklevel=3)


def heldout_tag(info: RunInfo, cache: FeatureCache) -> str | None:
    """None for the run's own cache (or a run that records none: files keep their plain names, as before),
    else the tag that names a held-out cache's files apart (`files.on_cache`), so an evaluation on it never
    replaces the run's own results or another held-out cache's."""
    run_id = (info.provenance or {}).get("cache_id")
    if not run_id or run_id == cache.cache_id:
        return None
    return cache_tag(cache.root, cache.cache_id)
