"""Feature-cache read throughput vs a raw sequential read of the same files, cold and warm page cache.

    python bench/cache_read.py [--videos 20000] [--dim 1152] [--frames 16] [--workdir /tmp/saga-bench]

Why: phase 2 is only as fast as the cache can be read. Readers over one cache
(20k videos x 16 x 1152 float16 ~ 740 MB by default, written with `PartWriter`, kept in --workdir):

- raw: every stored object of the part (features shards, mask and timestamps chunks) read with
  plain open().read(), in file order: the ceiling any reader of these bytes could reach;
- shard: `FeatureCache.shards` + `read_shard` over every record, checksums and finiteness checked
  (what stage-1 streaming does; the direct shard reader of saga.cache.shards);
- shard_nocheck: the same with check=False (what the checks cost);
- stream: `StreamingFeatures.batches` over every record (shards read ahead in a thread, rows shuffled
  into batches of 64, no model): the stage-1 loader end to end;
- zarr: zarr's own read of the same shards (`zarr.Array[start:stop]`), the path saga used before;
- random: `FeatureCache.read` of --random-records records in a random order, --batch at a time
  (what stage 2's `StreamingFeatures.take` and evaluation subsets do), checked.

Cold = the OS page cache dropped before each reader (`echo 3 > /proc/sys/vm/drop_caches` as
root, else posix_fadvise(DONTNEED) on every file); warm = the files read once just before.
MB/s counts the payload (features + mask + timestamps bytes) for saga's readers and the file
bytes for raw (they differ only by the tiny shard index); ratio = saga MB/s / raw MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saga.cache.manifest import OK, VideoRecord  # noqa: E402
from saga.cache.provenance import EncoderSpec, cache_provenance  # noqa: E402
from saga.cache.store import FeatureCache, PartWriter  # noqa: E402
from saga.taxonomy import Taxonomy  # noqa: E402
from saga.train.data import StreamingFeatures, View  # noqa: E402


def build_cache(root: Path, n: int, frames: int, dim: int, shard_rows: int) -> float:
    """A one-part cache of n random float16 videos; reused when complete. Returns build seconds (0 = reused)."""
    key = {"n": n, "frames": frames, "dim": dim, "shard_rows": shard_rows}
    done = root / ".bench-complete"
    if done.is_file() and json.loads(done.read_text()) == key:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    tax = Taxonomy.load("synth")
    prov = cache_provenance(EncoderSpec.simulated(dim, frames, name="bench-sim", preprocess=""), tax,
                            fractions={"train": 1.0})
    cache = FeatureCache.create_or_open(root, prov)
    classes = ["real", *tax.generators]
    pool = np.random.default_rng(0).standard_normal((256, 1, frames, dim)).astype(np.float16)
    mask, ts = np.ones((1, frames), bool), (np.arange(frames, dtype=np.float32) / 25)[None]
    writer = PartWriter(cache, "p000001-r000", capacity=n, shard_rows=shard_rows)
    for i in range(n):
        gen = classes[i % len(classes)]
        writer.add(VideoRecord(f"{gen}/{i:07d}.mp4", 1000, i, OK, gen, tax.labels(gen), "train"),
                   pool[i % 256], mask, ts)
    writer.close()
    done.write_text(json.dumps(key))
    return time.perf_counter() - start


def data_files(root: Path) -> list[Path]:
    """Every stored array object of the cache's parts (zarr chunk keys live under <array>/c/)."""
    return sorted(p for p in (root / "parts").glob("*/*/c/**/*") if p.is_file())


def drop_page_cache(files: list[Path]) -> str:
    """Evict the files from the OS page cache; returns the method that worked."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise_dontneed"


def read_raw(files: list[Path]) -> int:
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            total += len(fh.read())
    return total


def read_shards(cache: FeatureCache) -> int:
    total = 0
    for ref in cache.shards(cache.ok_records()):
        total += sum(a.nbytes for a in cache.read_shard(ref).values())
    return total


def read_shards_nocheck(cache: FeatureCache) -> int:
    total = 0
    for ref in cache.shards(cache.ok_records()):
        total += sum(a.nbytes for a in cache.read_shard(ref, check=False).values())
    return total


def read_zarr(cache: FeatureCache) -> int:
    """zarr's generic codec pipeline over the same shards (no checks): the previous read path."""
    total = 0
    for ref in cache.shards(cache.ok_records()):
        arrays = cache.part(ref.part)
        total += sum(arrays[k][ref.start:ref.stop].nbytes for k in ("features", "mask", "timestamps"))
    return total


def read_stream(cache: FeatureCache) -> int:
    records = cache.ok_records()
    data = StreamingFeatures(cache, records, None, buffer_shards=8)
    total = 0
    for batch in data.batches(64, View(cache.frames), shuffle=True):
        total += batch.x.shape[0]
    t, d = cache.frames, cache.dim
    return total * cache.windows * t * (d * 2 + 1 + 4)  # the payload read (float16 features, mask, timestamps)


def read_random(cache: FeatureCache, count: int, batch: int, seed: int) -> int:
    records = cache.ok_records()
    pick = np.random.default_rng(seed).permutation(len(records))[:count]
    total = 0
    for lo in range(0, pick.size, batch):
        total += sum(a.nbytes for a in cache.read([records[i] for i in pick[lo:lo + batch]]).values())
    return total


def measure(fn: Callable[[], int]) -> dict[str, float]:
    start = time.perf_counter()
    nbytes = fn()
    seconds = time.perf_counter() - start
    return {"mb": round(nbytes / 1e6, 1), "seconds": round(seconds, 3), "mb_per_s": round(nbytes / 1e6 / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=20_000)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--shard-rows", type=int, default=128)
    parser.add_argument("--random-records", type=int, default=4096, help="records read by the random reader")
    parser.add_argument("--batch", type=int, default=64, help="records per FeatureCache.read call")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/saga-bench"), help="the cache is kept here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = args.workdir / f"read-n{args.videos}-t{args.frames}-d{args.dim}-s{args.shard_rows}"
    print(f"[cache_read] building/reusing {root}", file=sys.stderr, flush=True)
    build_s = build_cache(root, args.videos, args.frames, args.dim, args.shard_rows)
    files = data_files(root)
    start = time.perf_counter()
    cache = FeatureCache.open(root)
    cache.ok_records()
    open_s = time.perf_counter() - start
    readers: dict[str, Callable[[], int]] = {
        "raw": lambda: read_raw(files),
        "shard": lambda: read_shards(cache),
        "shard_nocheck": lambda: read_shards_nocheck(cache),
        "stream": lambda: read_stream(cache),
        "zarr": lambda: read_zarr(cache),
        "random": lambda: read_random(cache, args.random_records, args.batch, args.seed),
    }
    out: dict[str, Any] = {}
    method = ""
    for mode in ("cold", "warm"):
        row: dict[str, Any] = {}
        for name, fn in readers.items():
            if mode == "cold":
                method = drop_page_cache(files)
            else:
                read_raw(files)  # make sure every byte is in the page cache
            print(f"[cache_read] {mode} {name}...", file=sys.stderr, flush=True)
            row[name] = measure(fn)
        for name in readers:
            if name == "raw":
                continue
            row[name]["ratio_vs_raw"] = round(row[name]["mb_per_s"] / row["raw"]["mb_per_s"], 3)
        out[mode] = row
    print(json.dumps({
        "benchmark": "cache_read", "machine": f"{os.cpu_count()} cores", "videos": args.videos,
        "frames": args.frames, "dim": args.dim, "shard_rows": args.shard_rows,
        "cache_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1), "files": len(files),
        "cache_build_s": round(build_s, 1) if build_s else "reused", "open_and_records_s": round(open_s, 3),
        "random_records": min(args.random_records, args.videos), "batch": args.batch,
        "page_cache_drop": method, **out,
    }, indent=2))


if __name__ == "__main__":
    main()
