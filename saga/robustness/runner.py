"""`saga robustness`: a run's accuracy on re-encoded copies of its test videos, next to the clean accuracy.

Only the selected videos with a class at the run's level are scored, so only those are re-encoded.
For each perturbation: re-encode them once (`OUT/robustness/<name>/videos/`, reused while they match
their source, `saga.robustness.copies`; `<name>-<split>` for a split other than test, as a perturbed
cache holds one split), extract them
once into their own cache (`OUT/robustness/<name>/cache/`) with exactly
the encoder, weights, preprocessing and sampling recorded in the run's cache (extraction resumes by
itself), then evaluate the run there. The perturbed cache is created beforehand with the clean
cache's encoder spec and taxonomy, so labels carry over and an encoder that no longer gives the
same features is refused by the one compatibility rule (`EncoderSpec`) before any video is decoded.
A moved `local-dir:` folder (or weights file) is named with `--encoder` / `--pretrained`, checked against
the run's weights as `saga predict` checks them (`saga.pipeline.recorded`) before any video is re-encoded.
A video that cannot be re-encoded or extracted costs one line and counts as failed; each perturbation's
change is paired with the clean accuracy of the videos it scored (`paired`), never of all of them.
On a held-out cache (`--cache` another cache than the run's training cache, `saga.runs.heldout_tag`) the
results and the perturbed folders carry `@<cache>-<id8>` (robustness@seed1-3f9a2b7c.json,
robustness/crf28@seed1-3f9a2b7c/), as `saga evaluate` names its files there: they never replace the run's
own robustness.json, its copies and their caches, nor another held-out cache's. As in `saga evaluate`, the videos
the run was trained or validated on (a held-out cache sharing its videos, a copy of a train video in test) are
neither scored nor re-encoded (`seen_in_training`, `saga.explain.seen`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from saga.cache.manifest import SPLITS, VideoRecord, seeded_hash
from saga.cache.provenance import EncoderSpec, cache_provenance
from saga.cache.store import FeatureCache
from saga.errors import SagaError, shown
from saga.fileio import make_dir, write_json, write_text
from saga.explain.metrics import HELDOUT_KEY, RUN_MODEL, run_weights
from saga.explain.seen import SEEN_KEY, only_unseen
from saga.explain.split_flags import figure_flag, warn_figures
from saga.openworld.embeddings import Embedder
from saga.pipeline.encoders import load_encoder
from saga.pipeline.extract import ExtractConfig, extract
from saga.pipeline.recorded import check_identity, encoder_source
from saga.progress import Passes, ProgressFn, report_encoder, report_step, silent
from saga.provenance import now, versions
from saga.runs import RunInfo, cache_digest, check_cache_seals, heldout_tag
from saga.runs.files import HELDOUT, ROBUSTNESS, ROBUSTNESS_MD, on_cache
from saga.robustness.evaluate import level_metrics, markdown, paired_levels, reported_levels
from saga.robustness.copies import make_copies, unchanged
from saga.robustness.perturb import Perturbation, parse_list

Say = Callable[[str], None]
CLEAN = "clean"
FOLDER = "robustness"  # under OUT: the perturbed videos and caches (safe to delete; rebuilt on demand)
DEFAULT_SPLIT = "test"  # its perturbed folders keep the bare perturbation name (the layout before splits)
LEFT_OUT = f"the clean and perturbed accuracies, and not re-encoded (robustness.json: {SEEN_KEY})"
ENCODER_REFUSAL = "refusing to append: the cache was built with"  # FeatureCache.check_compatible: the encoder spec


@dataclass
class RobustnessConfig:
    run: Path
    cache: Path | None  # default: the cache the run was trained on (its config.json)
    videos: Path
    out: Path | None = None  # default: the run folder
    perturbations: list[Perturbation] = field(default_factory=lambda: parse_list(None))
    limit_per_class: int | None = None
    split: str = DEFAULT_SPLIT
    seed: int = 0  # of the --limit-per-class draw
    device: str = "cpu"
    batch_size: int = 64
    workers: int = 2
    encoder: str | None = None  # --encoder / --pretrained: the run's encoder moved (checked against its weights)
    pretrained: str | None = None

    def check(self) -> None:
        """One-line errors for numbers that would otherwise fail only after the first perturbation was
        re-encoded (batch size and workers are first read by the extraction of the copies)."""
        if self.limit_per_class is not None and (isinstance(self.limit_per_class, bool) or self.limit_per_class < 1):
            raise SagaError(f"--limit-per-class must be >= 1, got {self.limit_per_class}")
        if not self.perturbations:
            raise SagaError("--perturb names no perturbation; pass e.g. crf23,crf28, or leave it out for all")
        ExtractConfig(videos=self.videos, out=self.out or self.run, batch_size=self.batch_size,
                      workers=self.workers).check()


def select(cache: FeatureCache, split: str, limit: int | None, seed: int,
           info: RunInfo | None = None) -> tuple[list[VideoRecord], dict[str, Any] | None]:
    """The split's extracted videos, without those run `info` was trained or validated on (`saga.explain.seen`:
    they would lift the clean and every perturbed accuracy), and what was left out; with `limit`, a seeded draw
    of at most `limit` per generator from the others (so the limit is met with videos the run has not seen)."""
    if split not in SPLITS:
        raise SagaError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    records = list(cache.ok_records(split))
    if not records:
        raise SagaError(f"{cache.root}: no extracted videos in split '{split}'; pick another --split")
    seen = None
    if info is not None:
        records, seen = only_unseen(info, cache, records, split, LEFT_OUT,
                                    fix="perturb videos it has not seen (another --split or --cache)")
    if limit is not None:  # >= 1: RobustnessConfig.check
        taken: dict[str, int] = {}
        chosen = []
        for r in sorted(records, key=lambda r: seeded_hash(seed, r.path)):
            if taken.get(r.generator, 0) < limit:
                taken[r.generator] = taken.get(r.generator, 0) + 1
                chosen.append(r)
        records = chosen
    return sorted(records, key=lambda r: r.path), seen


def perturb_videos(p: Perturbation, records: list[VideoRecord], videos: Path, folder: Path,
                   say: Say, progress: ProgressFn | None = None) -> dict[str, str]:
    """Write the missing or stale copies and labels.csv (the copies that match); returns copy path -> original path."""
    done: dict[str, str] = {}
    rows = ["path,generator"]
    for rel, r in make_copies(p, records, videos, folder, say, progress):
        done[rel] = r.path
        rows.append(f"{csv_field(rel)},{csv_field(r.generator)}")
    write_text(folder / "labels.csv", "\n".join(rows) + "\n")
    return done


def result_files(split: str, tag: str | None = None) -> tuple[str, str]:
    """robustness.json / .md for the test split (what the report shows), robustness-<split>.* for another,
    so runs on several splits into one --out keep each other's results; on a held-out cache (`tag`) each
    name carries `@<tag>` (`on_cache`), so it never replaces the run's own."""
    names = (ROBUSTNESS, ROBUSTNESS_MD) if split == DEFAULT_SPLIT else tuple(
        name.replace(".", f"-{split}.", 1) for name in (ROBUSTNESS, ROBUSTNESS_MD))
    return on_cache(names[0], tag), on_cache(names[1], tag)


def perturbed_folder(out: Path, name: str, split: str, tag: str | None = None) -> Path:
    """One folder per perturbation, split and cache: a perturbed cache records a single split, so splits cannot
    share one; a held-out cache's copies (`tag`) are of other videos, so they keep their own (`<name>@<tag>`)
    instead of re-encoding the run's own copies over (and back) at every switch."""
    folder = name if split == DEFAULT_SPLIT else f"{name}-{split}"
    return out / FOLDER / (f"{folder}{HELDOUT}{tag}" if tag else folder)


def csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def copies_encoder(run: EncoderSpec, clean: FeatureCache, cfg: RobustnessConfig,
                   steps: ProgressFn | None = None) -> tuple[str, str | None]:
    """(name, pretrained) that extract the copies: the clean cache's recorded encoder, or --encoder /
    --pretrained, loaded once and checked against the run's weights before any video is re-encoded."""
    if cfg.encoder is None and cfg.pretrained is None:
        return encoder_source(clean.encoder_spec, str(clean.root))
    source = encoder_source(run, str(cfg.run), cfg.encoder, cfg.pretrained)
    report_encoder(steps, *source)
    check_identity(run, load_encoder(*source, cfg.device), str(cfg.run))
    return source


def extract_copies(clean: FeatureCache, videos: Path, out: Path, split: str, cfg: RobustnessConfig, say: Say,
                   progress: ProgressFn | None = None, source: tuple[str, str | None] | None = None) -> FeatureCache:
    """Extract `videos` into the cache `out` with the clean cache's encoder spec, taxonomy and sampling; the
    encoder is loaded from `source` (`copies_encoder`), by default the clean cache's recorded one."""
    spec = clean.encoder_spec
    source = source or encoder_source(spec, str(clean.root))
    fractions = {s: float(s == split) for s in SPLITS}  # every copy stays in its original's split
    FeatureCache.create_or_open(out, cache_provenance(spec, clean.taxonomy, 0, fractions))
    sampling = dict(spec.sampling or {})
    ecfg = ExtractConfig(videos=videos, out=out, labels=videos / "labels.csv", encoder=source[0],
                         pretrained=source[1], frames=int(sampling["frames"]),
                         sampling=str(sampling.get("mode", "consecutive")), windows=int(sampling.get("windows", 1)),
                         batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device, split_fractions=fractions)
    try:
        summary = extract(ecfg, progress)
    except SagaError as exc:
        if ENCODER_REFUSAL in str(exc):
            raise SagaError(f"{clean.root}: its encoder ({spec.encoder}, {spec.pretrained}) loaded today gives other "
                            f"features than recorded ({exc}); provide the weights the cache was extracted with "
                            "(--encoder/--pretrained)") from None
        raise
    say(f"  extracted {summary.ok} new, {summary.skipped} already cached, {summary.failed} failed "
        f"({summary.timings.wall:.1f}s)")
    return FeatureCache.open(out)


def run_robustness(cfg: RobustnessConfig, say: Say = print, progress: Passes = silent,
                   steps: ProgressFn | None = None) -> dict[str, Any]:
    """Evaluate the run on the clean and every perturbed copy of the same videos; writes robustness.json/.md.
    `progress` opens a display for each perturbation's re-encoding (`crf28 re-encode`) and extraction; `steps`
    gets a status event per setup step before them (the run, the cache, the encoder, the clean videos' scores)."""
    cfg.check()
    if not cfg.videos.is_dir():
        raise SagaError(f"{cfg.videos}: not a folder; pass --videos, the folder the cache was extracted from")
    report_step(steps, f"loading the run {shown(cfg.run)}")
    weights = run_weights(cfg.run)  # before loading: weights replaced meanwhile are never passed off as these
    emb = Embedder(cfg.run, cfg.device)
    cache_path = cfg.cache or emb.info.config.get("cache")
    if not cache_path:
        raise SagaError(f"{cfg.run}: the run records no cache; pass --cache")
    report_step(steps, f"opening {shown(cache_path)}")
    clean = FeatureCache.open(cache_path)
    check_cache_seals(clean)  # as train and evaluate: an edited or lost sealed part is refused before any write
    out = make_dir(cfg.out or cfg.run)
    tag = heldout_tag(emb.info, clean)  # None on the run's own cache: the plain names
    taxonomy = clean.taxonomy
    levels = reported_levels(emb.info, taxonomy)
    selected, seen = select(clean, cfg.split, cfg.limit_per_class, cfg.seed, emb.info)
    flag = figure_flag(cfg.run, cfg.split, tag)  # the run's own val chose its weights, its train trained them
    warn_figures(cfg.run, flag, "the robustness accuracies are")
    records = scored_records(emb, clean, selected, cfg.split, say)
    source = copies_encoder(emb.info.encoder, clean, cfg, steps)  # a moved or wrong encoder: before any work
    report_step(steps, f"scoring the {len(records):,} clean {cfg.split} videos")
    inf = emb(clean, records)
    perturbations = [{"name": CLEAN, "description": "the original videos (features of the original cache)",
                      "cache": str(clean.root), "n": len(records), "failed": 0,
                      "levels": level_metrics(inf, records, emb.info, taxonomy, levels)}]
    sources = unchanged(records, cfg.videos, clean.root, say)  # a changed file is not the video scored clean
    for p in cfg.perturbations:
        folder = perturbed_folder(out, p.name, cfg.split, tag)
        say(f"{p.name}: {p.description}")
        with progress(f"{p.name} re-encode") as update:
            copies = perturb_videos(p, sources, cfg.videos, folder / "videos", say, update)
        if not copies:
            raise SagaError(f"{p.name}: no video could be re-encoded (is --videos {cfg.videos} the folder the "
                            f"cache {clean.root} was extracted from?)")
        with progress(f"{p.name} extract", frames=True) as update:
            pcache = extract_copies(clean, folder / "videos", folder / "cache", cfg.split, cfg, say, update,
                                    source=source)
        for r in pcache.records():
            if not r.ok and r.path in copies:
                say(f"{p.name}: failed to extract {r.path}: {r.error}")
        precs = [r for r in pcache.ok_records() if r.path in copies]
        if not precs:
            raise SagaError(f"{pcache.root}: no re-encoded video could be extracted")
        pinf = emb(pcache, precs)
        index = {r.path: i for i, r in enumerate(records)}
        paired = paired_levels((inf, records), (pinf, precs), [index[copies[r.path]] for r in precs], emb.info,
                               taxonomy, levels)
        perturbations.append({"name": p.name, "description": p.description, "cache": str(pcache.root),
                              "n": len(precs), "failed": len(records) - len(precs),
                              "levels": level_metrics(pinf, precs, emb.info, taxonomy, levels), "paired": paired})
    result = {"run": str(cfg.run), RUN_MODEL: weights, "cache": str(clean.root), "cache_id": clean.cache_id,
              "cache_digest": cache_digest(clean), "split": cfg.split, "limit_per_class": cfg.limit_per_class,
              "seed": cfg.seed, "n_videos": len(selected), "levels": levels, "perturbations": perturbations,
              "created": now(), "versions": versions(), **({HELDOUT_KEY: tag} if tag else {}), **flag,
              **({SEEN_KEY: seen} if seen else {})}
    json_name, md_name = result_files(cfg.split, tag)
    write_json(out / json_name, result)
    write_text(out / md_name, markdown(result))
    return result


def scored_records(emb: Embedder, clean: FeatureCache, selected: list[VideoRecord], split: str,
                   say: Say) -> list[VideoRecord]:
    """The selected videos with a class at the run's level: the only ones scored, so the only ones re-encoded."""
    targets = emb(clean, selected).targets  # refuses, in one line, a cache whose features the run cannot read
    scored = [r for r, t in zip(selected, targets) if t >= 0]
    level = emb.info.level
    if not scored:
        raise SagaError(f"{clean.root}: none of the {len(selected)} selected '{split}' videos has a {level} class "
                        "of the run; pick another --split")
    if len(scored) < len(selected):
        say(f"{len(selected) - len(scored)} of {len(selected)} selected videos have no {level} class: "
            "not scored, not re-encoded")
    return scored
