"""Extraction throughput vs the bare encoder, measured side by side in one run.

    python bench/extract.py [--per-class 4] [--workers 1] [--encoder timm:tf_efficientnet_lite0]

(a) `saga extract` on the built-in benchmark: frames/s from decoding to a written cache;
(b) the same encoder's forward pass alone on the same frames, already decoded and
    preprocessed in memory, with the same batch size.
Ratio a/b near 1 means decoding and writing overlap with encoding instead of adding to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saga.pipeline.decode import decode_video  # noqa: E402
from saga.pipeline.encoders import DEMO_ENCODER, DEMO_PRETRAINED, load_encoder, preprocess_frames  # noqa: E402
from saga.pipeline.extract import ExtractConfig, extract  # noqa: E402
from saga.pipeline.inputs import discover  # noqa: E402
from saga.pipeline.sampling import SamplingPolicy  # noqa: E402
from saga.benchmark.synth import SynthConfig, generate  # noqa: E402
from saga.taxonomy import Taxonomy  # noqa: E402


def bare_encoder_fps(videos: Path, encoder_name: str, pretrained: str, frames: int, batch: int, device: str) -> float:
    encoder = load_encoder(encoder_name, pretrained, device)
    policy = SamplingPolicy(frames=frames)
    items = discover(videos, None, Taxonomy.load(videos / "taxonomy.toml"))
    pixels = []
    for item in items:
        clip = decode_video(item.absolute(videos), policy)
        pixels.append(preprocess_frames(encoder.preprocess, clip.frames.reshape(-1, *clip.frames.shape[2:])))
    stacked = torch.cat(pixels)
    encoder.encode(stacked[:batch])  # warm-up
    start = time.perf_counter()
    for chunk in stacked.split(batch):
        encoder.encode(chunk).to(torch.float16).cpu()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(stacked) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--encoder", default=DEMO_ENCODER)
    parser.add_argument("--pretrained", default=DEMO_PRETRAINED)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        generate(videos, SynthConfig(videos_per_class=args.per_class, seed=0))
        summary = extract(ExtractConfig(videos=videos, out=Path(tmp) / "cache", encoder=args.encoder,
                                        pretrained=args.pretrained, frames=args.frames, workers=args.workers,
                                        batch_size=args.batch_size, device=args.device))
        pipeline_fps = summary.frames / summary.timings.pipeline
        encoder_fps = bare_encoder_fps(videos, args.encoder, args.pretrained, args.frames, args.batch_size,
                                       args.device)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}",
        "encoder": args.encoder, "videos": summary.ok, "frames": summary.frames, "workers": args.workers,
        "extract_frames_per_s": round(pipeline_fps, 1), "bare_encoder_frames_per_s": round(encoder_fps, 1),
        "ratio": round(pipeline_fps / encoder_fps, 3),
        "seconds": {k: round(v, 2) for k, v in asdict(summary.timings).items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
