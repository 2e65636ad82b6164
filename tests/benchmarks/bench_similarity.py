"""Benchmark: the similarity stage's exact nearest units at 100,000 units in one layer (every pair scored).

Run by hand:

    .venv/bin/python tests/benchmarks/bench_similarity.py [--units 100000] [--probes 256] [--baseline-units 10000]

The units' probe activations are random with planted structure: every unit belongs to one of 500 latent
features (correlation ~0.7 within a feature) and 1% of the units are exact affine copies of another unit.
Times the stage's own functions (correlation_rows, then nearest over blocks of 2,048 query units, as the
stage's tasks run them) and, at --baseline-units, the plain way: numpy's corrcoef of the whole matrix and
an argsort of every row (at 100,000 units that matrix alone is 80 GB). Checks: every planted copy finds its
twin at rank 0 with correlation 1, and 300 random units' lists equal brute force (float64, every candidate).
Prints the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from pipeline.stages.similarity.neighbours import correlation_rows, nearest
from pipeline.stages.similarity.stage import BLOCK_UNITS

K = 10


def probes(units: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 [units, m] activations and the planted (copy, original) pairs."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(500, m))
    values = latent[rng.integers(0, 500, units)] + 0.65 * rng.normal(size=(units, m))
    copies = rng.choice(units, size=(units // 100, 2), replace=False)
    values[copies[:, 0]] = 2.5 * values[copies[:, 1]] + 1.0
    return values.astype(np.float32), copies


def stage_way(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    start = time.perf_counter()
    rows = correlation_rows(values)
    parts = [nearest(rows, rows, K, s, min(len(values), s + BLOCK_UNITS), same=True)
             for s in range(0, len(values), BLOCK_UNITS)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), time.perf_counter() - start


def plain_way(values: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    full = np.corrcoef(values)
    np.fill_diagonal(full, -np.inf)
    order = np.argsort(-full, axis=1, kind="stable")[:, :K]
    return order, time.perf_counter() - start


def check(values: np.ndarray, copies: np.ndarray, index: np.ndarray, score: np.ndarray, sample: int = 300) -> None:
    twin_found = index[copies[:, 0], 0] == copies[:, 1]
    assert twin_found.all(), f"{(~twin_found).sum()} planted copies did not find their twin first"
    assert np.allclose(score[copies[:, 0], 0], 1.0, atol=1e-9)
    x = values.astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for i in np.random.default_rng(1).choice(len(values), sample, replace=False):
        s = x @ x[i]
        s[i] = -np.inf
        want = np.lexsort((np.arange(len(s)), -np.round(s, 12)))[:K]
        assert (index[i] == want).all(), (i, index[i], want)
        assert np.allclose(score[i], s[want], atol=1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--probes", type=int, default=256)
    parser.add_argument("--baseline-units", type=int, default=10_000)
    args = parser.parse_args()

    small, small_copies = probes(args.baseline_units, args.probes)
    index, score, ours_small = stage_way(small)
    check(small, small_copies, index, score)
    plain, plain_small = plain_way(small)
    agree = (plain == index).mean()
    print(f"{args.baseline_units} units: stage {ours_small:.2f} s, corrcoef + argsort {plain_small:.2f} s "
          f"({plain_small / ours_small:.1f}x); the two agree on {agree:.4%} of the neighbour slots")

    values, copies = probes(args.units, args.probes)
    index, score, seconds = stage_way(values)
    check(values, copies, index, score)
    pairs = args.units * (args.units - 1)
    print(f"{args.units} units x {args.probes} probes: {seconds:.1f} s ({pairs / seconds / 1e9:.2f} G pairs/s), "
          f"{len(copies)} planted copies found first, 300 sampled lists equal brute force")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
