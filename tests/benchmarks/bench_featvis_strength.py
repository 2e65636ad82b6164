"""Benchmark: how strongly the optimized images excite their units, against the data set's best.

For every unit rendered, `featvis_ratio` = the unit's spatial max on its stored (uint8) positive
image / its max over the data set (the catalog's act_max); a unit is dead when that max is <= 0.
Reported per model and optimizer variant: the share of live units with ratio >= 1, the 5th
percentile and median ratio, and seconds per unit. Models:

- demo: the demo model after `make demo`, every unit of conv1-conv4 and fc at 64 px;
- color: a first layer of exact color detectors (unit = a color's channel mix at the centre tap,
  inputs in [0, 1]), optimum a flat image of that color, value 1.0 by construction; its data set
  adds to the world one flat image per unit at 90% contrast (its optimum blended with 10% grey),
  so ratio >= 1 means reaching at least 0.9-0.95 of the closed-form optimum;
- resnet18: torchvision resnet18 with random weights (seed 0), `--units` units of layer1-layer4 at 128 px.

The data set is the demo's concept world (1,000 images; resized to 128 px for resnet18).

    .venv/bin/python tests/benchmarks/bench_featvis_strength.py [--models demo,color,resnet18]
        [--variants lucid,default] [--steps 128] [--units 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from pipeline.stages.featvis import optimize as fv
from pipeline.stages.featvis.truncate import forward_to

sys.path.insert(0, str(Path(__file__).parents[1] / "assets"))
from tiny_models import ExactColors  # noqa: E402

WORLD = Path("data/demo/concept-world")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Lucid's recipe, then the variants measured against it (FeatvisSettings fields).
VARIANTS = {
    "lucid": dict(objective="channel", lr=0.05, chroma=0.0, schedule="constant", polish=0),
    "default": dict(),
    "chroma": dict(chroma=1.0, schedule="constant", polish=0),
    "chroma.5": dict(chroma=0.5, schedule="constant", polish=0),
    "cos.05": dict(chroma=0.0, schedule="cosine", polish=0),
    "cos.1": dict(chroma=0.0, schedule="cosine", polish=0, lr=0.1),
    "cos.2": dict(chroma=0.0, schedule="cosine", polish=0, lr=0.2),
    "polish": dict(chroma=0.0, schedule="constant", polish=16),
    "all.1": dict(chroma=1.0, schedule="cosine", polish=16, lr=0.1),
    "all.2": dict(chroma=1.0, schedule="cosine", polish=16, lr=0.2),
    "all.3": dict(chroma=1.0, schedule="cosine", polish=16, lr=0.3),
    "all.5": dict(chroma=1.0, schedule="cosine", polish=16, lr=0.5),
    "all.2p32": dict(chroma=1.0, schedule="cosine", polish=32, lr=0.2),
}


def world_images(size: int) -> torch.Tensor:
    """The concept world's scene images as [N, 3, size, size] in [0, 1]."""
    paths = sorted(p for p in (WORLD / "images").glob("*.png") if "_" not in p.stem)
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2)
    x = x.float() / 255
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def dataset_max(model: nn.Module, layer: str, images: torch.Tensor, mean, std) -> np.ndarray:
    """Each unit's largest activation (over positions and images)."""
    best = None
    m, s = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
    with torch.no_grad():
        for start in range(0, len(images), 100):
            acts, _ = forward_to(model, layer, (images[start:start + 100] - m) / s, False)
            top = acts.reshape(acts.shape[0], acts.shape[1], -1).amax(dim=2).amax(dim=0)
            best = top if best is None else torch.maximum(best, top)
    return best.numpy()


def cases(names: list[str], units: int):
    """(model label, model, [(layer, units)], size, (mean, std))."""
    if "demo" in names:
        from pipeline.demo.model import concept_cnn

        model = concept_cnn()
        model.load_state_dict(torch.load("data/demo/concept_cnn.pt", weights_only=True))
        layers = [("conv1", 16), ("conv2", 32), ("conv3", 32), ("conv4", 64), ("fc", 6)]
        yield "demo", model.eval(), [(n, list(range(k))) for n, k in layers], 64, ((0.5,) * 3, (0.5,) * 3)
    if "color" in names:
        yield "color", ExactColors().eval(), [("conv", list(range(len(ExactColors.optima()))))], 64, ((0.0,) * 3, (1.0,) * 3)
    if "resnet18" in names:
        torch.manual_seed(0)
        model = torchvision.models.resnet18().eval()
        rng = np.random.default_rng(0)
        layers = [(f"layer{i}", sorted(rng.choice(c, units, replace=False).tolist()))
                  for i, c in zip(range(1, 5), (64, 128, 256, 512))]
        yield "resnet18", model, layers, 128, IMAGENET


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="demo,color,resnet18")
    ap.add_argument("--variants", default="lucid,default")
    ap.add_argument("--steps", type=int, default=0, help="0: the stage's default")
    ap.add_argument("--units", type=int, default=16, help="resnet18 units per layer")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    for label, model, layers, size, (mean, std) in cases(args.models.split(","), args.units):
        images = world_images(size)
        if label == "color":
            flat = 0.5 + 0.9 * (ExactColors.optima() - 0.5)
            images = torch.cat([images, flat[:, :, None, None].expand(-1, -1, size, size)])
        best = {layer: dataset_max(model, layer, images, mean, std) for layer, _ in layers}
        base = fv.FeatvisSettings(size=size, negative=False, batch_units=32, mean=mean, std=std)
        if args.steps:
            base = replace(base, steps=args.steps)
        for name in variants:
            settings = replace(base, **VARIANTS[name])
            ratios, t0, n = [], time.perf_counter(), 0
            for layer, units in layers:
                out = fv.visualize(model, layer, 0, units, settings, seed=0)
                live = best[layer][units] > 0
                ratios.append((out.peak / np.where(live, best[layer][units], 1))[live])
                n += len(units)
            r = np.concatenate(ratios)
            per_layer = ", ".join(f"{layer} {np.mean(x >= 1):.0%}" for (layer, _), x in zip(layers, ratios))
            print(f"{label:9s} {name:10s} steps {settings.steps:4d}: ratio >= 1 for {np.mean(r >= 1):6.1%} of {len(r)} live "
                  f"units, p5 {np.percentile(r, 5):.2f}, median {np.median(r):.2f}; "
                  f"{(time.perf_counter() - t0) / n:.2f} s/unit ({per_layer})", flush=True)


if __name__ == "__main__":
    main()
