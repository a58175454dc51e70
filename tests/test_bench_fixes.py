"""Fixes to the bench scripts: failed lanes fail the grid, runs without an unlabelled generator, decode timing,
gpu.py's extraction clips, the mining sweep's baseline and excess, and the docs' figures from the stored JSON."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import decode as bench_decode  # noqa: E402
import mining as bench_mining  # noqa: E402
import unlabelled_generators as bench_unlabelled  # noqa: E402

from saga.errors import SagaError  # noqa: E402

PERFORMANCE = (ROOT / "docs" / "performance.md").read_text()
RESULTS = ROOT / "bench" / "results"


# 1. bench/attribution.sh

def stub_saga(saga: Path, fail: str) -> Path:
    """A stub saga whose `fail` subcommand exits 3 (every other one succeeds)."""
    saga.write_text(f"""#!/usr/bin/env bash
case "$1" in
  {fail}) echo "simulated failure" >&2; exit 3 ;;
  synth) mkdir -p videos && touch videos/labels.csv ;;
  attribute) out=$(printf '%s\\n' "$@" | grep -A1 -- --out | tail -1); mkdir -p "$out" ;;
  *) : ;;
esac
""")
    saga.chmod(0o755)
    return saga


def run_attribution(tmp_path: Path, fail: str) -> subprocess.CompletedProcess:
    """The script with a stub saga whose `fail` subcommand exits 3 (every other one succeeds)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    saga = stub_saga(tmp_path / "saga.sh", fail)
    env = {**os.environ, "SAGA": str(saga), "PYTHON": "true"}
    return subprocess.run(["bash", str(ROOT / "bench" / "attribution.sh"), str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=120)


def test_attribution_fails_naming_the_log_of_a_failed_lane(tmp_path: Path) -> None:
    proc = run_attribution(tmp_path, "ablate")
    assert proc.returncode != 0
    assert "ablation-GEN-L.log" in proc.stderr and "ablation-TEAM-L.log" in proc.stderr
    assert "tables:" not in proc.stdout  # stopped before the readout and the final lines


def test_attribution_fails_when_an_inputs_lane_fails_and_succeeds_otherwise(tmp_path: Path) -> None:
    proc = run_attribution(tmp_path / "a", "evaluate")
    assert proc.returncode != 0 and "inputs-content.log" in proc.stderr
    ok = run_attribution(tmp_path / "b", "no-such-subcommand")
    assert ok.returncode == 0, ok.stderr
    assert "tables:" in ok.stdout


def test_attribution_uses_the_projects_venv_without_activating_it(tmp_path: Path) -> None:
    """A fresh clone after `make demo`: saga lives in .venv/bin, not on PATH (README: `bash bench/attribution.sh`)."""
    (tmp_path / "bench").mkdir()
    script = tmp_path / "bench" / "attribution.sh"
    script.write_text((ROOT / "bench" / "attribution.sh").read_text())
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    stub_saga(tmp_path / ".venv" / "bin" / "saga", "no-such-subcommand")
    (tmp_path / ".venv" / "bin" / "python").symlink_to("/bin/true")
    env = {k: v for k, v in os.environ.items() if k not in ("SAGA", "PYTHON", "VENV")}
    env["PATH"] = "/usr/bin:/bin"  # no saga on it
    proc = subprocess.run(["bash", str(script), str(tmp_path / "work")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tables:" in proc.stdout
    (tmp_path / ".venv" / "bin" / "saga").unlink()
    gone = subprocess.run(["bash", str(script), str(tmp_path / "work2")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert gone.returncode == 1 and "no saga command: run `make venv`" in gone.stderr


# 2. bench/unlabelled_generators.py

def test_discovered_rows_with_nothing_missing_adds_no_row() -> None:
    rng = np.random.default_rng(0)
    z_lab, z_unl = rng.standard_normal((6, 3)), rng.standard_normal((10, 3))
    sub = np.array([0, 0, 1, 1, 2, 2])
    rows, new_class = bench_unlabelled.discovered_rows(z_lab, sub, z_unl, np.zeros((10, 2)), {}, 0)
    assert new_class == [] and (rows == -1).all() and len(rows) == 10


def test_unlabelled_generators_lists_only_generators_without_a_label() -> None:
    labels = {"a": {"TEAM-L": "t1"}, "b": {"TEAM-L": "t1"}, "c": {"TEAM-L": "t2"}, "absent": {"TEAM-L": "t1"}}
    cache = SimpleNamespace(taxonomy=SimpleNamespace(generators=list(labels), labels=labels.__getitem__))
    train = [SimpleNamespace(generator=g) for g in ("a", "b", "c", "a")]
    every = bench_unlabelled.unlabelled_generators(train, train[:3], np.array([0, 0, 1]), ["t1", "t2"], "TEAM-L",
                                                   cache)
    assert every == {0: [], 1: []}
    one = bench_unlabelled.unlabelled_generators(train, [train[0], train[2]], np.array([0, 1]), ["t1", "t2"],
                                                 "TEAM-L", cache)
    assert one == {0: ["b"], 1: []}


def test_main_skips_runs_without_an_unlabelled_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    runs = []
    for name in ("pergen1", "sources"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "done.json").write_text("{}")
        runs.append(str(tmp_path / name))
    row = {"run": runs[1], "their_test_videos": 3, **{v: [50.0, 10.0] for v in bench_unlabelled.VARIANTS}}
    monkeypatch.setattr(bench_unlabelled.FeatureCache, "open", staticmethod(lambda root: None))
    monkeypatch.setattr(bench_unlabelled, "measure", lambda run, cache: row if run.name == "sources" else None)
    monkeypatch.setattr(sys, "argv", ["unlabelled_generators.py", "--cache", "c", *runs,
                                      "--out", str(tmp_path / "out.json")])
    bench_unlabelled.main()
    assert "pergen1: skipped" in capsys.readouterr().err
    assert [r["run"] for r in json.loads((tmp_path / "out.json").read_text())["runs"]] == [runs[1]]
    monkeypatch.setattr(sys, "argv", ["unlabelled_generators.py", "--cache", "c", runs[0]])
    with pytest.raises(SagaError, match="no run among .* has an unlabelled generator"):
        bench_unlabelled.main()


# 3. bench/decode.py

FAKE_NOW = [0.0]  # a fake clock per process (each forked worker advances its own copy)


def slow_start_backend(path: Path, policy: object) -> None:
    """A 'decoder' whose first call (the warm-up) costs 1 s of the fake clock and every later one 50 ms."""
    FAKE_NOW[0] += 0.05 if getattr(slow_start_backend, "warm", False) else 1.0
    slow_start_backend.warm = True  # type: ignore[attr-defined]


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the fake backend reaches workers by fork")
def test_decode_scaling_excludes_process_start_and_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_decode, "backends", lambda: {"slow": slow_start_backend})
    monkeypatch.setattr(bench_decode, "CLOCK", lambda: FAKE_NOW[0])
    fps = bench_decode.scaling("slow", Path("unused.mp4"), 10, 2, [1, 2])
    # each worker's timed loop: 2 x 50 ms -> 10 x 2 / 0.1 = 200 frames/s per worker, exactly (no real timing);
    # with the 1 s warm-up in the clock it would be 20 / 1.1 = 18.2 per worker
    assert fps == {"1": 200.0, "2": 400.0}
    assert "warm-up excluded" in bench_decode.TIMING


# 4. bench/gpu.py

def test_gpu_extraction_clips_are_decode_sections_textured_clips(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import gpu

    from saga.pipeline.decode import decode_video
    from saga.pipeline.sampling import SamplingPolicy

    policy, seen = SamplingPolicy(frames=16), {}

    def fake_extract(cfg: object) -> SimpleNamespace:
        for clip in sorted(Path(cfg.videos).rglob("*.mp4")):  # type: ignore[attr-defined]
            seen[clip.name] = decode_video(clip, policy, "pyav").frames[0].astype(np.int16)
        return SimpleNamespace(frames=32, timings=SimpleNamespace(pipeline=1.0))

    monkeypatch.setattr(gpu, "extract", fake_extract)
    gpu.extraction_section("unused", gpu.torch.device("cpu"), 2, 4, 100.0, (64, 48), 1)
    assert sorted(seen) == ["0000.mp4", "0001.mp4"]
    for i, name in enumerate(sorted(seen)):
        ref = bench_decode.make_clip(tmp_path / f"ref{i}.mp4", 64, 48, 24, seed=i)
        assert np.abs(seen[name] - decode_video(ref, policy, "pyav").frames[0]).mean() < 1.0
    assert np.abs(seen["0000.mp4"] - seen["0001.mp4"]).mean() > 10  # one seed per clip


def test_gpu_decode_section_measures_every_installed_backend(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import gpu

    monkeypatch.setattr(gpu, "backends", lambda: {"pyav": None, "decord": None})
    monkeypatch.setattr(gpu, "scaling", lambda name, clip, f, r, w: {str(w[0]): {"pyav": 100.0, "decord": 200.0}[name]})
    out = gpu.decode_section(tmp_path / "clip.mp4", (64, 48), 2, 1, 1000.0)
    assert set(out["backends"]) == {"pyav", "decord"} and out["backend"] == "decord"
    assert out["sampled_frames_per_s"] == 200.0 and out["cores_needed_for_best_encoder_fps"] == 10.0
    assert out["backends"]["pyav"]["cores_needed_for_best_encoder_fps"] == 20.0


# 5. and 6. bench/mining.py

def test_mining_sweep_counts_the_positives_torch_finds_too() -> None:
    x, y = bench_mining.simulate(3000, 32, 4, 0.4, 0)
    anchors = np.sort(np.random.default_rng(1).choice(len(x), 100, replace=False))
    _, true_d, _ = bench_mining.torch_brute(x, y, anchors, 1 << 20)
    bench_mining.run_method(x, y, anchors, true_d, 1.0, "approx", bench_mining.ApproxParams(seed=0))
    row = bench_mining.sweep(x, anchors, true_d, 10.0, 2.0, [2])[0]
    assert row["positives_s"] == 2.0
    assert row["search_speedup_vs_torch"] == pytest.approx(10.0 / (row["search_s"] + 2.0), abs=0.02)
    assert row["search_speedup_vs_torch"] <= 5.0  # the search alone would give 10 / search_s


def test_mining_reports_the_excess_of_the_misses_alone() -> None:
    x = np.array([[0, 0], [1, 0], [0, 2], [2, 0], [3, 0]], np.float32)
    anchors, neg = np.array([0, 0, 0, 0]), np.array([1, 1, 1, 2])
    quality = bench_mining.recall(x, anchors, neg, np.array([1.0, 1.0, 1.0, 2.0]))  # the last: 4 vs 2
    assert quality == {"recall_hardest_negative": 0.75, "mean_excess_distance": 0.25,
                       "mean_excess_distance_misses": 1.0}
    assert bench_mining.recall(x, anchors[:1], neg[:1], np.ones(1))["mean_excess_distance_misses"] is None


# docs/performance.md against bench/results

def test_performance_doc_mining_figures_follow_the_stored_json() -> None:
    stored = json.loads((RESULTS / "mining.json").read_text())
    for rows in (stored["results"], stored["low_rank"]["results"]):
        for r in rows:
            pos = r["faiss_approx"]["positives_s"]
            for s in r["sweep"]:
                cell = f"{s['recall_hardest_negative']:.2f} at {r['torch_brute_s'] / (s['search_s'] + pos):.1f}×"
                assert cell in PERFORMANCE, cell
    low = stored["low_rank"]["results"][-1]["faiss_approx"]
    misses = low["mean_excess_distance"] / (1 - low["recall_hardest_negative"])
    assert f"{100 * misses:.1f} % farther" in PERFORMANCE


def test_performance_doc_stage1_memory_follows_the_stored_json() -> None:
    rows = json.loads((RESULTS / "stage1_memory.json").read_text())["results"]
    growth = [r["train_growth_mb"] for r in rows]
    assert f"{min(growth):.0f}–{max(growth):.0f} MB" in PERFORMANCE
    assert f"+{min(growth):.0f} to +{max(growth):.0f} MB" in PERFORMANCE
    assert f"({np.mean([r['rss_after_import_mb'] for r in rows]):.0f} MB of every figure" in PERFORMANCE


def test_stored_mining_sweep_rows_hold_the_fields_the_script_writes() -> None:
    stored = json.loads((RESULTS / "mining.json").read_text())
    for rows in (stored["results"], stored["low_rank"]["results"]):
        for r in rows:
            for s in r["sweep"]:
                assert s["positives_s"] == r["faiss_approx"]["positives_s"]
                assert s["search_speedup_vs_torch"] == round(r["torch_brute_s"] / (s["search_s"] + s["positives_s"]), 2)


def test_mining_auto_reports_every_index_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import saga.train.mining_index as mining_index

    monkeypatch.setattr(mining_index, "APPROX_MIN_POOL", 0)  # auto tries the IVF on this small pool
    x, y = bench_mining.simulate(2000, 32, 4, 0.4, 0)
    anchors = np.sort(np.random.default_rng(1).choice(len(x), 100, replace=False))
    _, true_d, _ = bench_mining.torch_brute(x, y, anchors, 1 << 20)
    failing = bench_mining.ApproxParams(seed=0, min_recall=1.01)  # the recall check cannot pass
    row = bench_mining.run_method(x, y, anchors, true_d, 1.0, "auto", failing)
    assert row["search"] == "exact" and row["index_builds"] == 2  # the IVF, then the exact rebuild
    builds = bench_mining.TimedIndexes.record["builds_s"]
    assert row["index_build_s"] == round(sum(builds), 3) and len(builds) == 2


# bench/stage1_memory.py

def test_stage1_memory_reports_a_failed_size_and_measures_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    import stage1_memory

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        """The measuring child: the 300-video cache's fails with saga's one line, the other reports figures."""
        if "n300" in cmd[cmd.index("--child") + 1]:
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nSagaError: a one-line reason\n")
        return subprocess.CompletedProcess(cmd, 0, json.dumps({"peak_rss_mb": 700.0}) + "\n", "")

    monkeypatch.setattr(stage1_memory.subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["stage1_memory.py", "--sizes", "200", "300", "--simulate",
                                      "--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="1 size\\(s\\) failed"):
        stage1_memory.main()
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["results"]
    assert rows[0]["peak_rss_mb"] == 700.0 and rows[0]["peak_vs_smallest"] == 1.0
    assert rows[1] == {"videos": 300, "simulated": False, "error": "exit 1: SagaError: a one-line reason"}
    assert "n=300: the measuring process failed, exit 1: SagaError: a one-line reason" in captured.err
    monkeypatch.undo()  # a real child killed as the OOM killer would: no stderr at all
    assert stage1_memory.run_child([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]) == {
        "error": "exit -9: killed by signal 9 (out of memory?)"}


def test_performance_doc_dates_every_section_within_the_machines_range() -> None:
    import re

    machine = PERFORMANCE.split("## Machine", 1)[1].split("\n## ", 1)[0]
    first, last = re.search(r"between \*\*(\d{4}-\d\d-\d\d) and (\d{4}-\d\d-\d\d) \(UTC\)", machine).groups()
    sections = re.split(r"\n## (?=\d\. )", PERFORMANCE)[1:]
    assert len(sections) == 6
    for text in sections:
        found = re.search(r"[Mm]easured (\d{4}-\d\d-\d\d)[ ,(]+commit ([0-9a-f]{7})", text)
        assert found, text.splitlines()[0]
        assert first <= found.group(1) <= last, text.splitlines()[0]


def test_stage1_memory_reports_no_build_time_for_a_reused_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    import stage1_memory

    child = subprocess.CompletedProcess([], 0, json.dumps({"peak_rss_mb": 700.0}) + "\n", "")
    monkeypatch.setattr(stage1_memory.subprocess, "run", lambda cmd, **kwargs: child)
    monkeypatch.setattr(sys, "argv", ["stage1_memory.py", "--sizes", "200", "--simulate", "--workdir", str(tmp_path)])
    stage1_memory.main()
    first = json.loads(capsys.readouterr().out)["results"][0]
    stage1_memory.main()
    again = json.loads(capsys.readouterr().out)["results"][0]
    assert not first["cache_reused"] and first["cache_build_s"] is not None
    assert again["cache_reused"] and again["cache_build_s"] is None  # not the earlier run's seconds
    assert again["cache_build_s_when_written"] == first["cache_build_s"]


# bench/stage2_epoch.py

def test_stage2_epoch_ratios_come_from_the_measured_seconds() -> None:
    import stage2_epoch

    fast = stage2_epoch.ratios(cache_s=0.004, load_s=0.001, decode_s=1.0, extract_s=2.0)  # printed as 0.0 s
    assert fast == {"speedup_epoch": 250.0, "speedup_incl_load": 200.0, "break_even_epochs": 2.01}
    assert stage2_epoch.ratios(1.2549, 0.1, 241.17, 90.0)["speedup_epoch"] == 192.2  # 1.25 s would give 192.9
    assert stage2_epoch.ratios(1.0, 0.1, 0.5, 90.0)["break_even_epochs"] is None  # never pays off
