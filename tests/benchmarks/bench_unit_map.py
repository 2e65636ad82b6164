"""Cost of the unit_map stage's layout of one layer: PaCMAP (one BLAS/OpenMP thread, seeded) on `--units` unit vectors of
`--dims` probe images in planted groups, with how well the groups hold together and whether a rerun repeats it.

    .venv/bin/python tests/benchmarks/bench_unit_map.py [--units 100000] [--dims 256] [--groups 100] [--repeat]
"""

from __future__ import annotations

import argparse
import importlib
import hashlib
import time

import numpy as np

from pipeline.stages.similarity.neighbours import correlation_rows
from pipeline.stages.unit_map.layout import unit_layout

SAMPLE = 2000  # units whose map neighbours are checked against their group


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=256, help="probe images: the length of each unit's vector")
    parser.add_argument("--groups", type=int, default=100, help="planted groups of units that respond alike")
    parser.add_argument("--noise", type=float, default=0.5, help="each unit's own noise, relative to its group's signal")
    parser.add_argument("--repeat", action="store_true", help="lay out twice and compare the bytes")
    return parser


def main(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    group = rng.integers(0, args.groups, args.units)
    bases = rng.normal(size=(args.groups, args.dims)).astype(np.float32)
    rows = correlation_rows(bases[group] + args.noise * rng.normal(size=(args.units, args.dims)).astype(np.float32))
    start = time.perf_counter()
    importlib.import_module("pacmap")  # numba's compiled functions load from its cache after the first use
    print(f"import pacmap: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    layout = unit_layout(rows.unit, rows.valid, "pacmap", 10, seed=0)
    seconds = time.perf_counter() - start
    print(f"{args.units} units x {args.dims}: {layout.method} in {seconds:.1f} s")
    print(f"the 5 nearest on the map all of the unit's group: {_held(layout.xy, group, rng):.3f} of {SAMPLE} sampled units")
    if args.repeat:
        again = unit_layout(rows.unit, rows.valid, "pacmap", 10, seed=0)
        same = hashlib.sha1(again.xy.tobytes()).digest() == hashlib.sha1(layout.xy.tobytes()).digest()
        print(f"rerun byte-identical: {same}")


def _held(xy: np.ndarray, group: np.ndarray, rng: np.random.Generator) -> float:
    picked = rng.choice(len(xy), min(SAMPLE, len(xy)), replace=False)
    held = 0
    for i in picked:
        d = np.linalg.norm(xy - xy[i], axis=1)
        d[i] = np.inf
        held += bool((group[np.argpartition(d, 5)[:5]] == group[i]).all())
    return held / len(picked)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
