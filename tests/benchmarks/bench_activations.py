"""Benchmark: the activations stage vs a bare forward pass, and peak memory vs data-set size.

Run by hand (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_activations.py overhead [--model resnet18] [--images 512] [--size 128] [--batch 64]
    .venv/bin/python tests/benchmarks/bench_activations.py memory [--small 1000] [--large 10000]

`overhead` times, in one process and interleaved, (a) a bare `torch.inference_mode()` forward of a
torchvision model (`--model`, random weights: resnet18, vit_b_16, swin_t, convnext_tiny, ...) over
pre-decoded images and (b) the activations stage (`pipeline.stages.activations.compute`) reading every
Conv2d and Linear output the forward runs (channels-last and token layers units first) of the same model
over the same tensors at the same batch size; it prints the ratio of medians.

`memory` runs the whole command line (`neuron-catalog run`, embedded Ray) on generated data sets of
two sizes and prints the peak resident memory of the driver and of the largest Ray worker, sampled
from /proc every 50 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torchvision

from pipeline.inputs.batches import Batch
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import resolve_layers
from pipeline.stages.activations import compute as activations


def overhead(args: argparse.Namespace) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    names = resolve_layers(model, ())
    layers = survey_model(model, names, (3, args.size, args.size), explicit=False).layers
    x = torch.randn(args.images, 3, args.size, args.size)
    batches = [Batch(np.zeros(0), x[s:s + args.batch], np.arange(s, min(s + args.batch, args.images)))
               for s in range(0, args.images, args.batch)]

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                model(b.inputs)

    def stage() -> None:
        activations.compute(model, layers, batches, k=16)

    bare()  # warm-up (allocator, oneDNN primitives)
    times: dict[str, list[float]] = {"bare": [], "stage": []}
    for _ in range(args.repeat):
        for name, fn in (("bare", bare), ("stage", stage)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    layouts = ", ".join(f"{n} {lay}" for lay, n in sorted(Counter(i.layout for i in layers).items()))
    print(f"{args.model}, {len(layers)} layers ({layouts}) ({sum(i.units for i in layers)} units), {args.images} images of "
          f"{args.size}px, batch {args.batch}, {torch.get_num_threads()} threads, {args.repeat} repeats")
    for k, v in times.items():
        print(f"  {k:6s} median {med[k]:.2f}s  min {min(v):.2f}s  max {max(v):.2f}s  ({args.images / med[k]:.0f} images/s)")
    print(f"  ratio stage / bare = {med['stage'] / med['bare']:.3f}")


def _make_images(root: Path, count: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        cls = root / f"c{i % 4}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(cls / f"{i:06d}.png")


def _tree_rss(pid: int) -> dict[int, int]:
    """RSS in bytes of `pid` and every descendant, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    out[p] = int(line.split()[1]) * 1024
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return out


def _names(pids) -> dict[int, str]:
    names = {}
    for p in pids:
        try:
            names[p] = open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:80]
        except OSError:
            pass
    return names


def memory(args: argparse.Namespace) -> None:
    tiny = Path(__file__).resolve().parents[1] / "assets" / "tiny_models.py"
    for count in (args.small, args.large):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            _make_images(root / "images", count, 32)
            (root / "tiny_models.py").write_text(tiny.read_text())
            (root / "job.toml").write_text(
                'seed = 0\n[model]\nfactory = "tiny_models.py:planted"\ninput_size = 32\nmean = [0.5, 0.5, 0.5]\n'
                'std = [0.5, 0.5, 0.5]\n[data]\nimages = "images"\nbatch_size = 64\n[stages.activations]\nk = 16\n'
                'patch_size = 16\n[ray]\nshard_images = 256\n[output]\ncatalog = "catalog"\n')
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(root / "job.toml")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
            driver_peak, worker_peak = 0, 0
            while proc.poll() is None:
                rss = _tree_rss(proc.pid)
                driver_peak = max(driver_peak, rss.get(proc.pid, 0))
                workers = [v for p, name in _names(rss).items() if "ModelWorker" in name or "ray::" in name for v in [rss[p]]]
                worker_peak = max([worker_peak, *workers])
                time.sleep(0.05)
            assert proc.returncode == 0, f"run failed with {proc.returncode}"
            print(f"{count:6d} images: driver peak RSS {driver_peak / 2**20:.0f} MiB, largest Ray worker peak RSS "
                  f"{worker_peak / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--model", default="resnet18", help="a torchvision classifier (random weights)")
    o.add_argument("--images", type=int, default=512)
    o.add_argument("--size", type=int, default=128)
    o.add_argument("--batch", type=int, default=64)
    o.add_argument("--repeat", type=int, default=3)
    m = sub.add_parser("memory")
    m.add_argument("--small", type=int, default=1000)
    m.add_argument("--large", type=int, default=10000)
    args = parser.parse_args()
    {"overhead": overhead, "memory": memory}[args.what](args)


if __name__ == "__main__":
    main()
