"""Run folders (docs/run-folder.md): what a training run writes, resumes from and is loaded from.

Everything is JSON or safetensors, never pickle, so opening someone's run cannot
run code. Files are written to a temporary name and `os.replace`d, so a killed
run never leaves half a file. The resume state (last.safetensors,
optimizer.safetensors, state.json) is committed by state.json, written last; the
two tensor files carry their epoch in their metadata so a run killed between
the three writes is detected instead of silently resuming from mixed epochs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from saga.cache.provenance import EncoderSpec
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga import fileio
from saga.fileio import atomic_path, write_json, write_text
from saga.model import ModelConfig, VideoTransformer
from saga.provenance import machine, now, versions

CONFIG, PROVENANCE, MODEL, DONE = "config.json", "provenance.json", "model.safetensors", "done.json"
LAST, OPTIMIZER, STATE = "last.safetensors", "optimizer.safetensors", "state.json"
METRICS, LABELLED = "metrics.jsonl", "labelled.json"
RESUME_FILES = (LAST, OPTIMIZER, STATE)
# save_state writes the three resume files into CKPT_NEW, renames it to CKPT_COMMIT (the one atomic
# switch: from then on the new checkpoint wins), then moves them into place; `recover` rolls a
# kill at any point forward (CKPT_COMMIT) or back (CKPT_NEW), so the three files always agree.
CKPT_NEW, CKPT_COMMIT = ".checkpoint.new", ".checkpoint.commit"
# Bounds on what a weights file from someone else may ask us to allocate (checked before building the model).
MODEL_LIMITS = {"in_dim": 65536, "d_model": 16384, "depth": 128, "heads": 256, "mlp_ratio": 16.0,
                "max_frames": 8192, "n_classes": 1_000_000, "temporal_lags": 256, "content_dim": 65536}
EVALUATION = "metrics.json"  # the latest `saga evaluate`; metrics-<split>.json per split
TSIG, TSIG_CSV, TSIG_MAPS, TSIG_PROFILES = "tsig.npz", "tsig_profiles.csv", "tsig_maps.png", "tsig_profiles.png"
TSNE_GLOB = "tsne*.png"


def evaluation_file(split: str | None = None) -> str:
    """metrics-<split>.json, or metrics.json (the latest evaluation) without a split."""
    return EVALUATION if split is None else f"metrics-{split}.json"


def tsne_file(level: str) -> str:
    return f"tsne_{level}.png"


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
        """The encoder (and sampling) of the features the run was trained on."""
        return EncoderSpec.from_dict(self.provenance.get("encoder") or {}, f"{self.path} ({PROVENANCE})")


# -- small file helpers -----------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """A run folder's JSON file; errors say what to do about the folder."""
    return fileio.read_json(path, missing=f"; is {path.parent} a saga run folder?",
                            corrupt="; delete the run folder and train again")


def file_fingerprint(path: Path) -> str:
    """blake2b of a file's bytes: names the exact stage-1 weights a stage-2 run started from."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise SagaError(f"{path}: missing; the run has no saved weights yet")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise SagaError(f"{path}: unreadable safetensors file ({exc}); delete it and train again") from None


def save_weights(path: Path, model: VideoTransformer, **meta: Any) -> None:
    """Weights plus the model config in the metadata, so the file alone rebuilds the model."""
    metadata = {"config": json.dumps(model.config.to_dict()), **{k: json.dumps(v) for k, v in meta.items()}}
    save_tensors(path, model.state_dict(), metadata)


def encoder_provenance(cache: FeatureCache) -> dict[str, Any]:
    """The cache's encoder: the fields that make features comparable, plus how to load it again."""
    return cache.encoder_spec.to_dict()


def cache_digest(cache: FeatureCache) -> str:
    """blake2b of the cache's ok records (path, split, checksum): changes when videos are added or re-extracted."""
    h = hashlib.blake2b(digest_size=16)
    for r in cache.ok_records():
        h.update(f"{r.path}\0{r.split}\0{r.checksum}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def make_provenance(cache: FeatureCache, seed: int, from_run: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "cache_id": cache.cache_id,
        "cache_records": len(cache.ok_records()),
        "cache_digest": cache_digest(cache),
        "cache_path": str(cache.root.resolve()),
        "encoder": encoder_provenance(cache),
        "taxonomy": cache.attrs.get("taxonomy"),
        "seed": seed,
        "from_run": from_run,
        "versions": versions(),
        "machine": machine(),
        "started": now(),
        "finished": None,
    }


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that change what a run computes (not where the cache lies, not the device)."""
    ident = copy.deepcopy(config)
    ident.pop("cache", None)
    ident.get("train", {}).pop("device", None)
    return json.loads(json.dumps(ident, default=str))


# -- the run folder ---------------------------------------------------------------------------
class RunFolder:
    """One run's folder: created, resumed, or found finished and reused."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def open_for(cls, out: str | Path, config: dict[str, Any], provenance: dict[str, Any]) -> "RunFolder":
        """Create the folder, or reopen it when it holds this very run (to resume or reuse).

        A folder holding a different run (other settings or another cache) is refused rather
        than overwritten: the user's finished results are never lost to a typo in --out.
        """
        run = cls(Path(out))
        cfg_path = run.path / CONFIG
        if cfg_path.is_file():
            run.recover()
            run._check_same(config, provenance)
            if not run.done:
                prov = read_json(run.path / PROVENANCE)
                prov.setdefault("resumed", []).append(now())
                write_json(run.path / PROVENANCE, prov)
            return run
        if run.path.exists():
            if not run.path.is_dir():
                raise SagaError(f"{run.path}: exists and is not a folder; choose another --out")
            extra = sorted(p.name for p in run.path.iterdir() if p.name != LABELLED)
            if extra:
                raise SagaError(f"{run.path}: not empty and not a saga run ({extra[0]}, ...); choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        write_json(run.path / PROVENANCE, provenance)
        write_json(cfg_path, config)  # last: a folder with config.json is a run
        return run

    def _check_same(self, config: dict[str, Any], provenance: dict[str, Any]) -> None:
        old = read_json(self.path / CONFIG)
        old_prov = read_json(self.path / PROVENANCE)
        what = "finished" if self.done else "unfinished"
        if old_prov.get("cache_id") != provenance.get("cache_id"):
            raise SagaError(f"{self.path}: holds a {what} run on another cache ({str(old_prov.get('cache_id'))[:12]}); "
                            "choose another --out")
        if old_prov.get("cache_digest") and provenance.get("cache_digest") and (
                old_prov["cache_digest"] != provenance["cache_digest"]):
            raise SagaError(
                f"{self.path}: holds a {what} run trained on {old_prov.get('cache_records')} records of this cache, "
                f"which now holds {provenance.get('cache_records')} (videos added or re-extracted); "
                "choose another --out to train on the new data, or delete the folder to start over")
        a, b = _identity(old), _identity(config)
        if a != b:
            diff = _first_difference(a, b)
            raise SagaError(f"{self.path}: holds a {what} run with different settings ({diff}); "
                            "choose another --out, or delete the folder to start over")

    # -- state ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return (self.path / DONE).is_file()

    @property
    def unfinished(self) -> bool:
        """Holds resume state of a run that has not finished (rerun with --resume to continue it)."""
        return (self.path / STATE).is_file() and not self.done

    def check_resume(self, resume: bool) -> None:
        """Refuse to touch an unfinished run unless asked to resume it."""
        if not resume and self.unfinished:
            raise SagaError(f"{self.path}: holds an unfinished run; pass --resume to continue it, "
                            "or choose another --out")

    def file(self, name: str) -> Path:
        return self.path / name

    def read_optional(self, name: str) -> Any:
        """A JSON file of the folder, or None when it is missing or unreadable (for reports)."""
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_evaluation(self, split: str, result: dict[str, Any]) -> None:
        """metrics-<split>.json, then metrics.json (the latest evaluation)."""
        write_json(self.path / evaluation_file(split), result)
        write_json(self.path / evaluation_file(), result)

    def evaluations(self) -> dict[str, Any]:
        """Split -> its metrics-<split>.json (unreadable ones as None)."""
        return {p.stem.removeprefix("metrics-"): self.read_optional(p.name)
                for p in sorted(self.path.glob("metrics-*.json"))}

    @property
    def has_tsigs(self) -> bool:
        return (self.path / TSIG).is_file()

    def figures(self) -> list[Path]:
        """The run's plots: T-Sig maps and profiles, then t-SNE maps."""
        figs = [self.path / n for n in (TSIG_MAPS, TSIG_PROFILES) if (self.path / n).is_file()]
        return figs + sorted(self.path.glob(TSNE_GLOB))

    def save_best(self, model: VideoTransformer, epoch: int, metric: float | None) -> None:
        save_weights(self.path / MODEL, model, epoch=epoch, metric=metric)

    def save_state(self, model: VideoTransformer, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> None:
        """The resume point after a completed epoch, committed as one unit (see CKPT_NEW / CKPT_COMMIT)."""
        self.recover()
        new = self.path / CKPT_NEW
        new.mkdir()
        epoch = json.dumps(state["epoch"])
        save_weights(new / LAST, model, epoch=state["epoch"])
        tensors, opt_meta = _flatten_optimizer(optimizer)
        save_tensors(new / OPTIMIZER, tensors, {"epoch": epoch})
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        write_json(new / STATE, {**state, "optimizer": opt_meta, "scheduler": sched})
        for name in RESUME_FILES:
            _fsync(new / name)
        os.replace(new, self.path / CKPT_COMMIT)  # the commit point
        _fsync(self.path)
        self.recover()

    def recover(self) -> None:
        """Finish or undo a checkpoint switch cut short by a kill, and remove temporary files left behind."""
        commit, new = self.path / CKPT_COMMIT, self.path / CKPT_NEW
        if commit.is_dir():
            for name in RESUME_FILES:  # roll forward: the committed set replaces the old one
                if (commit / name).exists():
                    os.replace(commit / name, self.path / name)
            shutil.rmtree(commit, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)  # never committed: the files in place are the last checkpoint
        for tmp in self.path.glob(".*.tmp-*"):  # atomic writes of a killed process (one trainer per folder)
            if tmp.is_file():
                tmp.unlink(missing_ok=True)

    def load_state(self, model: VideoTransformer, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any] | None:
        """Restore model, optimizer and scheduler from the last completed epoch (None: nothing saved)."""
        self.recover()
        if not (self.path / STATE).is_file():
            return None
        state = read_json(self.path / STATE)
        weights, wmeta = load_tensors(self.path / LAST)
        tensors, ometa = load_tensors(self.path / OPTIMIZER)
        epoch = json.dumps(state["epoch"])
        if wmeta.get("epoch") != epoch or ometa.get("epoch") != epoch:
            raise SagaError(f"{self.path}: the resume files are from different epochs (killed while saving); "
                            f"delete {', '.join(RESUME_FILES)} and {METRICS} to restart this run")
        model.load_state_dict(weights)
        _restore_optimizer(optimizer, tensors, state.pop("optimizer"))
        sched = state.pop("scheduler")
        scheduler.load_state_dict({**sched, "lr_lambdas": [None] * len(sched.get("base_lrs", []))})
        return state

    # -- metrics -------------------------------------------------------------------------------
    def append_metrics(self, line: dict[str, Any]) -> None:
        with open(self.path / METRICS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self, tolerant: bool = False) -> list[dict[str, Any]]:
        """metrics.jsonl; `tolerant` skips unreadable lines (a torn last line of a run killed mid-write)."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if not tolerant:
                    raise
        return rows

    def trim_metrics(self, last_epoch: int) -> None:
        """Drop lines of epochs after the resume point (a run killed after logging, before saving)."""
        lines = [l for l in self.read_metrics() if l.get("epoch", 0) <= last_epoch]
        write_text(self.path / METRICS, "".join(json.dumps(l, default=str) + "\n" for l in lines))

    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the run finished (done.json), then drop the resume state it no longer needs."""
        prov = read_json(self.path / PROVENANCE)
        prov["finished"] = now()
        write_json(self.path / PROVENANCE, prov)
        write_json(self.path / DONE, {**summary, "finished": prov["finished"]})
        for name in RESUME_FILES:
            (self.path / name).unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state as flat tensors ("<param>.<name>") plus JSON-able groups and scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'config'}: {a!r} -> {b!r}"


# -- loading -----------------------------------------------------------------------------------
def load_model(run_dir: str | Path) -> tuple[VideoTransformer, RunInfo]:
    """The run's best weights as an eval-mode model, and what it predicts (classes, level, frames)."""
    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise SagaError(f"{path}: not a saga run folder (no {CONFIG}); pass the --out of `saga train`/`attribute`")
    config = read_json(path / CONFIG)
    if not (path / MODEL).is_file():
        raise SagaError(f"{path}: no {MODEL} yet; the run has not completed an epoch (rerun it to resume)")
    model_config = read_model_config(path / MODEL)
    weights, _ = load_tensors(path / MODEL)
    model = VideoTransformer(model_config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise SagaError(f"{path / MODEL}: weights do not fit the stored config ({str(exc)[:200]})") from None
    model.eval()
    prov_path = path / PROVENANCE
    classes, level, frames = _checked_run_config(path / CONFIG, config, model.config.max_frames)
    info = RunInfo(
        path=path,
        config=config,
        classes=classes,
        level=level,
        frames=frames,
        provenance=read_json(prov_path) if prov_path.is_file() else {},
        finished=(path / DONE).is_file(),
    )
    if model.config.n_classes != len(info.classes):
        raise SagaError(f"{path}: the model has {model.config.n_classes} outputs but config.json lists "
                        f"{len(info.classes)} classes; the folder is damaged")
    return model, info


def read_model_config(path: Path) -> ModelConfig:
    """The model config in a weights file's metadata, every size bounded before anything is allocated."""
    if not path.is_file():
        raise SagaError(f"{path}: missing; the run has no saved weights yet")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            stored = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    except Exception as exc:
        raise SagaError(f"{path}: unreadable safetensors file ({exc}); delete it and train again") from None
    if "config" not in meta:
        raise SagaError(f"{path}: no model config in its metadata; not written by saga")
    try:
        raw = json.loads(meta["config"])
        if not isinstance(raw, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        raise SagaError(f"{path}: corrupt model config in its metadata ({exc})") from None
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
    try:
        return ModelConfig.from_dict(raw)
    except SagaError as exc:
        raise SagaError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise SagaError(f"{path}: invalid model config in its metadata ({exc})") from None


def _checked_run_config(path: Path, config: Any, max_frames: int) -> tuple[list[str], str, int]:
    """classes, level and frames of a run's config.json, each checked (someone else's folder may be hostile)."""
    if not isinstance(config, dict):
        raise SagaError(f"{path}: not a JSON object; the run folder is damaged")
    classes, level, frames = config.get("classes"), config.get("level"), config.get("frames")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) or (
            len(set(classes)) != len(classes)):
        raise SagaError(f"{path}: 'classes' must list at least two distinct class names; the run folder is damaged")
    if not isinstance(level, str) or not level:
        raise SagaError(f"{path}: 'level' must be a level name; the run folder is damaged")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= max_frames:
        raise SagaError(f"{path}: 'frames' must be an integer in 1..{max_frames} (the model's limit), "
                        f"got {frames!r}; the run folder is damaged")
    return list(classes), level, frames


def check_cache(info: RunInfo, cache: FeatureCache) -> None:
    """Refuse a cache that is not the run's own, unless its encoder provenance is identical.

    Another cache with the same encoder, weights, preprocessing and sampling holds
    comparable features (e.g. a held-out set extracted later): evaluate but warn.
    """
    prov = info.provenance or {}
    run_id = prov.get("cache_id")
    if run_id is None or run_id == cache.cache_id:
        return
    differ = info.encoder.differences(cache.encoder_spec)
    if differ:
        raise SagaError(
            f"{cache.root}: cache {cache.cache_id[:12]} is not the run's cache {str(run_id)[:12]} and its "
            f"{', '.join(differ)} differ; evaluate on features from the run's encoder and sampling"
        )
    warnings.warn(f"{cache.root}: not the run's training cache ({str(run_id)[:12]}), "
                  "but extracted with the same encoder and sampling; evaluating anyway", stacklevel=3)
