"""Phase 1: decode and encode every video once into the feature cache.

A small runner composes three steps, each its own module and testable alone:
reader (`saga.pipeline.reader`: DataLoader worker processes decode + preprocess)
-> encoder step (`saga.pipeline.encode_step`: the frozen encoder, batched across videos)
-> writer (`saga.pipeline.writer`: a background thread writing whole shards, then
committing records). The three overlap; `Timings` reports the time spent in each, so the
bottleneck shows.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from saga import distributed
from saga.distributed import resolve_device
from saga.errors import shown
from saga.fileio import make_dir
from saga.locks import lock_folder, unlock_folder
from saga.cache.manifest import (AUGMENTED, FAILED, SPLITS, VideoRecord, seeded_hash, append_split_plan, assign_splits,
                                 file_fingerprint, read_split_plan)
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache, PartWriter, next_part_name, seal_leftover_parts
from saga.pipeline.decoder_audit import mark_audited, misdecoded
from saga.pipeline.encode_step import EncodeStep
from saga.pipeline.config import ExtractConfig, resolve_split
from saga.pipeline.encoders import FrameEncoder, load_encoder
from saga.pipeline.inputs import Inputs, VideoInput, find_inputs
from saga.pipeline.reader import DecodedVideo, DecoderCrash, decode_workers, read_videos
from saga.pipeline.stream import DecodeLimits, VideoStream, preload_decoders
from saga.pipeline.roots import check_root
from saga.pipeline.resume import (Suspects, clear_suspects, keep_suspects, moved_videos, pass_failures, read_suspects,
                                  returning_videos, warn_moved)
from saga.pipeline.sampling import SamplingPolicy
from saga.progress import ProgressEvent, ProgressFn, StepCount, report_encoder, report_step
from saga.pipeline.summary import ExtractSummary, Timings
from saga.pipeline.interrupts import SignalHold
from saga.pipeline.writer import BackgroundWriter
from saga.taxonomy import Taxonomy

# Record paths of re-encoded train copies (`saga extract --augment`, saga.robustness.augment): always
# train, and left out when new videos' splits are balanced.


BUSY = ("another saga extract is writing this cache right now; wait for it to finish, then rerun to add "
        "what it did not")


def _load(cfg: ExtractConfig, progress: ProgressFn | None = None) -> FrameEncoder:
    """The frozen encoder (SigLIP-So400m takes a minute or more on a CPU: the status line says so)."""
    report_encoder(progress, cfg.encoder, cfg.pretrained)
    encoder = load_encoder(cfg.encoder, cfg.pretrained, str(resolve_device(cfg.device)))
    preload_decoders()  # with the encoder, before any part is opened
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
    spec = EncoderSpec.from_dict({**encoder.provenance(), "sampling": policy.to_dict()}, f"encoder {cfg.encoder}")
    return cache_provenance(spec, taxonomy, cfg.split_seed, cfg.split_fractions)


def plan(cfg: ExtractConfig, cache: FeatureCache, items: list[VideoInput], progress: ProgressFn | None = None
         ) -> tuple[list[VideoInput], dict[str, str], int]:
    """The videos this pass must extract (new, changed, misdecoded by an older saga, or failed with
    --retry-failed), their splits, and how many of them are misdecoded.

    Splits come from the cache's split plan, where every video is recorded once before it is
    extracted: a killed and resumed run ends with the same splits as an uninterrupted one. A video
    moved or renamed since it was extracted keeps its old split, as does one pruned and back (`saga.pipeline.resume`).
    """
    existing = {r.path: r for r in cache.records()}
    redo = misdecoded(cache.root, cfg.videos, existing, items)
    moved = moved_videos(existing, items, cfg.videos)
    warn_moved(moved, cfg.out, cfg.videos)
    todo = []
    count = StepCount(progress, f"checking {shown(cfg.out)}: {len(cache.part_names())} part(s)", "videos", len(items))
    for item in items:
        count.add()
        old = existing.get(item.rel)
        if old is None or item.rel in redo or old.fingerprint() != file_fingerprint(item.absolute(cfg.videos)) or (
                old.generator != item.generator) or (  # relabelled: its record must carry the new labels
                not old.ok and (cfg.retry_failed or _fixed_since(old, item.absolute(cfg.videos)))):
            todo.append(item)
    count.end()
    planned = read_split_plan(cache.split_plan_path)
    # A cache rebuilt by `saga cache import` has records but no plan: their splits are the plan.
    adopted = {r.path: (r.generator, r.split) for r in existing.values() if r.path not in planned}
    append_split_plan(cache.split_plan_path, adopted)
    planned |= adopted
    counts: dict[str, dict[str, int]] = {}
    for path, (generator, split) in planned.items():
        if not path.startswith(AUGMENTED):  # copies follow their source; they do not count
            counts.setdefault(generator, {s: 0 for s in SPLITS})[split] += 1
    back = returning_videos(cache.root, items, cfg.videos, planned.keys() | moved.keys())  # pruned, now back
    for item in (i for i in items if i.rel in back):  # they count before the new videos are drawn
        counts.setdefault(item.generator, dict.fromkeys(SPLITS, 0))[back[item.rel]] += 1
    new = [(i.rel, i.generator) for i in items if i.rel not in planned and i.rel not in moved and i.rel not in back]
    assigned = assign_splits(new, counts, cfg.split_fractions, cfg.split_seed) | back
    assigned |= {rel: rec.split for rel, rec in moved.items() if rel not in planned}  # no leak between splits
    append_split_plan(cache.split_plan_path, {i.rel: (i.generator, assigned[i.rel]) for i in items if i.rel in assigned})
    splits = {rel: split for rel, (_, split) in planned.items()} | assigned
    # a seeded shuffle, so that every stored shard mixes generators (streaming reads shard by shard)
    todo.sort(key=lambda item: seeded_hash(cfg.split_seed, item.rel))
    return todo, splits, len(redo)


def _fixed_since(old: VideoRecord, path: Path) -> bool:
    """A failure for lack of permission is retried once the file is readable (chmod keeps size and mtime); the
    check ignores case, so an older saga's raw "PermissionError: ... Permission denied" records match too."""
    return "permission denied" in old.error.lower() and os.access(path, os.R_OK)


def extract(cfg: ExtractConfig, progress: ProgressFn | None = None) -> ExtractSummary:
    """Extract every new or changed video of `cfg.videos` into the cache `cfg.out`.

    Under torchrun (WORLD_SIZE > 1) the ranks share the work: see `_extract_distributed`.
    """
    cfg.check()
    cfg = resolve_split(cfg)
    if distributed.context().enabled:
        return _extract_distributed(cfg, progress)
    wall = time.perf_counter()
    policy = SamplingPolicy(frames=cfg.frames, mode=cfg.sampling, windows=cfg.windows)
    taxonomy = resolve_taxonomy(cfg)
    inputs = find_inputs(cfg.videos, cfg.labels, taxonomy, cfg.allow_outside, progress)
    items = inputs.items
    encoder = _load(cfg, progress)
    make_dir(cfg.out)
    lock_folder(cfg.out, BUSY)  # before the cache is created: two passes into a new folder used to race there
    try:
        report_step(progress, f"opening {shown(cfg.out)}")
        cache = FeatureCache.create_or_open(cfg.out, build_provenance(encoder, policy, taxonomy, cfg))
        seal_leftover_parts(cache)
        check_root(cfg.out, cache.part_names(), cache.records(), cfg.videos)
        todo, splits, redecoded = plan(cfg, cache, items, progress)
        summary = ExtractSummary(cache=cfg.out, found=len(items), skipped=len(items) - len(todo), redecoded=redecoded,
                                 unreadable=inputs.unreadable)
        suspects = read_suspects(cfg.out)
        if todo:
            def open_part() -> PartWriter:
                return PartWriter(cache, next_part_name(cache), capacity=len(todo) * policy.windows,
                                  shard_rows=cfg.shard_rows, videos=cfg.videos)

            _extract_part(cfg, RecordMaker(cfg.videos, todo, splits, taxonomy), policy, encoder, open_part,
                          summary, progress, suspects)
        clear_suspects(cfg.out, suspects)  # every rank's, of any earlier world size: recorded, or gone
        if redecoded:
            mark_audited(cfg.out)
    finally:
        unlock_folder(cfg.out)
    summary.failures, summary.failed_elsewhere = pass_failures(cache.records(refresh=True), items)
    summary.timings.wall = time.perf_counter() - wall
    return summary


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
    distributed.check_same_settings(_shared_settings(cfg), "extract")
    policy = SamplingPolicy(frames=cfg.frames, mode=cfg.sampling, windows=cfg.windows)

    def load() -> tuple[Taxonomy, FrameEncoder]:  # every rank, before anyone creates the cache
        taxonomy = resolve_taxonomy(cfg)
        return taxonomy, _load(cfg, progress if ctx.is_main else None)

    taxonomy, encoder = distributed.run_everywhere(load)
    provenance = build_provenance(encoder, policy, taxonomy, cfg)

    def decide() -> tuple[int, list[VideoInput], dict[str, str], Inputs, int, Suspects]:  # rank 0
        inputs = find_inputs(cfg.videos, cfg.labels, taxonomy, cfg.allow_outside, progress)
        items = inputs.items
        make_dir(cfg.out)
        lock_folder(cfg.out, BUSY)  # held by rank 0 until every rank's part is closed
        report_step(progress, f"opening {shown(cfg.out)}")
        cache = FeatureCache.create_or_open(cfg.out, provenance)
        seal_leftover_parts(cache)
        check_root(cfg.out, cache.part_names(), cache.records(), cfg.videos)
        todo, splits, redecoded = plan(cfg, cache, items, progress)
        pass_id = int(next_part_name(cache).split("-")[0][1:])
        return pass_id, todo, {i.rel: splits[i.rel] for i in todo}, inputs, redecoded, read_suspects(cfg.out)

    pass_id, todo, splits, inputs, redecoded, suspects = distributed.run_on_main(decide)  # read once, for all
    items, found = inputs.items, len(inputs.items)

    def reopen() -> FeatureCache:  # every rank checks its own encoder against the cache
        cache = FeatureCache.open(cfg.out)
        cache.check_compatible(provenance)
        return cache

    cache = distributed.run_everywhere(reopen)
    mine = todo[ctx.rank::ctx.world_size]
    local = ExtractSummary(cache=cfg.out)
    if mine:
        def open_part() -> PartWriter:
            return PartWriter(cache, next_part_name(cache, rank=ctx.rank, pass_id=pass_id),
                              capacity=len(mine) * policy.windows, shard_rows=cfg.shard_rows, videos=cfg.videos)

        _extract_part(cfg, RecordMaker(cfg.videos, mine, splits, taxonomy), policy, encoder, open_part, local,
                      progress if ctx.is_main else None, suspects, rank=ctx.rank)
    ranks = distributed.all_gather_object(local)  # also: every part is closed after this, none crashed
    if ctx.is_main:
        clear_suspects(cfg.out, suspects)  # also those of ranks this job does not have, or that had no share
        if redecoded:
            mark_audited(cfg.out)
    unlock_folder(cfg.out)
    summary = ExtractSummary(cache=cfg.out, found=found, skipped=found - len(todo), redecoded=redecoded,
                             unreadable=inputs.unreadable, timings=Timings.across_ranks(r.timings for r in ranks))
    for rank_summary in ranks:
        summary.add_counts(rank_summary)
    summary.failures, summary.failed_elsewhere = pass_failures(cache.records(refresh=True), items)
    summary.timings.wall = time.perf_counter() - wall
    return summary


PER_RANK = ("workers", "device", "batch_size", "compile")  # how a rank works, not what it writes


def _shared_settings(cfg: ExtractConfig) -> dict[str, Any]:
    """The settings every rank must share: a rank given other --videos reads other files under rank 0's
    plan (wrong features, exit 0), one given another --out writes its part into another cache."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in PER_RANK}
    for key in ("videos", "out", "labels"):
        settings[key] = None if settings[key] is None else str(Path(settings[key]).resolve())
    return settings


@dataclass(frozen=True)
class RecordMaker:
    """The manifest record of a decoded (or failed) video of this pass's todo list."""

    root: Path
    todo: list[VideoInput]
    splits: dict[str, str]
    taxonomy: Taxonomy

    def __call__(self, video: DecodedVideo) -> VideoRecord:
        """The file's size and mtime are those stat'ed before it was decoded: a file that changed since no
        longer matches its record, so the next pass extracts it again (a record stat'ed after decoding
        called a half-copied file's features current for ever)."""
        item = self.todo[video.index]
        size, mtime = video.fingerprint or file_fingerprint(item.absolute(self.root))
        rec = VideoRecord(path=item.rel, size=size, mtime_ns=mtime, status=FAILED if video.error else "ok",
                          error=video.error, generator=item.generator, labels=self.taxonomy.labels(item.generator),
                          split=self.splits[item.rel])
        if video.ok:
            rec.n_frames, rec.fps, rec.backend = video.n_frames, video.fps, video.backend
        return rec


def run_pass(videos: Iterable[DecodedVideo], step: EncodeStep, writer: BackgroundWriter,
             record_of: Callable[[DecodedVideo], VideoRecord], summary: ExtractSummary, total: int,
             progress: ProgressFn | None = None, hold: SignalHold | None = None) -> None:
    """Decoded videos -> encoder step -> writer, counting into `summary`; the writer commits even on Ctrl-C.

    A dead decoding worker (`VideoStream.crash`: torch reports it wherever the main thread is) stops
    the pass with a `DecoderCrash` after the videos already decoded are encoded and committed. `hold`: the
    interrupts held since the part was created, delivered once this try/finally, which commits it, has begun."""
    started = time.perf_counter()
    try:
        writer.begin()
        if hold is not None:
            hold.release()
        _report(progress, summary, total)  # the pass begins: a bar's clock and rates start here
        try:
            for video in videos:
                summary.timings.decode += video.seconds
                if video.ok:
                    _store(step.push(video), writer, record_of, summary)
                else:
                    writer.fail(record_of(video))
                    summary.failed += 1
                _report(progress, summary, total)
        except Exception as exc:
            crash = exc if isinstance(exc, DecoderCrash) else (
                videos.crash(exc) if isinstance(videos, VideoStream) else None)
            if crash is None:
                raise
            _close(videos)
            _store(step.flush(), writer, record_of, summary)
            raise crash from None
        _store(step.flush(), writer, record_of, summary)
        _report(progress, summary, total)
    finally:
        try:
            try:
                _close(videos)  # the workers stop first: a dead one can no longer interrupt the commit
            finally:  # a Ctrl-C while they stop skipped the commit, and the writer thread held the exit for ever
                writer.finish()  # what was encoded is written and committed
        finally:
            if hold is not None:
                hold.release()  # still held only when the writer could not start: the interrupt, if any
        summary.timings.encode += step.seconds
        summary.timings.write += writer.seconds
        summary.timings.pipeline += time.perf_counter() - started


def _close(videos: Iterable[DecodedVideo]) -> None:
    close = getattr(videos, "close", None)
    if close is not None:
        close()


def _report(progress: ProgressFn | None, summary: ExtractSummary, total: int) -> None:
    if progress:
        progress(ProgressEvent("videos", summary.ok + summary.failed, total,
                               data={"frames": summary.frames, "failed": summary.failed}))


def _store(encoded: list[tuple[DecodedVideo, Any]], writer: BackgroundWriter,
           record_of: Callable[[DecodedVideo], VideoRecord], summary: ExtractSummary) -> None:
    for video, features in encoded:
        writer.write(record_of(video), features, video.mask, video.timestamps)
        summary.ok += 1
        summary.frames += features.shape[0] * features.shape[1]


def _extract_part(cfg: ExtractConfig, records: RecordMaker, policy: SamplingPolicy, encoder: FrameEncoder,
                  open_part: Callable[[], PartWriter], summary: ExtractSummary, progress: ProgressFn | None,
                  suspects: Suspects, rank: int = 0) -> None:
    """Compose the three steps over `records.todo` into `part`; suspects of an earlier decoder crash are
    decoded alone first, and a crash in this pass leaves its own suspects for the next one (the files read
    are removed by the lock's holder once the whole pass ended without one)."""
    videos = read_videos(records.todo, cfg.videos, policy, encoder.preprocess, decode_workers(cfg.workers),
                         pin_memory=encoder.device.type == "cuda", limits=DecodeLimits(cfg.hang_limit, cfg.alone_limit),
                         suspects={i for i, item in enumerate(records.todo) if item.rel in suspects.paths})
    step = EncodeStep(encoder.encode, cfg.batch_size, policy.windows, policy.frames)
    hold = SignalHold()  # from the part's creation until run_pass's try/finally that commits it
    try:
        writer = BackgroundWriter(open_part())
    except BaseException:
        hold.release()
        raise
    try:
        run_pass(videos, step, writer, records, summary, len(records.todo), progress, hold=hold)
    except DecoderCrash as crash:
        keep_suspects(cfg.out, rank, crash.suspects, suspects)
        raise
