"""Weights files and the settings beside them: what a bare file must be checked against before it is trusted.

A weights file carries no preprocessing, activation or resolution of its own; open_clip and timm then fall back
to defaults (another transform, GELU, a silently resized position embedding) and give other features with no
error. These helpers read what the file and its `open_clip_config.json` say, and refuse in one line where the
model's published settings cannot be told apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from saga.errors import SagaError, clipped, reason
from saga.fileio import loads

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz", ".npy", ".ckpt", ".tar", ".pkl")
NUMPY_SUFFIXES = (".npz", ".npy")  # open_clip reads these as big_vision arrays; every other file with torch.load
PP_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
           "resize_mode": "image_resize_mode"}
SIDECAR = "open_clip_config.json"
POS_EMBED = "visual.positional_embedding"  # the key open_clip's resize_pos_embed resizes without a word
# What torch says when weights_only meets code or an object (not when the file is no pickle at all).
_REFUSED = r"\bGLOBAL\b|Unsupported global|unrecognized function|Can only (build|create new object)"
# What a timm tag's transform is made of (timm.data.resolve_data_config reads these).
TIMM_PP_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode", "input_size")


def looks_like_path(pretrained: str) -> bool:
    """Whether --pretrained names a file (a separator or a weights suffix), not a tag."""
    return os.sep in pretrained or "/" in pretrained or pretrained.lower().endswith(WEIGHT_SUFFIXES)


def weights_label(name: str, pretrained: str | None) -> str:
    """How messages name an encoder and its weights: NAME/TAG for a tag (open_clip's spelling), FILE (weights
    for NAME) for a file: glued, `timm:x//data/w.safetensors` read like a URL and hid where the path starts."""
    if pretrained is not None and looks_like_path(pretrained):
        return f"{pretrained} (weights for {name})"
    return f"{name}/{pretrained}"


def missing_file(label: str, pretrained: str) -> SagaError | None:
    """A SagaError if `pretrained` looks like a path (separator or weights suffix) but is not a file."""
    if looks_like_path(pretrained):
        named = "" if pretrained in label else f" {pretrained}"
        return SagaError(f"{label}: weights file{named} not found; check the path (--pretrained FILE)")
    return None


def is_pickle_refusal(exc: BaseException) -> bool:
    """torch.load(weights_only=True) met a global (code, an object) that is not a tensor: nothing was run.

    torch says "Weights only load failed" for any file it cannot unpickle (random bytes, a text file); only a
    named global (or an object built from one) means the file holds code or objects.
    """
    text = str(exc)
    return "Weights only load failed" in text and re.search(_REFUSED, text) is not None



def weights_error(path: str | Path, exc: BaseException) -> SagaError:
    """One line for a weights file torch or safetensors cannot read; a refused pickle says so, with its cause."""
    if is_pickle_refusal(exc):
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        detail = f": unsupported global {found.group(1)[:80]}" if found else ""
        return SagaError(f"refused: {path} holds code/objects besides tensors (not loaded{detail}); "
                         f"save a plain state_dict (or safetensors)")
    head = _file_head(path)
    if head.startswith(b"version https://git-lfs"):
        return SagaError(f"{path}: not a loadable weights file (a git-lfs pointer, not the weights); "
                         f"run `git lfs pull` in its repository")
    if _is_safetensors(head) and not str(path).endswith(".safetensors"):
        return SagaError(f"{path}: not a loadable weights file (a safetensors file under another suffix, read as "
                         f"a torch file); rename it to end in .safetensors")
    return SagaError(f"{path}: not a loadable weights file ({_torch_detail(exc)}); "
                     f"save a state_dict as .safetensors or a plain torch file")


def _file_head(path: str | Path, size: int = 1024) -> bytes:
    """The first bytes of a small file (a git-lfs pointer is ~130 bytes); b"" for a large or unreadable one."""
    try:
        with open(path, "rb") as f:
            return f.read(size) if os.fstat(f.fileno()).st_size <= size else f.read(16)
    except OSError:
        return b""


def _is_safetensors(head: bytes) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and then `{`."""
    return len(head) > 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _torch_detail(exc: BaseException) -> str:
    """torch's own reason, not its boilerplate about weights_only (e.g. "Unsupported operand 118")."""
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
    return clipped(found.group(1), 200) if found else reason(exc)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a torch pickle loaded with weights_only=True (no code execution)."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise weights_error(path, exc) from exc
    wrapped = [k for k in ("state_dict", "model") if isinstance(sd, dict) and isinstance(sd.get(k), dict)]
    sd = sd[wrapped[0]] if wrapped else sd  # training checkpoints wrap the state_dict
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SagaError(f"{path}: does not hold a state_dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in sd.items()}


# -- open_clip_config.json beside a file or in a local-dir: ----------------------------------------------------
def read_sidecar(path: Path) -> dict[str, Any]:
    """`path` (an open_clip_config.json) as a checked mapping; {} when absent. Damage is one line naming it."""
    if not path.is_file():
        return {}
    fix = f"fix or remove {path.name} (it sets the model's preprocessing and activation)"
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SagaError(f"{path}: unreadable ({reason(exc)}); {fix}") from exc
    if not isinstance(data, dict):
        raise SagaError(f"{path}: must hold a JSON object, not {type(data).__name__}; {fix}")
    for key in ("preprocess_cfg", "model_cfg"):
        if not isinstance(data.get(key, {}), dict):
            raise SagaError(f"{path}: {key} must be an object, not {type(data[key]).__name__}; {fix}")
    _check_pp(path, data.get("preprocess_cfg", {}), fix)
    quick = data.get("model_cfg", {}).get("quick_gelu", False)
    if not isinstance(quick, bool):
        raise SagaError(f"{path}: model_cfg.quick_gelu must be true or false, not {quick!r}; {fix}")
    return data


def _check_pp(path: Path, pp: dict, fix: str) -> None:
    """mean/std: 3 numbers; interpolation/resize_mode: text (open_clip checks the value itself)."""
    for key in ("mean", "std"):
        value = pp.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise SagaError(f"{path}: preprocess_cfg.{key} must be a list of 3 numbers, not {value!r}; {fix}")
    for key in ("interpolation", "resize_mode"):
        if pp.get(key) is not None and not isinstance(pp[key], str):
            raise SagaError(f"{path}: preprocess_cfg.{key} must be text, not {pp[key]!r}; {fix}")


def file_settings(name: str, path: Path) -> tuple[dict, bool]:
    """Preprocessing and QuickGELU for a bare weights file: a sibling open_clip_config.json, else what every
    tag agrees on.

    open_clip applies its default (OpenAI) transform and GELU to bare files, which silently gives different
    embeddings for e.g. SigLIP, or OpenAI CLIP weights trained with QuickGELU; this restores the model's
    published settings, and refuses (preprocessing) or warns (activation) when the tags disagree.
    """
    import open_clip

    saved = read_sidecar(path.parent / SIDECAR)
    tags = open_clip.list_pretrained_tags_by_model(name)
    cfgs = {t: open_clip.get_pretrained_cfg(name, t) for t in tags}
    if "preprocess_cfg" in saved:
        pp = as_tuples(saved["preprocess_cfg"])
    else:
        distinct = {json.dumps({k: c.get(k) for k in PP_KEYS}, sort_keys=True) for c in cfgs.values()}
        if len(distinct) > 1:
            raise SagaError(f"{name}/{path}: the published weights of this model use different preprocessing "
                            f"({', '.join(tags)}); put {SIDECAR} (with preprocess_cfg) beside the file, "
                            f"or pass --pretrained TAG")
        pp = {k: next(iter(cfgs.values())).get(k) for k in PP_KEYS} if cfgs else {}
    if "quick_gelu" in saved.get("model_cfg", {}):
        return pp, saved["model_cfg"]["quick_gelu"]
    return pp, tags_quick_gelu(name, path, cfgs)


def tags_quick_gelu(name: str, path: Path, cfgs: dict[str, dict]) -> bool:
    """QuickGELU when every published tag of `name` uses it; GELU (open_clip's default), warned, when they differ."""
    quick = sorted(t for t, c in cfgs.items() if c.get("quick_gelu"))
    if quick and len(quick) < len(cfgs):
        import open_clip

        hint = (f"--encoder {name}-quickgelu" if open_clip.get_model_config(f"{name}-quickgelu") is not None
                else f"{SIDECAR} with model_cfg.quick_gelu = true beside the file")
        warnings.warn(f"{name}/{path}: this model's published weights use QuickGELU ({', '.join(quick)}) or GELU "
                      f"(the others); loading with GELU: for weights of {', '.join(quick)} use {hint}", stacklevel=3)
    return bool(cfgs) and len(quick) == len(cfgs)


def as_tuples(pp: dict) -> dict:
    """JSON gives lists where open_clip's tags give tuples; the transform's repr (the provenance) must not differ."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in pp.items()}


# -- resolution: open_clip resizes a ViT's position embedding to the model's grid, silently --------------------
def pos_embed_shape(path: str | Path) -> tuple[int, ...] | None:
    """The shape of the file's open_clip ViT position embedding, read without loading the tensors.

    Every file but .npz/.npy is read, whatever its suffix (.pth.tar, .pkl, none): open_clip torch.loads all
    of them. None when the file has no such key (a timm trunk, a ResNet) or is a numpy file. A file that cannot
    be read, or a pickle refused by weights_only, is one line naming the file.
    """
    text = str(path)
    if Path(text).suffix in NUMPY_SUFFIXES:  # as open_clip tells them (case and all)
        return None
    if text.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(text, "pt") as f:
                key = next((k for k in (POS_EMBED, f"module.{POS_EMBED}") if k in f.keys()), None)
                return tuple(f.get_slice(key).get_shape()) if key else None
        except Exception as exc:
            raise weights_error(path, exc) from exc
    sd = _torch_tensors(path)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else None
    value = sd.get(POS_EMBED, sd.get(f"module.{POS_EMBED}")) if isinstance(sd, dict) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _torch_tensors(path: str | Path) -> Any:
    """torch.load(weights_only=True), memory-mapped where the format allows (as open_clip will load it)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        if "mmap" not in str(exc) or is_pickle_refusal(exc):
            raise weights_error(path, exc) from exc
    try:  # legacy (non-zip) files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise weights_error(path, exc) from exc


def check_resolution(label: str, path: str | Path, file_shape: tuple[int, ...] | None, visual: Any,
                     name: str) -> None:
    """Refuse weights whose position embedding was trained at another resolution than `visual` takes."""
    want = getattr(visual, "positional_embedding", None)
    if file_shape is None or not isinstance(want, torch.Tensor) or tuple(want.shape) == file_shape:
        return
    size = trained_size(file_shape[0], visual)
    other = encoder_for_size(name, size) if size else None
    if other:
        fix = f"use --encoder {other}"
    elif size:
        fix = f"use a model of {size} px (local-dir: with {SIDECAR} setting vision_cfg.image_size {size})"
    else:
        fix = "use the model the weights were saved from"
    named = "" if str(path) in label else f" ({path})"
    raise SagaError(f"{label}: the weights{named} were trained at {f'{size} px' if size else 'another resolution'} "
                    f"(position embedding {file_shape}), this model takes {_side(visual)} px "
                    f"{tuple(want.shape)}: open_clip would resize it silently, giving other features; {fix}")


def _side(visual: Any) -> int:
    """The image side a tower takes: open_clip's ResNets keep an int, its ViTs a pair."""
    from open_clip.utils import to_2tuple

    return int(to_2tuple(visual.image_size)[0])


def trained_size(tokens: int, visual: Any) -> int | None:
    """The image side a square ViT with `tokens` positions was trained at (same patch and extra tokens)."""
    grid = getattr(visual, "grid_size", None)
    patch = getattr(visual, "patch_size", None)
    if not grid or not patch:
        return None
    extra = int(visual.positional_embedding.shape[0]) - int(grid[0]) * int(grid[1])
    side = math.isqrt(max(tokens - extra, 0))
    return side * int(patch[0]) if side and side * side == tokens - extra else None


def _vision_key(cfg: dict, drop_size: bool = True) -> str:
    """The config parts that decide image features (the text tower is dropped), as canonical JSON."""
    vision = dict(cfg.get("vision_cfg") or {})
    if drop_size:
        vision.pop("image_size", None)
    return json.dumps({"embed_dim": cfg.get("embed_dim"), "vision_cfg": vision,
                       "quick_gelu": bool(cfg.get("quick_gelu", False))}, sort_keys=True)


def encoder_for_size(name: str, size: int) -> str | None:
    """A registered open_clip model that is `name` at `size` px, if any (e.g. ViT-L-14 at 336: ViT-L-14-336)."""
    import open_clip

    try:
        cfg = open_clip.get_model_config(name)
    except Exception:
        return None
    if not cfg:
        return None
    key = _vision_key(cfg)
    for other in sorted(open_clip.list_models()):
        ocfg = open_clip.get_model_config(other) or {}
        image = (ocfg.get("vision_cfg") or {}).get("image_size")
        if image in (size, [size, size], (size, size)) and _vision_key(ocfg) == key:
            return other
    return None


# -- architecture identity: what the features depend on, not how the model was named -------------------------
def open_clip_architecture(name: str) -> str | None:
    """`open_clip:` + a digest of the image tower's config: the same for `NAME`, `local-dir:` and `hf-hub:` of
    one architecture, whatever path was typed. None when the config cannot be read (then the typed name counts)."""
    import open_clip

    try:
        cfg = open_clip.get_model_config(name)
    except Exception:
        return None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict):
        return None
    digest = hashlib.sha256(_vision_key({**cfg, "quick_gelu": False}, drop_size=False).encode()).hexdigest()
    return f"open_clip:{digest[:16]}"


def timm_architecture(model: torch.nn.Module, name: str) -> str:
    """`timm:ARCH` without the tag: a tag changes the weights and preprocessing, both compared on their own."""
    return f"timm:{(getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or name.split('.')[0]}"


def check_timm_tags(name: str, label: str) -> None:
    """A weights file for a bare timm name: refuse when the name's published tags preprocess differently.

    timm gives a bare name its default tag's transform (resnet18: a1_in1k, Resize 235 bicubic) whatever the
    file holds (e.g. the torchvision weights, tv_in1k: Resize 256 bilinear); `timm:NAME.TAG` says which.
    """
    if "." in name:
        return
    from timm.models import get_pretrained_cfg, list_pretrained

    groups: dict[str, list[str]] = {}
    for full in list_pretrained(f"{name}.*"):
        cfg = get_pretrained_cfg(full)
        values = [getattr(cfg, k, None) for k in TIMM_PP_KEYS]
        key = json.dumps([list(v) if isinstance(v, tuple) else v for v in values])
        groups.setdefault(key, []).append(full.split(".", 1)[1])
    if len(groups) > 1:
        tags = [t for group in groups.values() for t in group]
        shown = ", ".join(tags[:6]) + (f", ... ({len(tags)} tags)" if len(tags) > 6 else "")
        raise SagaError(f"{label}: the published weights of timm:{name} use different preprocessing ({shown}); "
                        f"name the tag the file was saved from: --encoder timm:{name}.TAG")
