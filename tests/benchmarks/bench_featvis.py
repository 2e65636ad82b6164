"""Benchmark: the featvis stage against torch-lucent's `render_vis`, one unit at a time, same model,
layer, units and image size; Lucent at its default 512 steps (or `--lucent-steps`), featvis at its own default.

torch-lucent is not a dependency: install it in the benchmark's own environment, e.g.

    python3 -m venv /tmp/lucent-venv && /tmp/lucent-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/lucent-venv/bin/pip install -e . torch-lucent==0.1.8 'kornia<=0.4.1'
    /tmp/lucent-venv/bin/python tests/benchmarks/bench_featvis.py [--units 8] [--steps 0] [--lucent-steps 512]

Models: torchvision resnet18 with random weights (layer3, 128 px, ImageNet normalization) and the
demo model (conv3, 64 px, after `make demo`). Both renderers use the Fourier parametrization with
color decorrelation and Lucid's standard transforms; Lucent with its recipe (Adam at lr 0.05, the
channel objective), featvis with its defaults. Lucent optimizes at the same size as featvis
(`fixed_image_size`: without it, render_vis upsamples a 128 px image to 224 for the model, which
costs it time). Reported per model: seconds per unit and the mean reached activation (the unit's
mean over its map on the final image, no transform, measured the same way for both).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from pipeline.stages.featvis import optimize as fv
from pipeline.stages.featvis.truncate import forward_to

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Normalized(nn.Module):
    """The model behind its input normalization, so Lucent can feed it [0, 1] images."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean)[None, :, None, None])
        self.register_buffer("std", torch.tensor(std)[None, :, None, None])

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def reached(model: nn.Module, layer: str, images: np.ndarray, units: list[int], mean, std) -> float:
    """Mean over units of the unit's mean activation on its [0, 1] image [n, S, S, 3]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]
    with torch.no_grad():
        acts, _ = forward_to(model, layer, x, False)
    return float(torch.stack([acts[i, u].mean() for i, u in enumerate(units)]).mean())


def render_ours(model, layer, units, size, steps, mean, std) -> tuple[float, np.ndarray]:
    settings = fv.FeatvisSettings(size=size, negative=False, batch_units=len(units), mean=mean, std=std)
    settings = replace(settings, steps=steps or settings.steps)
    t0 = time.perf_counter()
    out = fv.visualize(model, layer, 0, units, settings, seed=0)
    return time.perf_counter() - t0, out.images[:, 0].astype(np.float32) / 255


def render_lucent(model, layer, units, size, steps, mean, std) -> tuple[float, np.ndarray]:
    from lucent.optvis import param, render

    wrapped = Normalized(copy.deepcopy(model), mean, std).eval()  # render_vis leaves its hooks on the model
    name = "model_" + layer.replace(".", "_")
    images = []
    t0 = time.perf_counter()
    for u in units:
        out = render.render_vis(wrapped, f"{name}:{u}", param_f=lambda: param.image(size), thresholds=(steps,), fixed_image_size=size,
                                preprocess=False, show_image=False, progress=False, verbose=False)
        images.append(out[-1][0])
    return time.perf_counter() - t0, np.stack(images).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--steps", type=int, default=0, help="featvis steps (0: the stage's default)")
    ap.add_argument("--lucent-steps", type=int, default=512, help="Lucent's steps (render_vis's default: 512)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if importlib.util.find_spec("lucent") is None:
        raise SystemExit("torch-lucent is not installed here: see this file's docstring for its own environment.")
    torch.manual_seed(0)
    cases = [("resnet18 (random weights)", torchvision.models.resnet18().eval(), "layer3", 128, IMAGENET)]
    demo = Path("data/demo/concept_cnn.pt")
    if demo.exists():
        from pipeline.demo.model import concept_cnn

        model = concept_cnn()
        model.load_state_dict(torch.load(demo, weights_only=True))
        cases.append(("demo model (trained)", model.eval(), "conv3", 64, ((0.5,) * 3, (0.5,) * 3)))
    units = list(range(args.units))
    steps = args.steps or fv.FeatvisSettings().steps
    print(f"{args.units} units, featvis {steps} steps, Lucent {args.lucent_steps} steps, {torch.get_num_threads()} threads")
    for label, model, layer, size, (mean, std) in cases:
        t_lucent, img_lucent = render_lucent(model, layer, units, size, args.lucent_steps, mean, std)
        t_ours, img_ours = render_ours(model, layer, units, size, args.steps, mean, std)
        a_lucent = reached(model, layer, img_lucent, units, mean, std)
        a_ours = reached(model, layer, img_ours, units, mean, std)
        print(f"  {label}, {layer}, {size} px: lucent {t_lucent / len(units):6.2f} s/unit (activation {a_lucent:.3f}); "
              f"featvis {t_ours / len(units):6.2f} s/unit (activation {a_ours:.3f}); "
              f"{t_lucent / t_ours:.1f}x the units per second")


if __name__ == "__main__":
    main()
