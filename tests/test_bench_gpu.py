"""bench/gpu.py runs end to end (tiny encoder, CPU): the prepared GPU benchmark is known to work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_cpu_with_the_tiny_encoder() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--device", "cpu", "--no-compile",
                           "--videos", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["encoder"]["gflops_per_frame"] >= 0 and all(
        row["frames_per_s"] > 0 for row in out["encoder"]["eager"].values())
    assert out["decode"]["sampled_frames_per_s"] > 0
    assert out["extraction"]["frames"] == 2 * 16 and out["extraction"]["ratio_to_bare_encoder"] > 0
    assert out["stage1_step"]["ms_per_step"] > 0
