"""One stage-2 epoch from the feature cache vs the same epoch decoding and encoding the videos each time.

    python bench/stage2_epoch.py [--per-class 4] [--encoder timm:tf_efficientnet_lite0] [--tiny-encoder]

Why: the cache is saga's central design choice (docs/architecture.md). Research code without one
decodes and encodes every video whenever it is needed; in stage 2 that is each epoch's pool-wide
embedding for mining, the batch's anchors, and their mined positives and negatives. Both paths here
run the *same* epoch: `HNMObjective` (CE + hardest-negative triplets, FAISS refresh at the epoch
start) through saga's own epoch loop (`saga.train.loop.train_epoch`), same seed, same model; only
the feature source differs:

- cache: `InMemoryFeatures` over the cache (what `saga attribute` uses for a stage-2 subset);
  the one-off load is reported apart (load_s), the epoch (epoch_s) excludes it;
- decode: the same interface, but `take` decodes each video with `decode_video`, preprocesses
  with the encoder's transform and runs `encoder.encode` (features rounded to float16 like the
  cache, so both epochs see the same numbers: compare `loss`). Decoding runs in-process; a
  DataLoader could overlap it with encoding, at best down to max(decode_s, encode_s).

Data: the built-in benchmark (`saga.benchmark.synth.generate`, 20 classes) extracted once with the
demo encoder; the labelled pool is --fraction of each GEN-L class's train videos (default all of them).
Also reported: the one-off extraction time and the epochs after which the cache has paid for itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saga.cache.manifest import VideoRecord  # noqa: E402
from saga.cache.store import FeatureCache  # noqa: E402
from saga.model import VideoTransformer  # noqa: E402
from saga.pipeline.decode import decode_video  # noqa: E402
from saga.pipeline.encoders import (DEMO_ENCODER, DEMO_PRETRAINED, TEST_ENCODER, FrameEncoder,  # noqa: E402
                                    load_encoder, preprocess_frames)
from saga.pipeline.extract import ExtractConfig, extract  # noqa: E402
from saga.pipeline.sampling import SamplingPolicy  # noqa: E402
from saga.benchmark.synth import SynthConfig, generate  # noqa: E402
from saga.train.attribute import AttributeConfig, HNMObjective  # noqa: E402
from saga.train.data import Batch, InMemoryFeatures, View, check_labels, make_batch  # noqa: E402
from saga.cache.fraction import labelled_subset  # noqa: E402
from saga.train.loop import train_epoch  # noqa: E402
from saga.train.schedule import make_optimizer, warmup_cosine  # noqa: E402


class DecodingFeatures(InMemoryFeatures):
    """InMemoryFeatures' interface (batches, take, labels) with no cache: every take decodes and encodes."""

    def __init__(self, videos: Path, records: Sequence[VideoRecord], labels: np.ndarray, encoder: FrameEncoder,
                 policy: SamplingPolicy, encode_batch: int) -> None:
        self.records = list(records)
        self.labels = check_labels(labels, len(self.records))
        self.videos, self.encoder, self.policy, self.encode_batch = videos, encoder, policy, encode_batch
        self.stats = {"videos_decoded": 0, "frames_encoded": 0, "decode_s": 0.0, "encode_s": 0.0}

    def take(self, index: np.ndarray, view: View, rng: np.random.Generator | None = None) -> Batch:
        index = np.asarray(index, np.int64)
        start = time.perf_counter()
        pixels, masks = [], []
        for i in index:
            clip = decode_video(self.videos / self.records[i].path, self.policy)
            pixels.append(preprocess_frames(self.encoder.preprocess, clip.frames.reshape(-1, *clip.frames.shape[2:])))
            masks.append(clip.mask)
        mid = time.perf_counter()
        flat = torch.cat(pixels)
        feats = torch.cat([self.encoder.encode(c) for c in flat.split(self.encode_batch)]).to(torch.float16)
        self.stats["decode_s"] += mid - start
        self.stats["encode_s"] += time.perf_counter() - mid
        self.stats["videos_decoded"] += int(index.size)
        self.stats["frames_encoded"] += int(flat.shape[0])
        w, t = self.policy.windows, self.policy.frames
        feats = feats.reshape(index.size, w, t, -1)
        return make_batch(feats, np.stack(masks), self.labels[index], index, view, rng)


def tiny_weights(folder: Path) -> str:
    """The tiny test encoder's seeded random weights saved to a file, so both paths load the same ones."""
    import open_clip
    from safetensors.torch import save_file

    from saga.pipeline import encoders

    encoders._register_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(TEST_ENCODER)
    path = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def one_epoch(data: InMemoryFeatures, cfg: AttributeConfig, n_classes: int, dim: int) -> tuple[dict[str, Any], float]:
    """Stage-2 epoch 1 from scratch (seeded), through saga's own epoch loop; its log line and its seconds."""
    torch.manual_seed(cfg.seed)
    model = VideoTransformer(cfg.model_config(dim, n_classes, cfg.frames))
    view = View(cfg.frames, train=True)
    objective = HNMObjective(data, view, cfg, torch.device("cpu"))
    optimizer = make_optimizer(model, 3e-4, cfg.weight_decay)
    per_epoch = objective.steps_per_epoch()
    scheduler = warmup_cosine(optimizer, round(cfg.warmup_epochs * per_epoch), cfg.epochs * per_epoch)
    state = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": None, "bad_epochs": 0}
    start = time.perf_counter()
    line = train_epoch(model, objective, optimizer, scheduler, cfg, 1, state, per_epoch, lambda event: None)
    seconds = time.perf_counter() - start
    return {"epoch_s": round(seconds, 2), "steps": state["step"], "loss": round(line["loss"], 5),
            "mined_triplets": line["mined_triplets"]}, seconds


def ratios(cache_s: float, load_s: float, decode_s: float, extract_s: float) -> dict[str, Any]:
    """The speed-ups and the break-even point from the measured seconds, not from their rounded copies in the
    JSON (a cached epoch printed as 0.0 s would divide by zero; 1.25 s stands for 1.245 to 1.255)."""
    saved = decode_s - cache_s
    return {"speedup_epoch": round(decode_s / cache_s, 1), "speedup_incl_load": round(decode_s / (cache_s + load_s), 1),
            "break_even_epochs": round(extract_s / saved, 2) if saved > 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=4, help="videos per class of the built-in benchmark")
    parser.add_argument("--fraction", type=float, default=1.0, help="labelled fraction of each class's train videos")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="stage-2 batch (AttributeConfig's default)")
    parser.add_argument("--encode-batch", type=int, default=64, help="frames per encoder call (extraction's)")
    parser.add_argument("--encoder", default=DEMO_ENCODER)
    parser.add_argument("--pretrained", default=DEMO_PRETRAINED)
    parser.add_argument("--tiny-encoder", action="store_true", help=f"{TEST_ENCODER} with random weights (fast)")
    parser.add_argument("--workers", type=int, default=1, help="extraction DataLoader workers")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 because on a shared 2-core machine 2 threads spin (10x slower steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny_encoder:
            args.encoder, args.pretrained = TEST_ENCODER, tiny_weights(Path(tmp))
        videos, out = Path(tmp) / "videos", Path(tmp) / "cache"
        print("[stage2_epoch] generating and extracting...", file=sys.stderr, flush=True)
        generate(videos, SynthConfig(videos_per_class=args.per_class, seed=0))
        summary = extract(ExtractConfig(videos=videos, out=out, encoder=args.encoder, pretrained=args.pretrained,
                                        frames=args.frames, workers=args.workers, batch_size=args.encode_batch,
                                        device="cpu"))
        cache = FeatureCache.open(out)
        # the content basis cannot have more directions than the features have (the tiny encoder's D = 16)
        basis = min(AttributeConfig.content_basis, cache.dim)
        cfg = AttributeConfig(level="GEN-L", fraction=args.fraction, loss="ce+hnm", batch_size=args.batch_size,
                              epochs=1, frames=args.frames, device="cpu", content_basis=basis)
        train = cache.ok_records("train")
        subset = labelled_subset(train, cfg.level, cache.taxonomy, cfg.fraction, cfg.floor, cfg.seed)
        classes = list(subset)
        chosen = {p: classes.index(c) for c, paths in subset.items() for p in paths}
        pool = [r for r in train if r.path in chosen]
        labels = np.array([chosen[r.path] for r in pool], np.int64)

        print(f"[stage2_epoch] cache epoch over {len(pool)} videos...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        cached = InMemoryFeatures(cache, pool, labels)
        load_s = time.perf_counter() - start
        cache_row, cache_s = one_epoch(cached, cfg, len(classes), cache.dim)
        from_cache = {"load_s": round(load_s, 3), **cache_row}

        print("[stage2_epoch] decode-each-time epoch...", file=sys.stderr, flush=True)
        encoder = load_encoder(args.encoder, args.pretrained, "cpu")
        decoding = DecodingFeatures(videos, pool, labels, encoder, SamplingPolicy(frames=args.frames),
                                    args.encode_batch)
        from_videos, decode_s = one_epoch(decoding, cfg, len(classes), cache.dim)
        from_videos.update({k: round(v, 2) if isinstance(v, float) else v for k, v in decoding.stats.items()})

    extract_s = summary.timings.pipeline
    print(json.dumps({
        "benchmark": "stage2_epoch", "machine": f"{os.cpu_count()} cores, torch threads {args.threads}",
        "encoder": args.encoder, "frames": args.frames, "classes": len(classes), "pool_videos": len(pool),
        "batch_size": cfg.batch_size, "model": f"d_model={cfg.d_model} depth={cfg.depth} (from scratch)",
        "cache": from_cache, "decode_each_time": from_videos,
        **ratios(cache_s, load_s, decode_s, extract_s),
        "extraction_once_s": round(extract_s, 2), "extracted_videos": summary.ok,
    }, indent=2))


if __name__ == "__main__":
    main()
