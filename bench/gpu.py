"""One prepared GPU benchmark: everything the GPU path costs, in one run, printed as one JSON document.

    python bench/gpu.py                      # on a GPU machine: ~3-5 min with nothing but this repository
    python bench/gpu.py --tiny --device cpu  # the same code path in seconds (what the test runs)

Measures, side by side in one process:
1. encoder: SigLIP-So400m/14-384 (open_clip `ViT-SO400M-14-SigLIP-384`) with random weights (nothing
   to download; speed does not depend on the weights), vision tower only, bf16 autocast: frames/s at
   several batch sizes, eager and `torch.compile`d, and model FLOPs utilisation (FLOPs per frame counted
   by torch.utils.flop_counter, over the GPU's dense bf16 peak; `--peak-tflops` to override);
2. decode: sampled frames/s of a 1024x576 H.264 clip with every CPU core this process may use (its affinity),
   per backend installed (bench/decode.py's clip, backends and timing), and how many cores the encoder's best
   frames/s needs with the backend extraction uses (decord where installed, else PyAV);
3. extraction: `saga extract` (in process, all cores but one as workers like its default, eager: compile off) on
   clips of the same kind (bench/decode.py's textured clip, one seed each) with the same encoder, frames/s
   vs the best *eager* bare encoder at the same batch size: the end-to-end ratio (against the compiled
   figure it would count compile's speed-up as overhead);
4. stage 1: one optimiser step of the transformer at the encoder's width (batch 64, T' 16, bf16 autocast),
   from features already in memory (the model's cost; reading the cache is bench/cache_read.py's part and
   memory at 1 M records is bench/stage1_memory.py's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from decode import TIMING, backends, make_clip, scaling, usable_cores  # noqa: E402
from saga.model import ModelConfig, VideoTransformer  # noqa: E402
from saga.pipeline.encoders import TEST_ENCODER, load_encoder  # noqa: E402
from saga.pipeline.extract import ExtractConfig, extract  # noqa: E402
from saga.train.schedule import make_optimizer  # noqa: E402

SIGLIP = "ViT-SO400M-14-SigLIP-384"
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call after `warmup` calls (compilation and autotuning happen there)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def flops_per_frame(model: torch.nn.Module, size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def encoder_section(name: str, device: torch.device, sizes: list[int], compile_too: bool, peak: float | None,
                    iters: int) -> dict[str, Any]:
    enc = load_encoder(name, "none", str(device))
    model, size = enc.model, enc.image_size[0]
    flops = flops_per_frame(model, size, device)
    rows: dict[str, Any] = {"encoder": name, "image_size": size, "gflops_per_frame": round(flops / 1e9, 2),
                            "peak_bf16_tflops": peak, "eager": {}, "compiled": {}}
    variants = [("eager", model)] + ([("compiled", torch.compile(model))] if compile_too else [])
    for label, net in variants:
        for bs in sizes:
            x = torch.randn(bs, 3, size, size, device=device)

            def step() -> None:
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                            enabled=device.type == "cuda"):
                    net(x)

            fps = bs / timed(step, device, warmup=3 if label == "compiled" else 1, iters=iters)
            mfu = round(fps * flops / (peak * 1e12), 3) if peak else None
            rows[label][str(bs)] = {"frames_per_s": round(fps, 1), "mfu": mfu}
    return rows


def best_fps(rows: dict[str, Any], variants: tuple[str, ...] = ("eager", "compiled")) -> tuple[float, int]:
    """(frames/s, batch size) of the fastest run among `variants`."""
    return max((v["frames_per_s"], int(bs)) for part in variants for bs, v in rows[part].items())


def decode_section(clip: Path, size: tuple[int, int], cores: int, repeats: int, encoder_fps: float) -> dict[str, Any]:
    """Every installed backend on `cores` workers; the headline is the one `saga extract` uses (decode_video's auto)."""
    rows = {}
    for name in backends():
        fps = scaling(name, clip, 16, repeats, [cores])[str(cores)]
        rows[name] = {"sampled_frames_per_s": fps,
                      "cores_needed_for_best_encoder_fps": round(encoder_fps * cores / fps, 1)}
    used = "decord" if "decord" in rows else "pyav"
    return {"clip": f"{size[0]}x{size[1]}", "workers": cores, "timing": TIMING, "backends": rows, "backend": used,
            **rows[used]}


def write_clips(root: Path, videos: int, size: tuple[int, int]) -> None:
    """The extraction's clips: bench/decode.py's textured clip (what the decode section measures), one seed each."""
    root.mkdir(parents=True)
    for i in range(videos):  # 24 frames each: extraction samples T = 16
        make_clip(root / f"{i:04d}.mp4", *size, frames=24, seed=i)


def extraction_section(name: str, device: torch.device, videos: int, batch: int, bare_fps: float,
                       size: tuple[int, int], workers: int) -> dict[str, Any]:
    """`saga extract` eager (compile=False), so `bare_fps` must be the eager encoder's for a fair ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos" / "real"
        write_clips(root, videos, size)
        cfg = ExtractConfig(videos=root.parent, out=Path(tmp) / "cache", taxonomy="synth", encoder=name,
                            pretrained="none", frames=16, batch_size=batch, workers=workers, device=str(device),
                            compile=False)
        summary = extract(cfg)
    fps = summary.frames / max(summary.timings.pipeline, 1e-9)
    return {"videos": videos, "frames": summary.frames, "workers": workers, "batch_size": batch,
            "pipeline_frames_per_s": round(fps, 1), "bare_encoder": "eager (as saga extract runs here)",
            "bare_encoder_frames_per_s": round(bare_fps, 1),
            "ratio_to_bare_encoder": round(fps / bare_fps, 3),
            "seconds": {k: round(v, 2) for k, v in vars(summary.timings).items()}}


def stage1_section(dim: int, device: torch.device, d_model: int, iters: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = VideoTransformer(ModelConfig(in_dim=dim, d_model=d_model, n_classes=2)).to(device).train()
    opt = make_optimizer(model, 3e-4, 0.05)
    x = torch.randn(64, 16, dim, device=device)
    mask = torch.ones(64, 16, dtype=torch.bool, device=device)
    y = torch.randint(0, 2, (64,), device=device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x, mask).logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = timed(step, device, warmup=2, iters=iters)
    return {"batch": 64, "frames": 16, "in_dim": dim, "d_model": d_model, "ms_per_step": round(1000 * seconds, 2),
            "videos_per_s": round(64 / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny test encoder and small sizes (CPU check)")
    ap.add_argument("--batch-sizes", type=int, nargs="+")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float)
    ap.add_argument("--videos", type=int, help="clips for the extraction ratio")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    name = TEST_ENCODER if args.tiny else SIGLIP
    sizes = args.batch_sizes or ([4, 8] if args.tiny else [32, 64, 128, 256])
    iters = 2 if args.tiny else 10
    cores = usable_cores()  # the host may have more (a container, a batch job): those are not ours to decode on
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "gpu", "device": torch.cuda.get_device_name(device)
                              if device.type == "cuda" else "cpu", "cores": cores, "torch": torch.__version__}
    enc = encoder_section(name, device, sizes, not args.no_compile, peak_tflops(device, args.peak_tflops), iters)
    result["encoder"] = enc
    fps, batch = best_fps(enc)
    clip_size = (128, 72) if args.tiny else (1024, 576)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", *clip_size, frames=48 if args.tiny else 120)
        result["decode"] = decode_section(clip, clip_size, cores, 1 if args.tiny else 4, fps)
    eager_fps, eager_batch = best_fps(enc, ("eager",))
    result["extraction"] = extraction_section(name, device, args.videos or (4 if args.tiny else 96), eager_batch,
                                              eager_fps, (64, 48) if args.tiny else (1024, 576), max(1, cores - 1))
    dim = load_encoder(name, "none", "cpu").dim
    result["stage1_step"] = stage1_section(dim, device, 32 if args.tiny else 256, iters)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
