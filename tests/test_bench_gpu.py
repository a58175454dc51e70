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


def test_gpu_benchmark_decodes_on_the_cores_it_may_use(monkeypatch, capsys) -> None:
    """A container or batch job sees the host's os.cpu_count() but may run on fewer cores (its affinity)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import decode
    import gpu

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert decode.usable_cores() == 3
    seen = {}
    monkeypatch.setattr(gpu, "encoder_section", lambda *a: {"eager": {"4": {"frames_per_s": 10.0}}, "compiled": {}})
    monkeypatch.setattr(gpu, "make_clip", lambda *a, **k: None)
    monkeypatch.setattr(gpu, "decode_section", lambda clip, size, cores, *a: seen.setdefault("decode", cores))
    monkeypatch.setattr(gpu, "extraction_section", lambda *a: seen.setdefault("extract", a[-1]))
    monkeypatch.setattr(gpu, "load_encoder", lambda *a: type("E", (), {"dim": 16}))
    monkeypatch.setattr(gpu, "stage1_section", lambda *a: {})
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--tiny", "--device", "cpu", "--no-compile"])
    gpu.main()
    assert json.loads(capsys.readouterr().out)["cores"] == 3
    assert seen == {"decode": 3, "extract": 2}  # every usable core decodes; extraction's workers: all but one
