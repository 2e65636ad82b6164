"""Benchmark: rendering a catalog of 5,000 units as a static site.

Run by hand:

    .venv/bin/python tests/benchmarks/bench_render.py [--units 2000 3000] [--images 64] [--workdir /tmp/bench-render]

Makes the catalog first (the activations stage on a wide two-layer model over random 32 px
images, k = 8), then times `neuron-catalog render` on it: pages per second and the site's size.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cli import main as cli

MODEL = '''import torch
from torch import nn


def wide():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, {a}, 3, padding=1), nn.ReLU(), nn.Conv2d({a}, {b}, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear({b}, 10))
'''

JOB = '''seed = 0
[model]
factory = "wide.py:wide"
layers = ["0", "2"]
input_size = 32
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
[data]
images = "images"
batch_size = 32
[stages.activations]
k = 8
patch_size = 32
[output]
catalog = "catalog"
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, nargs=2, default=(2000, 3000), help="units of the two layers")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-render"))
    args = ap.parse_args()
    work = args.workdir
    if not (work / "catalog" / "manifest.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        (work / "images").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(work / "images" / f"{i:04d}.png")
        (work / "wide.py").write_text(MODEL.format(a=args.units[0], b=args.units[1]))
        (work / "job.toml").write_text(JOB)
        t0 = time.perf_counter()
        assert cli(["run", str(work / "job.toml")]) == 0
        print(f"catalog made in {time.perf_counter() - t0:.0f} s")
    site = work / "site"
    t0 = time.perf_counter()
    assert cli(["render", str(work / "catalog"), "--out", str(site)]) == 0
    seconds = time.perf_counter() - t0
    pages = len(list(site.rglob("*.html")))
    files = [p for p in site.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"render: {seconds:.1f} s for {pages} pages ({pages / seconds:.0f} pages/s), {len(files)} files, "
          f"{size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
