"""Benchmark: seconds of the MSR Shapley estimate itself (surrogate fits, their walks, the residual terms and
the bootstrap; no network) for a model of resnet18's size, by the number of value columns (1 + classes).

    .venv/bin/python tests/benchmarks/bench_msr_scale.py [--players 960] [--samples 2048] [--columns 11,101]
        [--bootstrap 200] [--threads 1]

The game is synthetic (a sigmoid of a random weighted sum of the kept units plus the share kept), on the
coalitions the stage draws; only the time is reported.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.stages.shapley import msr


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--players", type=int, default=960)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--columns", default="11,101")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    kept = ~msr.coalitions(0, 0, args.samples, args.players)
    for columns in (int(c) for c in args.columns.split(",")):
        weights = np.random.default_rng(0).normal(size=(args.players, columns)) / args.players
        values = 1 / (1 + np.exp(-(kept @ weights * 20 - 5 + 10 * kept.mean(1, keepdims=True))))
        start = time.perf_counter()
        msr.msr_estimate(kept, values, 0, args.bootstrap, 0.05)
        print(f"{args.players} players, {args.samples} coalitions, {columns} columns: "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
