"""`saga --help`, a mistyped option and a bad option value answer without importing the heavy libraries.

Importing torch, scikit-learn, zarr, FAISS ... takes seconds in every process; help and one-line argument errors
must not wait for it (docs/performance.md). Each case runs the real CLI in a fresh process and records, at exit,
which heavy modules it imported: the behaviour, not a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "sklearn", "scipy", "open_clip", "zarr", "faiss", "matplotlib")

# Runs `python -m saga ARGS` in this process and writes the heavy modules it imported when the process exits.
PROBE = """
import atexit, json, runpy, sys
out, args = sys.argv[1], sys.argv[2:]
heavy = {heavy!r}
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(m for m in heavy if m in sys.modules))))
sys.argv = ["saga", *args]
runpy.run_module("saga", run_name="__main__", alter_sys=True)
"""


def run_probe(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    record = tmp_path / "heavy.json"
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), str(record), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    return proc, json.loads(record.read_text())


CASES = {
    "help": (["--help"], 0, "Commands"),
    "extract-help": (["extract", "--help"], 0, "--videos"),
    "mistyped-option": (["attribute", "--levle", "GEN-L"], 2, "No such option"),
    "stage": (["train", "--stage", "3"], 2, "--stage must be 1 or 2"),
    "extract-split": (["extract", "--videos", "v", "--out", "c", "--split", "1,2"], 2,
                      "--split must be three fractions"),
    "probe-level": (["probe", "--level", "NOPE", "--out", "p"], 2, "unknown level 'NOPE'"),
    "predict-out": (["predict", "run", "x.mp4", "--out", "o"], 2, "only holds the --tsig plots"),
    "robustness-perturb": (["robustness", "run", "--videos", "v", "--perturb", "bogus"], 2,
                           "unknown perturbation 'bogus'"),
    "demo-out": (["demo", "--out", ""], 2, 'name a folder'),
}


@pytest.mark.parametrize("case", list(CASES))
def test_help_and_argument_errors_import_no_heavy_library(tmp_path: Path, case: str) -> None:
    args, code, said = CASES[case]
    proc, heavy = run_probe(tmp_path, *args)
    assert proc.returncode == code, proc.stderr
    assert said in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert heavy == [], f"saga {' '.join(args)} imported {heavy}"
