"""A bad option value of `saga train`, `attribute`, `ablate` and `extract` is one line before any heavy import.

These commands check their options in their config classes (Stage1Config, AttributeConfig, ExtractConfig), which
used to live in modules importing torch, zarr, FAISS and open_clip: a user who typed `--lr -1` waited seconds for
the one-line error (docs/performance.md "CLI start-up"). As tests/test_cli_startup.py does, the real CLI runs in a
fresh process that records which heavy modules were imported, the behaviour, not a time; here one process per
command runs each bad value in turn (`saga.cli.main`, as `python -m saga` calls it), recording after each: the
modules only accumulate, so a case after one that imported torch can fail falsely but never pass falsely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli_startup import HEAVY

# Runs `saga ARGS` for each ARGS in turn in this process; writes, for each, its exit code, its stderr and the
# heavy modules imported so far.
PROBE = """
import io, json, sys
from saga.cli import main
out, cases, heavy, results, stderr = sys.argv[1], json.loads(sys.argv[2]), {heavy!r}, [], sys.stderr
for args in cases:
    sys.argv, sys.stderr, code = ["saga", *args], io.StringIO(), 0
    said = sys.stderr
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.stderr = stderr
    results.append({{"code": code, "stderr": said.getvalue(), "heavy": sorted(m for m in heavy if m in sys.modules)}})
open(out, "w").write(json.dumps(results))
"""


def run_each(tmp_path: Path, cases: list[list[str]]) -> list[dict]:
    record = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), str(record), json.dumps(cases)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          cwd=tmp_path)
    assert proc.returncode == 0 and record.is_file(), proc.stderr
    return json.loads(record.read_text())


NO_CACHE = "nocache: not a saga cache (no zarr.json); create one with `saga extract --out nocache`"
EXTRACT = ["extract", "--videos", "v", "--out", "c"]

CASES = {
    "train-lr": (["train", "--lr", "-1"], "lr must be > 0, got -1.0"),
    "train-epochs": (["train", "--epochs", "0"], "epochs must be >= 1, got 0"),
    "train-inputs": (["train", "--inputs", "bogus"], "inputs must be one of content, temporal, both, got 'bogus'"),
    "train-config-key": (["train", "--config", "typo.toml"], "typo.toml: unknown training option 'lrr'"),
    "train-cache": (["train", "--cache", "nocache"], NO_CACHE),
    "train-stage2-level": (["train", "--stage", "2", "--level", "XX"], "unknown level 'XX'"),
    "attribute-level": (["attribute", "--level", "XX"], "unknown level 'XX'"),
    "attribute-loss": (["attribute", "--loss", "foo"], "loss must be one of ce, ce+semihnm, ce+hnm, got 'foo'"),
    "attribute-fraction": (["attribute", "--fraction", "0"], "fraction must be in (0, 1], got 0.0"),
    "attribute-mine-every": (["attribute", "--mine-every", "0"], "mine_every must be 'epoch' or a number of steps"),
    "attribute-unused-lam": (["attribute", "--loss", "ce", "--lam", "0.3"], "--lam: applies to loss ce+hnm"),
    "attribute-scratch-from": (["attribute", "--scratch", "--from", "x"], "--scratch and --from exclude each other"),
    "attribute-cache": (["attribute", "--cache", "nocache"], NO_CACHE),
    "ablate-level": (["ablate", "--level", "XX"], "unknown level 'XX'"),
    "ablate-epochs": (["ablate", "--epochs", "0"], "epochs must be >= 1, got 0"),
    "ablate-margin": (["ablate", "--config", "margin0.toml"], "margin = 0 leaves loss ce+semihnm no semi-hard"),
    "ablate-grid-seed": (["ablate", "--config", "seed.toml"], "seed.toml: seed cannot be set for saga ablate"),
    "ablate-cache": (["ablate", "--cache", "nocache"], NO_CACHE),
    "extract-workers": ([*EXTRACT, "--workers", "-3"], "--workers must be >= 0"),
    "extract-hang-limit": ([*EXTRACT, "--hang-limit", "0"], "--hang-limit must be a number of seconds > 0, got 0.0"),
    "extract-frames": ([*EXTRACT, "--frames", "0"], "--frames must be >= 1, got 0"),
    "extract-sampling": ([*EXTRACT, "--sampling", "foo"], "sampling: mode must be one of consecutive, uniform"),
    "extract-videos": (["extract", "--videos", "novideos", "--out", "c"], "novideos: not a folder of videos"),
    "extract-labels": ([*EXTRACT, "--labels", "nope.csv"], "nope.csv: labels file not found"),
    "extract-taxonomy": ([*EXTRACT, "--taxonomy", "nope"], "nope: taxonomy file not found"),
    "extract-augment": ([*EXTRACT, "--augment", "bogus"], "unknown perturbation 'bogus'"),
}


COMMANDS = ("train", "attribute", "ablate", "extract")


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_option_values_are_one_line_before_heavy_imports(tmp_path: Path, command: str) -> None:
    (tmp_path / "v").mkdir()  # an existing --videos folder: extract's other options are the bad ones
    (tmp_path / "typo.toml").write_text("lrr = 1\n")
    (tmp_path / "margin0.toml").write_text("margin = 0.0\n")
    (tmp_path / "seed.toml").write_text("seed = 4\n")
    names = [name for name in CASES if name.startswith(f"{command}-")]
    results = run_each(tmp_path, [CASES[name][0] for name in names])
    for name, result in zip(names, results, strict=True):
        args, said = CASES[name]
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, (name, result["stderr"])
        assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], (name, result["stderr"])
        assert result["heavy"] == [], f"saga {' '.join(args)} imported {result['heavy']} before its one-line error"
    assert not (tmp_path / "c").exists() and not (tmp_path / "runs").exists()  # nothing written either


def test_augment_under_torchrun_is_refused_before_heavy_imports(tmp_path: Path, monkeypatch) -> None:
    """`--augment` cannot run under torchrun (one process re-encodes the copies): the refusal reads torchrun's
    WORLD_SIZE (saga.torchrun_env) instead of waiting for torch and the process group."""
    (tmp_path / "v").mkdir()
    monkeypatch.setenv("WORLD_SIZE", "2")
    [result] = run_each(tmp_path, [[*EXTRACT, "--augment", "crf28"]])
    assert result["code"] == 2, result["stderr"]
    assert result["stderr"].strip() == "error: --augment: run it without torchrun (one process re-encodes the copies)"
    assert result["heavy"] == [], f"imported {result['heavy']} before the refusal"
