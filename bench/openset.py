"""Issue #13 measurements on the built-in benchmark (leave-one-generator-out), one process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/openset.py train   --cache C --config small.toml --out EXP
    OMP_NUM_THREADS=1 .venv/bin/python bench/openset.py measure --cache C --out EXP [--calib RUN ...]

`train` trains, per fake generator g, a GEN-L run without g (EXP/logo/g), then one with only the
k enrollment videos of g (EXP/retrain{k}/g): the retraining baseline. Finished runs are reused.
`measure` reads whatever has finished (saga.openworld.logo) and writes EXP/results.json and .md.
`saga openset logo` is the same without the retraining baseline.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from saga.cache.store import FeatureCache
from saga.openworld.logo import evaluate_folds, generators, to_markdown, train_folds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "measure"])
    p.add_argument("--cache", required=True)
    p.add_argument("--config", default=None, help="TOML of training options (e.g. d_model, frames).")
    p.add_argument("--out", required=True, help="Results folder (and runs folder unless --runs).")
    p.add_argument("--runs", default=None, help="Folder holding logo/ and retrain{k}/ (default: --out).")
    p.add_argument("--calib", nargs="*", default=[], help="Full runs to calibrate (T on val, ECE on test).")
    p.add_argument("--k", type=int, default=5, help="Enrollment videos per generator.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--balanced", action="store_true",
                   help="train: the class-balanced retraining baseline (retrain{k}-balanced/g) instead.")
    p.add_argument("--shots", action="store_true", help="Also enrollment alone at k = 3, 5, 10, 20 (5 draws).")
    p.add_argument("--only", default="", help="Comma-separated generators (default: every fake one).")
    p.add_argument("--two-stage", action="store_true", help="train: each fold adapts EXP/stage1/g, trained without g.")
    args = p.parse_args(argv)
    cache = FeatureCache.open(args.cache)
    gens = args.only.split(",") if args.only else generators(cache)
    if args.what == "train":
        opts = tomllib.loads(Path(args.config).read_text()) if args.config else {}
        train_folds(args.cache, Path(args.out), {**opts, "loss": "ce"}, gens, args.k, args.seed,
                    retrain=not args.balanced, balanced=args.balanced, two_stage=args.two_stage)
    else:
        res = evaluate_folds(cache, Path(args.runs or args.out), Path(args.out), gens, args.k, args.seed,
                             [Path(r) for r in args.calib], shots=args.shots)
        print(to_markdown(res))


if __name__ == "__main__":
    sys.exit(main())
