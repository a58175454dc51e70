"""`saga extract --augment`: re-encoded copies of the train videos as extra train records (paid once).

Training on copies that went through the same re-encodings as test-time uploads is the cheap
defence against them, and with a feature cache it costs one extraction, not one per epoch. The
copies are written inside the cache folder (`CACHE/.augment/<perturbation>/<copy name>`, reused
while they match their source, `saga.robustness.copies`: a changed source's copy is redone and
re-extracted) and extracted into the same cache with the video root set to the cache folder, so a
copy's record path is `.augment/<perturbation>/<copy_name(original path)>`. Each copy is recorded in the
split plan as train *before* extraction: it can never land in val or test (no leakage), and only
train videos are copied. Split planning ignores the copies when it balances new videos'
splits (`saga.cache.manifest.AUGMENTED`), so a later pass splits new videos as if there were none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from saga.cache.manifest import AUGMENTED, append_split_plan, read_split_plan
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.fileio import write_text
from saga.pipeline.extract import ExtractConfig, ExtractSummary, extract
from saga.progress import Passes, silent
from saga.robustness.copies import make_copies, unchanged
from saga.robustness.perturb import Perturbation
from saga.robustness.runner import csv_field


def augment_cache(cfg: ExtractConfig, perturbations: Sequence[Perturbation], say: Callable[[str], None] = print,
                  progress: Passes = silent) -> ExtractSummary:
    """Re-encode every extracted train video of `cfg.out` with each perturbation and extract the copies as train;
    `progress` opens a display for each perturbation's re-encoding (`crf28 re-encode`) and one for the extraction."""
    cache = FeatureCache.open(cfg.out)
    sources = [r for r in cache.ok_records("train") if not r.path.startswith(AUGMENTED)]
    if not sources:
        raise SagaError(f"{cfg.out}: no extracted train video to augment")
    sources = unchanged(sources, cfg.videos, cfg.out, say)
    planned = read_split_plan(cache.split_plan_path)
    rows, plan = ["path,generator"], {}
    for p in perturbations:
        with progress(f"{p.name} re-encode") as update:
            for name, r in make_copies(p, sources, cfg.videos, cfg.out / AUGMENTED / p.name, say, update):
                rel = f"{AUGMENTED}{p.name}/{name}"
                rows.append(f"{csv_field(rel)},{csv_field(r.generator)}")
                if rel not in planned:
                    plan[rel] = (r.generator, "train")
    if len(rows) == 1:
        raise SagaError(f"{cfg.out}: no train video could be re-encoded for --augment")
    append_split_plan(cache.split_plan_path, plan)  # train, before extraction assigns anything
    labels = cfg.out / AUGMENTED / "labels.csv"
    write_text(labels, "\n".join(rows) + "\n")
    with progress("extract", frames=True) as update:
        return extract(replace(cfg, videos=cfg.out, labels=labels, allow_outside=False), update)
