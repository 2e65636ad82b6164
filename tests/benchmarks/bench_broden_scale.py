"""Benchmark: the dissection stage at Broden scale (resnet18, layer1..layer4): images/s and bounded memory.

Run by hand (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_broden_scale.py --images 200 800 [--device cpu|cuda]
        [--threshold-memory-mb 256] [--batch 64] [--as-if 63305] [--cache DIR] [--json OUT]

For every image count N it makes (once, cached under --cache) a synthetic Broden directory with
broden1_224's geometry: N RGB images of 224 px (PNG, blocky random content), 112x112 masks (label =
R + 256*G), index.csv, category.csv, label.csv and c_<cat>.csv; per image a color, an object, 0-2 part
and a material mask (blocky labels from pools of 11-30 labels a category) and image-level scene and
texture labels. Then, in a fresh subprocess (VmHWM never decreases), it runs the stage's passes
in-process as `bench_dissection.py --stage` does: the model is torchvision's resnet18 with random
weights (torch.manual_seed(0)), quantile 0.005 (NetDissect's), the union/resize defaults. The
threshold route is the stage's choice (`passes.threshold_passes`) for --as-if images (default: the
size of broden1_224, where keeping the top values would take ~476 MB, so the radix passes run); 0
chooses for N itself. Batches are decoded inside each timed pass (masks only for the tally).

Reported per N: seconds and images/s per pass (and the IoU finalization), the stage's images/s,
the process's peak RSS (VmHWM) and its peak minus the baseline taken after the model is loaded and
the directory opened; each pass's partial over the N images as pickled (what a shard of N images sends
the driver and checkpoints) beside its arrays' own size; then the time 63,305 images would take at the
largest N's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BRODEN_IMAGES = 63305
CATEGORIES = {"color": 11, "object": 30, "part": 20, "material": 15, "scene": 30, "texture": 20}  # label pools
PIXEL_CATEGORIES = ("color", "object", "part", "material")
LAYERS = ("layer1", "layer2", "layer3", "layer4")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_broden(root: Path, n: int, seed: int = 0) -> Path:
    """A synthetic broden1_224-shaped directory of n images at root (reused when complete)."""
    from PIL import Image

    if (root / "index.csv").is_file():
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    (tmp / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pools, start = {}, 1
    for cat, count in CATEGORIES.items():
        pools[cat] = np.arange(start, start + count)
        start += count
    palette = rng.integers(0, 256, (start, 3), dtype=np.uint8)

    def blocky(pool: np.ndarray, side: int, blocks: int, empty: bool) -> np.ndarray:
        choice = rng.choice(pool, size=4)
        choice = np.concatenate([[0], choice]) if empty else choice
        return np.kron(rng.choice(choice, size=(blocks, blocks)), np.ones((side // blocks,) * 2, np.int64))

    def png(rel: str, labels: np.ndarray) -> str:
        rgb = np.zeros((*labels.shape, 3), np.uint8)
        rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
        Image.fromarray(rgb).save(tmp / "images" / rel, compress_level=1)
        return rel

    rows = []
    for i in range(n):
        base = f"{i:06d}"
        color = blocky(pools["color"], 112, 8, empty=False)
        pixels = palette[np.kron(color, np.ones((2, 2), np.int64))]  # the image follows its color mask
        pixels = np.clip(pixels.astype(np.int16) + rng.integers(-8, 9, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp / "images" / f"{base}.png", compress_level=1)
        cells = {"color": png(f"{base}_color.png", color),
                 "object": png(f"{base}_object.png", blocky(pools["object"], 112, 8, empty=True)),
                 "part": ";".join(png(f"{base}_part_{k + 1}.png", blocky(pools["part"], 112, 16, empty=True))
                                  for k in range(i % 3)),
                 "material": png(f"{base}_material.png", blocky(pools["material"], 112, 4, empty=True)),
                 "scene": str(rng.choice(pools["scene"])), "texture": str(rng.choice(pools["texture"]))}
        rows.append([f"{base}.png", "train", 224, 224, 112, 112, *(cells[c] for c in CATEGORIES)])
    _csv(tmp / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES], rows)
    _csv(tmp / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [[int(num), f"{cat}{k}", f"{cat}({n})", n, 0.1, ""] for cat, pool in pools.items() for k, num in enumerate(pool)])
    _csv(tmp / "category.csv", ["name", "first", "last", "count", "frequency"],
         [[cat, int(pool[0]), int(pool[-1]), len(pool), n] for cat, pool in pools.items()])
    for cat, pool in pools.items():
        _csv(tmp / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
             [[k + 1, int(num), f"{cat}{k}", n, 0.1] for k, num in enumerate(pool)])
    tmp.rename(root)
    return root


def memory_mb() -> dict[str, float]:
    """VmHWM (peak) and VmRSS of this process, MiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS")}


def run_one(args: argparse.Namespace, n: int) -> dict:
    """The stage's passes over the cached n-image directory, in this process."""
    import torch
    import torchvision

    from pipeline.inputs.batches import Preprocess
    from pipeline.inputs.broden import open_broden
    from pipeline.inputs.concept_batches import iter_concept_batches
    from pipeline.inputs.model_survey import survey_model
    from pipeline.inputs.models import resolve_layers
    from pipeline.stages.dissection import passes, radix
    from pipeline.stages.dissection import thresholds as th
    from pipeline.stages.dissection.settings import DissectionSettings

    cfg = DissectionSettings(quantile=args.quantile, threshold_memory_mb=args.threshold_memory_mb)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    layers = survey_model(model, resolve_layers(model, LAYERS), (3, 224, 224)).layers
    model = model.to(args.device)
    broden = open_broden(Path(args.cache) / f"broden-{n}")
    prep = Preprocess(224, MEAN, STD, args.batch)
    ids, space = list(range(len(broden.images))), passes.label_space(broden)
    route = passes.threshold_passes(layers, args.as_if or n, cfg.quantile, cfg.threshold_memory_mb)
    baseline = memory_mb()
    skipped: list[tuple[int, str]] = []
    timings: dict[str, dict] = {}

    def batches(masks: bool):
        return iter_concept_batches(broden, ids, prep, skipped, args.device, masks)

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        timings[name] = {"seconds": seconds, "images_per_s": n / seconds, "hwm_mb": memory_mb()["VmHWM"]}
        if isinstance(out, passes.ConceptPartial):  # as the driver receives and checkpoints it, and its arrays' size
            timings[name]["pickled_mb"] = len(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)) / 2**20
            timings[name]["arrays_mb"] = sum(a.nbytes for part in out.layers.values() for a in vars(part).values()
                                             if isinstance(a, np.ndarray)) / 2**20
        print(f"  N={n} {name}: {seconds:.2f}s", file=sys.stderr, flush=True)
        return out

    if route == ["dissection-thresholds"]:
        totals = passes.activation_counts(layers, len(ids))
        first = timed(route[0], lambda: passes.threshold_pass(model, layers, batches(False), cfg.quantile, totals))
        thresholds = {name: th.finalize_thresholds(p) for name, p in first.layers.items()}
    else:
        states = {info.name: radix.start(info.units) for info in layers}
        for name in route:
            part = timed(name, lambda: passes.radix_pass(model, layers, batches(False), states))
            states = {k: radix.select(states[k], p, cfg.quantile) for k, p in part.layers.items()}
        thresholds = {k: radix.thresholds(s) for k, s in states.items()}
    tally = timed("dissection-tally", lambda: passes.tally_pass(model, layers, batches(True), thresholds, space))
    timed("iou", lambda: passes.layer_results(layers, thresholds, tally, space, cfg.top, cfg.iou_threshold))
    total = sum(t["seconds"] for t in timings.values())
    peak = memory_mb()["VmHWM"]
    return {"images": n, "route": "radix" if len(route) > 1 else "keep-top", "passes": timings, "seconds": total,
            "images_per_s": n / total, "baseline_mb": baseline["VmHWM"], "peak_mb": peak,
            "peak_minus_baseline_mb": peak - baseline["VmHWM"], "labels": space.size,
            "units": sum(info.units for info in layers), "tally_images": tally.images, "skipped": len(skipped),
            "threads": torch.get_num_threads(),
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None}


def print_table(results: list[dict]) -> None:
    names = list(dict.fromkeys(name for r in results for name in r["passes"]))
    short = {name: name.removeprefix("dissection-") for name in names}
    head = f"{'N':>6} {'route':8}" + "".join(f" {short[k]:>16}" for k in names)
    print(head + f" {'stage img/s':>11} {'peak MB':>8} {'base MB':>8} {'peak-base':>9}  peak in")
    for r in results:
        cells = "".join(f" {r['passes'][k]['seconds']:7.1f}s {r['passes'][k]['images_per_s']:6.1f}/s"
                        if k in r["passes"] else f" {'':>16}" for k in names)
        first = next(k for k, t in r["passes"].items() if t["hwm_mb"] >= r["peak_mb"])  # the pass that set the peak
        print(f"{r['images']:>6} {r['route']:8}{cells} {r['images_per_s']:11.2f} {r['peak_mb']:8.0f} "
              f"{r['baseline_mb']:8.0f} {r['peak_minus_baseline_mb']:9.0f}  {short[first]}")
    for r in results:
        print(f"  N={r['images']} partials pickled (their arrays): " + ", ".join(
            f"{short[k]} {t['pickled_mb']:.2f} MB ({t['arrays_mb']:.2f} MB)" for k, t in r["passes"].items() if "pickled_mb" in t))
    last = results[-1]
    print(f"{last['units']} units in {len(LAYERS)} layers, {last['labels']} labels, {last['threads']} torch threads; "
          f"at N={last['images']}'s rate ({last['images_per_s']:.2f} images/s) {BRODEN_IMAGES:,} images would take "
          f"{BRODEN_IMAGES / last['images_per_s'] / 60:.0f} minutes")


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[200, 800], help="image counts N")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threshold-memory-mb", type=float, default=256, help="the stage's threshold_memory_mb")
    ap.add_argument("--batch", type=int, default=64, help="images per batch")
    ap.add_argument("--quantile", type=float, default=0.005)
    ap.add_argument("--as-if", type=int, default=BRODEN_IMAGES, help="choose the threshold route for this many "
                    "images (0: for N itself)")
    ap.add_argument("--cache", default="/tmp/neuron-catalog-bench-broden", help="where the synthetic directories live")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one N, print JSON
    return ap


def main() -> None:
    args = get_args_parser().parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return
    results = []
    for n in args.images:
        t0 = time.perf_counter()
        write_broden(Path(args.cache) / f"broden-{n}", n)
        print(f"N={n}: synthetic Broden ready ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", str(n)], stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
