"""Benchmark: the vectorized dissection tally vs a per-unit, per-image loop in the style of NetDissect-Lite.

Run by hand (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_dissection.py [--units 256] [--size 7] [--mask 56] [--images 200]
        [--labels 100] [--batch 50] [--baseline bincount|per-label] [--repeat 3] [--threads N]
    .venv/bin/python tests/benchmarks/bench_dissection.py --stage jobs/demo.toml [--threads N]

`--stage JOB`: the whole stage in one process on the job's concept data set (decoding, forward,
both passes), in images per second, against a bare forward pass over the same batches.

Synthetic data: post-ReLU Gaussian feature maps [images, units, size, size]; masks of size
`--mask` with ~`--labels` labels over 4 categories: object (1 plane), part (2 planes, in half
the images), material (1 plane) as blocky pixel masks, scene as an image-level label.
Thresholds come from pass 1 (quantile 0.005) and are shared.

The loops follow NetDissect-Lite's `tally_job`: per image, per unit, skip the map when its
maximum is below the threshold (by a few ulps, as the stage does: bilinear rounding can overshoot
a map's maximum by an ulp), else upsample the map, binarize it and count intersections with numpy,
either by `bincount` of the label maps at the activated pixels (as tally_job does) or `per-label`
(`count_nonzero(on & mask)` for each label in the image). Both use this stage's label semantics
(`union = "image"`: category-restricted, a pixel counted once per label), so tallies must agree
exactly when the resize is the same. Three comparisons:
  torch: compute_tally(resize="torch") vs the loop with F.interpolate per map;
  bilinear: compute_tally(resize="bilinear") vs the loop with `Bilinear.resize` per map;
  netdissect-lite: compute_tally(resize="netdissect-lite", the default) vs the loop with Pillow's
  resize per map, as NetDissect-Lite's imresize. (tests/benchmarks/bench_netdissect.py runs
  NetDissect-Lite's own code instead of this imitation of its loop.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from pipeline.stages.dissection import tally as d
from pipeline.stages.dissection import thresholds as th
from pipeline.stages.dissection.tally import LabelSpace, TallyPartial

CATS = ("object", "part", "material", "scene")


def make_data(args: argparse.Namespace):
    rng = np.random.default_rng(0)
    share = {"object": 0.4, "part": 0.25, "material": 0.25, "scene": 0.1}
    numbers, cats, start = [], [], 1
    for c, name in enumerate(CATS):
        count = max(1, round(args.labels * share[name]))
        numbers += list(range(start, start + count))
        cats += [c] * count
        start += count
    space = LabelSpace.from_labels(numbers, cats, CATS, [f"label{n}" for n in numbers])
    pool = {c: space.numbers[space.category == c] for c in range(len(CATS))}

    def blocky(c: int, blocks: int = 8) -> np.ndarray:
        choice = np.concatenate([[0], rng.choice(pool[c], size=5)])  # a few labels an image, some unlabeled
        grid = rng.choice(choice, size=(blocks, blocks)).astype(np.int32)
        rep = -(-args.mask // blocks)
        return np.kron(grid, np.ones((rep, rep), np.int32))[:args.mask, :args.mask]

    masks, labels = [], []
    for i in range(args.images):
        m = {"object": blocky(0)[None], "material": blocky(2)[None]}
        if i % 2:
            m["part"] = np.stack([blocky(1), blocky(1)])
        masks.append(m)
        labels.append({"scene": (int(rng.choice(pool[3])),)})
    torch.manual_seed(0)
    feats = torch.relu(torch.randn(args.images, args.units, args.size, args.size))
    return space, masks, labels, feats


def loop_tally(feats: torch.Tensor, thr: np.ndarray, masks, labels, space: LabelSpace, per_label: bool,
               resize) -> TallyPartial:
    """NetDissect-Lite's tally_job structure: a Python loop over images and units."""
    n, units = feats.shape[:2]
    size = (masks[0]["object"].shape[-2], masks[0]["object"].shape[-1])
    s = size[0] * size[1]
    t = TallyPartial.empty(units, space)
    # NetDissect-Lite skips a map when max <= threshold; bilinear rounding can overshoot the input's
    # maximum by an ulp, so (like the stage) skip only maps a few ulps below it.
    near = thr - np.abs(thr) * 1e-5
    features = feats.numpy()
    lookup = {(int(c), int(num)): i for i, (c, num) in enumerate(zip(space.category, space.numbers))}
    lut = np.zeros((len(CATS), int(space.numbers.max()) + 2), np.int64)  # number -> label index + 1, 0 = none
    for (c, num), i in lookup.items():
        lut[c, num] = i + 1
    for i in range(n):
        scalars = [lookup[(c, num)] for c, name in enumerate(CATS) for num in labels[i].get(name, ()) if (c, num) in lookup]
        planes = []  # label index + 1 per pixel, 0 = none; a label repeated at a pixel counts once
        for c, name in enumerate(CATS):
            if name not in masks[i]:
                continue
            group = masks[i][name].reshape(-1, s)
            idx = lut[c][np.clip(group, 0, lut.shape[1] - 1)]
            for p in range(1, len(idx)):  # 0 (none) repeated is harmless
                idx[p][(idx[p:p + 1] == idx[:p]).any(axis=0)] = 0
            planes.append(idx)
        pixels = np.concatenate(planes) if planes else np.zeros((0, s), np.int64)
        for li in scalars:
            pixels[pixels == li + 1] = 0  # an image-level label covers the whole image
        tally_label = np.bincount(pixels.ravel(), minlength=space.size + 1)[1:]
        t.label_area += tally_label
        for li in scalars:
            t.label_area[li] += s
        cats_here = sorted({int(space.category[li]) for li in scalars}
                           | {int(space.category[li - 1]) for li in np.unique(pixels) if li})
        present = np.flatnonzero(tally_label)
        label_masks = [(li, (pixels == li + 1).any(axis=0)) for li in present] if per_label else []
        for u in range(units):
            fmap = features[i, u]  # numpy, as NetDissect-Lite's memory-mapped features
            if fmap.max() > near[u]:
                on = (resize(torch.from_numpy(fmap)[None])[0] > float(thr[u])).numpy().ravel()
                count = int(on.sum())
                t.unit_area[u] += count
                t.unit_cat[u, cats_here] += count
                if per_label:
                    for li, lmask in label_masks:
                        t.intersection[u, li] += np.count_nonzero(on & lmask)
                else:
                    indexes = np.flatnonzero(on)
                    t.intersection[u] += np.bincount(pixels[:, indexes].ravel(), minlength=space.size + 1)[1:]
                for li in scalars:
                    t.intersection[u, li] += count
    t.images = n
    return t


def pil_resize(size: tuple[int, int]):
    """NetDissect-Lite's resize: scipy's imresize(mode='F'), i.e. PIL's bilinear filter on a float image."""
    from PIL import Image

    def resize(maps: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(Image.fromarray(m, mode="F").resize(size[::-1], Image.BILINEAR))
                                          for m in maps.numpy().astype(np.float32)]))
    return resize


def vectorized(feats, thr, masks, labels, space, batch: int, resize: str) -> TallyPartial:
    total = TallyPartial.empty(feats.shape[1], space)
    for s in range(0, len(feats), batch):
        part = d.compute_tally(feats[s:s + batch], thr, masks[s:s + batch], labels[s:s + batch], space, resize=resize,
                               union="image")
        total = d.merge_tally(total, part)
    return total


def bench_stage(job_path: str, threads: int) -> None:
    """Both passes of the stage over the job's concept data set vs a bare forward of the same batches."""
    from pipeline.inputs.batches import Preprocess
    from pipeline.inputs.broden import open_broden
    from pipeline.inputs.concept_batches import iter_concept_batches
    from pipeline.job.load import load_job
    from pipeline.registry import STAGES
    from pipeline.inputs.model_survey import survey_model
    from pipeline.inputs.models import build_model, recipe_from_config, resolve_layers
    from pipeline.job.prepare import prepare_inputs
    from pipeline.stages.dissection import passes

    torch.set_num_threads(threads)
    job = load_job(job_path, STAGES)
    prepare_inputs(job)
    cfg = job.stages.sections["dissection"]
    model = build_model(recipe_from_config(job.model)).eval()
    shape = (len(job.model.mean), job.model.input_size, job.model.input_size)
    layers = survey_model(model, resolve_layers(model, job.model.layers), shape).layers
    broden = open_broden(job.concepts.broden, job.concepts.categories)
    prep = Preprocess(job.model.input_size, job.model.mean, job.model.std, job.data.batch_size)
    ids = list(range(len(broden.images)))
    batches = list(iter_concept_batches(broden, ids, prep, []))  # decoded once, outside the timings
    space = passes.label_space(broden)
    totals = passes.activation_counts(layers, len(ids))

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(batch.inputs)

    forward()
    t0 = time.perf_counter()
    forward()
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = passes.threshold_pass(model, layers, batches, cfg.quantile, totals)
    t1 = time.perf_counter()
    thresholds = {name: th.finalize_thresholds(part) for name, part in first.layers.items()}
    passes.tally_pass(model, layers, batches, thresholds, space)
    t2 = time.perf_counter()
    n, units = len(ids), sum(info.units for info in layers)
    print(f"{n} concept images, {len(layers)} layers, {units} units, {space.size} labels, {torch.get_num_threads()} threads")
    print(f"  bare forward       {bare:6.2f}s ({n / bare:6.0f} images/s)")
    print(f"  pass 1 thresholds  {t1 - t0:6.2f}s ({n / (t1 - t0):6.0f} images/s)  {(t1 - t0) / bare:4.1f}x the forward")
    print(f"  pass 2 tally       {t2 - t1:6.2f}s ({n / (t2 - t1):6.0f} images/s)  {(t2 - t1) / bare:4.1f}x the forward")
    print(f"  both passes        {t2 - t0:6.2f}s ({n / (t2 - t0):6.0f} images/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=256)
    ap.add_argument("--size", type=int, default=7, help="feature map side")
    ap.add_argument("--mask", type=int, default=56, help="mask side")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50, help="images per compute_tally call")
    ap.add_argument("--baseline", choices=("bincount", "per-label"), default="bincount")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats of the vectorized tally (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the stage tallies on one)")
    ap.add_argument("--stage", metavar="JOB", help="time the whole stage on this job's concept data set instead")
    args = ap.parse_args()
    if args.stage:
        bench_stage(args.stage, args.threads)
        return
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    space, masks, labels, feats = make_data(args)
    total = args.images * args.size * args.size
    thr = th.finalize_thresholds(th.compute_thresholds(feats, 0.005, total))
    active = (feats.amax(dim=(2, 3)) > torch.from_numpy(thr)).float().mean().item()
    print(f"{args.images} images, {args.units} units at {args.size}x{args.size}, masks {args.mask}x{args.mask}, "
          f"{space.size} labels in {len(CATS)} categories, batch {args.batch}, {torch.get_num_threads()} threads; "
          f"{active:.1%} of maps reach their threshold; loop: {args.baseline}")
    size = (args.mask, args.mask)
    bilinear = d.Bilinear.build((args.size, args.size), size)
    resizes = {"torch": lambda maps: d.upsample(maps, size), "bilinear": bilinear.resize,
               "netdissect-lite": pil_resize(size)}
    fast, slow = {}, {}
    for mode in ("torch", "bilinear", "netdissect-lite"):
        vectorized(feats[:args.batch], thr, masks[:args.batch], labels[:args.batch], space, args.batch, mode)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            tally = vectorized(feats, thr, masks, labels, space, args.batch, mode)
            times.append(time.perf_counter() - t0)
        fast[mode] = (statistics.median(times), tally)
        t0 = time.perf_counter()
        tally = loop_tally(feats, thr, masks, labels, space, args.baseline == "per-label", resizes[mode])
        slow[mode] = (time.perf_counter() - t0, tally)

    def line(name: str, stage: str, loop: str) -> None:
        (fs, ft), (ss, st) = fast[stage], slow[loop]
        diff = np.abs(d.iou_matrix(ft, space)[0] - d.iou_matrix(st, space)[0]).max()
        same = all(np.array_equal(getattr(ft, k), getattr(st, k))
                   for k in ("intersection", "label_area", "unit_cat", "unit_area"))
        print(f"  {name:34s} stage {fs:7.3f}s ({args.images / fs:6.0f} images/s)  "
              f"loop {ss:7.3f}s ({args.images / ss:5.0f} images/s)"
              f"  speed-up {ss / fs:5.1f}x  max |IoU diff| {diff:.1e}  tallies identical: {same}")

    print(f"  load average before/after: {load[0]:.2f} / {os.getloadavg()[0]:.2f} (other processes share the cores)")
    line("torch (F.interpolate both)", "torch", "torch")
    line("bilinear (Bilinear both)", "bilinear", "bilinear")
    line("netdissect-lite (Pillow both)", "netdissect-lite", "netdissect-lite")


if __name__ == "__main__":
    main()
