"""Phase 1: decode and encode every video once into the feature cache.

reader (DataLoader worker processes: decode + the encoder's own preprocessing)
-> mapper (the frozen encoder, batched across videos)
-> writer (a background thread writing whole shards, then committing records).
The three overlap, and the time spent in each is reported so the bottleneck shows.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from saga import distributed
from saga.distributed import resolve_device
from saga.cache.manifest import (FAILED, SPLITS, VideoRecord, seeded_hash, append_split_plan, assign_splits,
                                 file_fingerprint, read_split_plan)
from saga.cache.store import DEFAULT_SHARD_ROWS, FeatureCache, PartWriter, next_part_name
from saga.errors import DecodeError, SagaError
from saga.pipeline.decode import decode_video
from saga.pipeline.encoders import DEFAULT_ENCODER, DEFAULT_PRETRAINED, FrameEncoder, load_encoder, preprocess_frames
from saga.pipeline.inputs import VideoInput, discover
from saga.pipeline.sampling import SamplingPolicy
from saga.provenance import now, versions
from saga.taxonomy import Taxonomy

ProgressFn = Callable[[int, int, int], None]  # (videos done, videos to do, frames done)


@dataclass
class ExtractConfig:
    videos: Path
    out: Path
    labels: Path | None = None
    taxonomy: str | None = None
    encoder: str = DEFAULT_ENCODER
    pretrained: str | None = DEFAULT_PRETRAINED
    frames: int = 16
    sampling: str = "consecutive"
    windows: int = 1
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    split_seed: int = 0
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    retry_failed: bool = False
    allow_outside: bool = False  # labels CSV paths outside the videos folder (absolute, ..) are refused unless set
    shard_rows: int = DEFAULT_SHARD_ROWS
    compile: bool = False  # torch.compile the encoder (worth it on a GPU for long runs)


@dataclass
class ExtractSummary:
    cache: Path
    found: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    frames: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "encode": 0.0, "write": 0.0, "pipeline": 0.0,
                                                                     "wall": 0.0})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cache": str(self.cache)}


def _load(cfg: ExtractConfig) -> FrameEncoder:
    encoder = load_encoder(cfg.encoder, cfg.pretrained, str(resolve_device(cfg.device)))
    if cfg.compile:  # after the fingerprint is taken from the plain module
        encoder.provenance()
        encoder.model = torch.compile(encoder.model)
    return encoder


def resolve_taxonomy(cfg: ExtractConfig) -> Taxonomy:
    """--taxonomy, else the videos folder's taxonomy.toml, else the cache's, else GenVideo's."""
    if cfg.taxonomy:
        return Taxonomy.load(cfg.taxonomy)
    if (cfg.videos / "taxonomy.toml").is_file():
        return Taxonomy.load(cfg.videos / "taxonomy.toml")
    if (cfg.out / "zarr.json").is_file():
        return FeatureCache.open(cfg.out).taxonomy
    return Taxonomy.load("genvideo")


def build_provenance(encoder: FrameEncoder, policy: SamplingPolicy, taxonomy: Taxonomy, cfg: ExtractConfig) -> dict:
    prov = encoder.provenance()
    return {
        **prov,
        "sampling": policy.to_dict(),
        "taxonomy": taxonomy.to_dict(),
        "split": {"seed": cfg.split_seed, "fractions": cfg.split_fractions},
        "versions": versions(),
        "created": now(),
    }


class VideoDataset(Dataset):
    """Decodes and preprocesses one video per item; errors become data, never exceptions."""

    def __init__(self, items: list[VideoInput], root: Path, policy: SamplingPolicy, preprocess: Callable) -> None:
        self.items, self.root, self.policy, self.preprocess = items, root, policy, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        out: dict[str, Any] = {"index": index, "error": ""}
        try:
            clip = decode_video(self.items[index].absolute(self.root), self.policy)
            w, t = clip.mask.shape
            flat = clip.frames.reshape(w * t, *clip.frames.shape[2:])
            out.update(pixels=preprocess_frames(self.preprocess, flat), mask=clip.mask, timestamps=clip.timestamps,
                       fps=float(clip.fps), n_frames=int(clip.n_frames), backend=clip.backend)
        except DecodeError as exc:
            out["error"] = str(exc).splitlines()[0] if str(exc) else "undecodable"
        except Exception as exc:  # one bad video must never stop the run
            out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        out["seconds"] = time.perf_counter() - start
        return out


def _identity(batch: Any) -> Any:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def plan(cfg: ExtractConfig, cache: FeatureCache, items: list[VideoInput]) -> tuple[list[VideoInput], dict[str, str]]:
    """The videos this pass must extract (new, changed, or failed with --retry-failed) and their splits.

    Splits come from the cache's split plan, where every video is recorded once before it is
    extracted: a killed and resumed run ends with the same splits as an uninterrupted one.
    """
    existing = {r.path: r for r in cache.records()}
    todo = []
    for item in items:
        old = existing.get(item.rel)
        if old is None or old.fingerprint() != file_fingerprint(item.absolute(cfg.videos)) or (
                not old.ok and (cfg.retry_failed or _fixed_since(old, item.absolute(cfg.videos)))):
            todo.append(item)
    planned = read_split_plan(cache.split_plan_path)
    counts: dict[str, dict[str, int]] = {}
    for generator, split in planned.values():
        counts.setdefault(generator, {s: 0 for s in SPLITS})[split] += 1
    new = [(i.rel, i.generator) for i in items if i.rel not in planned]
    assigned = assign_splits(new, counts, cfg.split_fractions, cfg.split_seed)
    append_split_plan(cache.split_plan_path, {i.rel: (i.generator, assigned[i.rel]) for i in items if i.rel in assigned})
    splits = {rel: split for rel, (_, split) in planned.items()} | assigned
    # a seeded shuffle, so that every stored shard mixes generators (streaming reads shard by shard)
    todo.sort(key=lambda item: seeded_hash(cfg.split_seed, item.rel))
    return todo, splits


def _fixed_since(old: VideoRecord, path: Path) -> bool:
    """A failure for lack of permission is retried once the file is readable (chmod keeps size and mtime)."""
    return "permission denied" in old.error and os.access(path, os.R_OK)


class _Writer(threading.Thread):
    """Runs PartWriter calls in order, off the main thread, so writing overlaps encoding."""

    def __init__(self, writer: PartWriter) -> None:
        super().__init__(daemon=True)
        self.writer, self.jobs, self.seconds, self.error = writer, queue.Queue(maxsize=64), 0.0, None

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                start = time.perf_counter()
                try:
                    job()
                except BaseException as exc:  # surfaced by finish()
                    self.error = exc
                self.seconds += time.perf_counter() - start

    def finish(self) -> None:
        self.jobs.put(self.writer.close)
        self.jobs.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def extract(cfg: ExtractConfig, progress: ProgressFn | None = None) -> ExtractSummary:
    """Extract every new or changed video of `cfg.videos` into the cache `cfg.out`.

    Under torchrun (WORLD_SIZE > 1) the ranks share the work: see `_extract_distributed`.
    """
    if distributed.context().enabled:
        return _extract_distributed(cfg, progress)
    wall = time.perf_counter()
    policy = SamplingPolicy(frames=cfg.frames, mode=cfg.sampling, windows=cfg.windows)
    taxonomy = resolve_taxonomy(cfg)
    items = discover(cfg.videos, cfg.labels, taxonomy, cfg.allow_outside)
    encoder = _load(cfg)
    cache = FeatureCache.create_or_open(cfg.out, build_provenance(encoder, policy, taxonomy, cfg))
    todo, splits = plan(cfg, cache, items)
    summary = ExtractSummary(cache=cfg.out, found=len(items), skipped=len(items) - len(todo))
    if todo:
        writer = PartWriter(cache, next_part_name(cache), capacity=len(todo) * policy.windows,
                            shard_rows=cfg.shard_rows)
        started = time.perf_counter()
        _run(cfg, todo, splits, taxonomy, policy, encoder, writer, summary, progress)
        summary.seconds["pipeline"] = time.perf_counter() - started  # decode -> written cache, no setup
    summary.failures = [(r.path, r.error) for r in cache.records(refresh=True) if not r.ok]
    summary.seconds["wall"] = time.perf_counter() - wall
    return summary


_SUMMED = ("ok", "failed", "frames")


def _extract_distributed(cfg: ExtractConfig, progress: ProgressFn | None) -> ExtractSummary:
    """One pass shared by the torchrun ranks; the cache ends as a single-process pass would leave it.

    Rank 0 alone creates (or opens and checks) the cache, appends the split plan and plans
    the pass: the todo list (in the seeded shuffle order) and the pass number. Every rank
    then takes the deterministic shard todo[rank::world_size] and writes it into its own
    part p{pass}-r{rank} (no shared shard, no lock). The per-rank summaries are summed, so
    every rank returns the same totals (and the CLI exits with the same code everywhere);
    only rank 0 reports progress.
    """
    wall = time.perf_counter()
    ctx = distributed.init(resolve_device(cfg.device))
    policy = SamplingPolicy(frames=cfg.frames, mode=cfg.sampling, windows=cfg.windows)

    def load() -> tuple[Taxonomy, FrameEncoder]:  # every rank, before anyone creates the cache
        taxonomy = resolve_taxonomy(cfg)
        return taxonomy, _load(cfg)

    taxonomy, encoder = distributed.run_everywhere(load)
    provenance = build_provenance(encoder, policy, taxonomy, cfg)

    def decide() -> tuple[int, list[VideoInput], dict[str, str], int]:  # rank 0
        items = discover(cfg.videos, cfg.labels, taxonomy, cfg.allow_outside)
        cache = FeatureCache.create_or_open(cfg.out, provenance)
        todo, splits = plan(cfg, cache, items)
        pass_id = int(next_part_name(cache).split("-")[0][1:])
        return pass_id, todo, {i.rel: splits[i.rel] for i in todo}, len(items)

    pass_id, todo, splits, found = distributed.run_on_main(decide)

    def reopen() -> FeatureCache:  # every rank checks its own encoder against the cache
        cache = FeatureCache.open(cfg.out)
        cache.check_compatible(provenance)
        return cache

    cache = distributed.run_everywhere(reopen)
    mine = todo[ctx.rank::ctx.world_size]
    summary = ExtractSummary(cache=cfg.out, found=found, skipped=found - len(todo))
    if mine:
        writer = PartWriter(cache, next_part_name(cache, rank=ctx.rank, pass_id=pass_id),
                            capacity=len(mine) * policy.windows, shard_rows=cfg.shard_rows)
        started = time.perf_counter()
        _run(cfg, mine, splits, taxonomy, policy, encoder, writer, summary, progress if ctx.is_main else None)
        summary.seconds["pipeline"] = time.perf_counter() - started
    parts = distributed.all_gather_object(summary.to_dict())  # also: every part is closed after this
    for key in _SUMMED:
        setattr(summary, key, sum(p[key] for p in parts))
    for key in ("decode", "encode", "write"):  # time spent adds up over the ranks
        summary.seconds[key] = sum(p["seconds"][key] for p in parts)
    summary.seconds["pipeline"] = max(p["seconds"]["pipeline"] for p in parts)  # the slowest rank's
    summary.failures = [(r.path, r.error) for r in cache.records(refresh=True) if not r.ok]
    summary.seconds["wall"] = time.perf_counter() - wall
    return summary


def _run(cfg: ExtractConfig, todo: list[VideoInput], splits: dict[str, str], taxonomy: Taxonomy,
         policy: SamplingPolicy, encoder: FrameEncoder, part: PartWriter, summary: ExtractSummary,
         progress: ProgressFn | None) -> None:
    dataset = VideoDataset(todo, cfg.videos, policy, encoder.preprocess)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=cfg.workers, collate_fn=_identity,
                        worker_init_fn=_worker_init if cfg.workers else None,
                        prefetch_factor=4 if cfg.workers else None, pin_memory=encoder.device.type == "cuda")
    writer = _Writer(part)
    writer.start()
    frames_per_video = policy.windows * policy.frames
    queued: list[dict[str, Any]] = []
    done = 0

    def record_for(item: VideoInput, status: str = "ok", error: str = "") -> VideoRecord:
        size, mtime = file_fingerprint(item.absolute(cfg.videos))
        return VideoRecord(path=item.rel, size=size, mtime_ns=mtime, status=status, error=error,
                           generator=item.generator, labels=taxonomy.labels(item.generator), split=splits[item.rel])

    def encode_queued() -> None:
        nonlocal done
        if not queued:
            return
        pixels = torch.cat([q["pixels"] for q in queued])
        start = time.perf_counter()
        feats = torch.cat([encoder.encode(chunk) for chunk in pixels.split(cfg.batch_size)])
        feats = feats.to(torch.float16).cpu().numpy()
        summary.seconds["encode"] += time.perf_counter() - start
        for i, q in enumerate(queued):
            rec = record_for(todo[q["index"]])
            rec.n_frames, rec.fps, rec.backend = q["n_frames"], q["fps"], q["backend"]
            block = feats[i * frames_per_video:(i + 1) * frames_per_video].reshape(policy.windows, policy.frames, -1)
            writer.jobs.put(lambda r=rec, b=block, m=q["mask"], t=q["timestamps"]: part.add(r, b, m, t))
            summary.ok += 1
            summary.frames += frames_per_video
        done += len(queued)
        queued.clear()

    try:
        for item in loader:
            summary.seconds["decode"] += item["seconds"]
            if item["error"]:
                rec = record_for(todo[item["index"]], FAILED, item["error"])
                writer.jobs.put(lambda r=rec: part.add_failure(r))
                summary.failed += 1
                done += 1
            else:
                queued.append(item)
                if len(queued) * frames_per_video >= cfg.batch_size:
                    encode_queued()
            if progress:
                progress(done, len(todo), summary.frames)
        encode_queued()
        if progress:
            progress(done, len(todo), summary.frames)
    finally:
        writer.finish()  # on Ctrl-C too: what was encoded is written and committed
        summary.seconds["write"] = writer.seconds
