"""Peak memory of streamed stage-1 training vs cache size (10k, 100k, 1M videos), side by side.

    python bench/stage1_memory.py [--sizes 10000 100000 1000000] [--simulate 10000000] [--steps 200]
                                  [--workdir /tmp/saga-bench]

Why: stage 1 trains on every train video (GenVideo: ~59 GB of float16 features), so it streams
the cache shard by shard (`saga.train.data.StreamingFeatures`) and its memory must not grow with
the cache. Each size is a real saga cache on disk written with `PartWriter` (random float16
features, D=64, T=16, so 1M videos ~ 2 GB of features plus a ~350 MB manifest); the caches are kept
in --workdir and reused by later runs. Each size is then measured in a fresh Python process
running the real `train_stage1` (stream=True, a tiny model) for --steps optimiser steps (stopped
by an optimiser step hook; when an epoch is shorter, the next one and the validation pass run
too). Reported: the RSS high-water mark (getrusage ru_maxrss), the RSS when training starts
(everything opened: records, shard index, model) and the peak of the training phase alone (VmHWM
reset at the start), so what grows with N (metadata) is told apart from what must not (the stream).

Start-up: `parse_s` is the first open of a fresh cache (every manifest line parsed into the columnar
record index, its sidecar written); `open_s` is the child's open (index loaded from the sidecar);
`index_mb` is the index's arrays.

--simulate N adds a point that is not written video by video: a part whose arrays hold no chunk
(reads give zeros), an empty manifest and a synthetic `manifest.index.npz` sidecar of N records
(same paths, classes, splits as the real build, no checksums, so reads are not checked). Stage 1
then runs on it exactly as above: everything that grows with N is there except the first parse.

A size whose measuring process fails (killed for memory, an error) gets a row with `error` (one line)
instead of figures; the other sizes are measured, the JSON printed, and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saga.cache.manifest import OK, VideoRecord  # noqa: E402
from saga.cache.provenance import EncoderSpec, cache_provenance  # noqa: E402
from saga.cache.store import FeatureCache, PartWriter  # noqa: E402
from saga.taxonomy import Taxonomy  # noqa: E402

SPLITS = ("train",) * 18 + ("val", "test")  # 90 / 5 / 5


class StopTraining(Exception):
    """Raised from the progress callback after the wanted number of steps."""


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set size (VmRSS) or its high-water mark since the last reset (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the training phase's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _fresh_cache(root: Path, frames: int, dim: int) -> tuple[Taxonomy, FeatureCache]:
    """An empty cache at `root` (whatever was there is removed) with the benchmark's simulated encoder."""
    shutil.rmtree(root, ignore_errors=True)
    tax = Taxonomy.load("synth")
    prov = cache_provenance(EncoderSpec.simulated(dim, frames, name="bench-sim", preprocess=""), tax,
                            fractions={"train": 0.9, "val": 0.05, "test": 0.05})
    return tax, FeatureCache.create_or_open(root, prov)


def build_cache(root: Path, n: int, frames: int, dim: int, shard_rows: int, seed: int) -> tuple[float, bool]:
    """A real saga cache of n videos (one part, PartWriter), reused when complete; (build seconds, reused)."""
    key = {"n": n, "frames": frames, "dim": dim, "shard_rows": shard_rows}
    done = root / ".bench-complete"
    if done.is_file() and (old := json.loads(done.read_text())).get("key") == key:
        return old["build_s"], True
    start = time.perf_counter()
    tax, cache = _fresh_cache(root, frames, dim)
    classes = ["real", *tax.generators]
    labels = {c: tax.labels(c) for c in classes}
    rng = np.random.default_rng(seed)
    # a pool of rows reused cyclically: cheap to make, and a class-dependent mean so the loss moves
    means = rng.standard_normal((len(classes), 1, 1, dim)).astype(np.float32)
    pool = (rng.standard_normal((4096, 1, frames, dim)) * 2).astype(np.float16)
    mask, ts = np.ones((1, frames), bool), (np.arange(frames, dtype=np.float32) / 25)[None]
    writer = PartWriter(cache, "p000001-r000", capacity=n, shard_rows=shard_rows)
    for i in range(n):
        c = (i * 7919) % len(classes)  # classes interleaved in every shard, like extraction's seeded shuffle
        gen = classes[c]
        rec = VideoRecord(f"{gen}/{i:08d}.mp4", 1000, i, OK, gen, labels[gen], SPLITS[i % len(SPLITS)])
        writer.add(rec, (pool[i % 4096] + means[c]).astype(np.float16), mask, ts)
    writer.close()
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"key": key, "build_s": seconds}))
    return seconds, False


def build_simulated(root: Path, n: int, frames: int, dim: int, shard_rows: int) -> tuple[float, bool]:
    """A cache of n records known only through a synthetic record-index sidecar (see the docstring)."""
    from saga.cache import columns

    key = {"n": n, "frames": frames, "dim": dim, "shard_rows": shard_rows, "simulated": True,
           "sidecar": columns.VERSION}
    done = root / ".bench-complete"
    if done.is_file() and (old := json.loads(done.read_text())).get("key") == key:
        return old["build_s"], True
    start = time.perf_counter()
    tax, cache = _fresh_cache(root, frames, dim)
    PartWriter(cache, "p000001-r000", capacity=n, shard_rows=shard_rows).close()  # arrays, no chunks; sealed
    classes = ["real", *tax.generators]
    i = np.arange(n, dtype=np.int64)
    cls = (i * 7919) % len(classes)
    paths = b"".join(f"{classes[c]}/{k:08d}.mp4".encode() for k, c in zip(i.tolist(), cls.tolist()))
    lengths = np.array([len(classes[c]) + 13 for c in cls.tolist()], np.int64)
    arrays = {"size": np.full(n, 1000, np.int64), "mtime_ns": i.copy(), "row": i, "windows": np.ones(n, np.int16),
              "n_frames": np.zeros(n, np.int16), "checksum": np.zeros((n, 17), np.uint8),
              "crc32c": np.full(n, -1, np.int64), "path_blob": np.frombuffer(paths, np.uint8),
              "path_offsets": np.r_[0, np.cumsum(lengths)], "status": np.zeros(n, np.uint8),
              "generator": cls.astype(np.uint8), "split": np.array([0] * 18 + [1, 2], np.uint8)[i % 20],
              "error": np.zeros(n, np.uint8), "backend": np.zeros(n, np.uint8),
              "labels": cls.astype(np.uint8), "fps": np.zeros(n, np.uint8)}
    tables = {"status": ["ok"], "generator": classes, "split": ["train", "val", "test"], "error": [""],
              "backend": [""], "labels": [json.dumps(tax.labels(c), sort_keys=True) for c in classes], "fps": [0.0]}
    keep = columns.sorted_unique(arrays["path_blob"], arrays["path_offsets"])
    if keep is not None:  # as saga writes a sidecar: sorted by path
        arrays, _ = columns.reorder(arrays, {}, keep)
    manifest = root / "parts" / "p000001-r000" / "manifest.jsonl"
    columns._write_sidecar(manifest.with_name(columns.SIDECAR), columns._manifest_key(manifest),
                           columns.PartColumns(arrays, tables, {}))
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"key": key, "build_s": seconds}))
    return seconds, False


def first_open(root: Path) -> float:
    """Seconds to open a cache whose record index must be parsed from the manifest (sidecar removed)."""
    from saga.cache.columns import SIDECAR

    for sidecar in root.glob(f"parts/*/{SIDECAR}"):
        sidecar.unlink()
    start = time.perf_counter()
    FeatureCache.open(root).index()
    return round(time.perf_counter() - start, 2)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a fresh process: stage 1 streamed for args.steps steps; reports its own RSS."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from saga.train.stage1 import Stage1Config, train_stage1

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"rss_after_import_mb": round(rss_mb(), 1)}
    t0 = time.perf_counter()
    index = FeatureCache.open(args.child).index()  # start-up alone, then freed: train_stage1 opens its own
    out["open_s"] = round(time.perf_counter() - t0, 2)
    out["index_mb"] = round((sum(a.nbytes for a in index.arrays.values()) + index.part.nbytes) / 2**20, 1)
    del index
    t0 = time.perf_counter()

    def progress(event: Any) -> None:  # a training ProgressEvent
        if event.kind == "start":
            out.update(rss_at_start_mb=round(rss_mb(), 1), setup_s=round(time.perf_counter() - t0, 2))
            out["hwm_reset"] = reset_hwm()
            out["t_start"] = time.perf_counter()

    def count_step(optimizer: Any, *_: Any) -> None:  # after every optimiser step, across epochs
        out["steps"] = out.get("steps", 0) + 1
        if out["steps"] >= args.steps:
            raise StopTraining

    register_optimizer_step_post_hook(count_step)
    cfg = Stage1Config(epochs=1000, batch_size=args.batch_size, stream=True, buffer_shards=args.buffer_shards,
                       d_model=64, depth=2, heads=2, eval_batch_size=256, device="cpu")
    run = Path(args.child).with_name(Path(args.child).name + "-run")
    shutil.rmtree(run, ignore_errors=True)
    try:
        train_stage1(args.child, run, cfg, progress)
    except StopTraining:
        pass
    out["train_s"] = round(time.perf_counter() - out.pop("t_start"), 2)
    out["rss_end_mb"] = round(rss_mb(), 1)
    if out.pop("hwm_reset"):
        out["train_peak_rss_mb"] = round(rss_mb("VmHWM"), 1)  # the peak while training, setup excluded
        out["train_growth_mb"] = round(out["train_peak_rss_mb"] - out["rss_at_start_mb"], 1)
    out["peak_rss_mb"] = round(peak_mb(), 1)
    shutil.rmtree(run, ignore_errors=True)
    return out


def run_child(cmd: list[str]) -> dict[str, Any]:
    """The measuring process's JSON line, or {"error": one line} when it failed (its own last stderr line,
    or the signal that killed it: a size too big for this machine's memory is killed without a word)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    lines = proc.stderr.strip().splitlines()
    why = lines[-1] if lines else (f"killed by signal {-proc.returncode} (out of memory?)"
                                   if proc.returncode < 0 else "no message")
    return {"error": f"exit {proc.returncode}: {why}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--simulate", type=int, nargs="*", default=[10_000_000],
                        help="sizes measured on a synthetic record index (no features, no manifest parse)")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per size")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shard-rows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--buffer-shards", type=int, default=64, help="TrainOptions.buffer_shards (its default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: 2 threads spin on the shared cores)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/saga-bench"), help="caches are kept here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    for n, simulated in [(n, False) for n in args.sizes] + [(n, True) for n in args.simulate]:
        root = args.workdir / f"stage1-n{n}-t{args.frames}-d{args.dim}{'-sim' if simulated else ''}"
        print(f"[stage1_memory] n={n}: building/reusing {root}", file=sys.stderr, flush=True)
        if simulated:
            build_s, reused = build_simulated(root, n, args.frames, args.dim, args.shard_rows)
            parse_s = None
        else:
            build_s, reused = build_cache(root, n, args.frames, args.dim, args.shard_rows, seed=0)
            parse_s = first_open(root)
        cmd = [sys.executable, __file__, "--child", str(root), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--buffer-shards", str(args.buffer_shards),
               "--threads", str(args.threads)]
        measured = run_child(cmd)
        if "error" in measured:  # reported, and the other sizes are still measured
            print(f"[stage1_memory] n={n}: the measuring process failed, {measured['error']}", file=sys.stderr,
                  flush=True)
            results.append({"videos": n, "simulated": simulated, **measured})
            continue
        # a reused cache was built by an earlier run: its seconds are that run's, not this one's
        built = {"cache_build_s": None, "cache_build_s_when_written": round(build_s, 1)} if reused else {
            "cache_build_s": round(build_s, 1)}
        row = {"videos": n, "simulated": simulated, "parse_s": parse_s, **built, "cache_reused": reused,
               "features_gb": round(n * args.frames * args.dim * 2 / 1e9, 3),
               "manifest_mb": round((root / "parts" / "p000001-r000" / "manifest.jsonl").stat().st_size / 1e6, 1),
               "sidecar_mb": round(sum(p.stat().st_size for p in root.glob("parts/*/manifest.index.npz")) / 1e6, 1),
               **measured}
        print(f"[stage1_memory] {row}", file=sys.stderr, flush=True)
        results.append(row)
    measured_rows = [row for row in results if "error" not in row]
    base = measured_rows[0]["peak_rss_mb"] if measured_rows else float("nan")
    for row in measured_rows:
        row["peak_vs_smallest"] = round(row["peak_rss_mb"] / base, 2)
        row["peak_growth_vs_smallest_mb"] = round(row["peak_rss_mb"] - base, 1)
    print(json.dumps({
        "benchmark": "stage1_memory", "machine": f"{os.cpu_count()} cores, torch threads {args.threads}",
        "frames": args.frames, "dim": args.dim, "shard_rows": args.shard_rows, "batch_size": args.batch_size,
        "buffer_shards": args.buffer_shards, "steps": args.steps, "model": "d_model=64 depth=2 heads=2",
        "results": results,
    }, indent=2))
    if len(measured_rows) < len(results):
        sys.exit(f"stage1_memory: {len(results) - len(measured_rows)} size(s) failed (their rows hold the error); "
                 "the JSON above has the others")


if __name__ == "__main__":
    main()
